"""spec -> Kubernetes manifests as plain dicts: object names, the server/converter argv,
the manifests themselves. Pure and deterministic."""
