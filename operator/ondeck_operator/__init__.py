"""ondeck's control plane: the ModelDeployment API types, `render` (spec -> manifests),
the kopf operator, and local mode. Knows nothing about onnxruntime."""

__version__ = "0.1.0"
