"""The reconcile core: the vocabulary of kinds and API errors (kinds.py), facts from
observed children, the plan (what to apply, delete and patch), status and drift;
executes a plan against any `KubeApi`. No kopf, kubernetes or aiohttp."""
