"""The operator process: the aiohttp Kubernetes client, kopf handlers, work queue, watch
caches, peering, probes, metrics and settings."""
