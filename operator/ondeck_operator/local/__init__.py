"""Local mode (`ondeck run`): load a manifest (manifest.py), convert and serve it as child
processes (runner.py), print the banner with working requests (banner.py); errors in
errors.py. This package's namespace is its public surface."""

from ondeck_operator.local.banner import (
    EXAMPLE_DYNAMIC_DIM,
    INLINE_BODY_LIMIT,
    banner,
    curl_line,
    example_shape,
    size,
    v1_body,
    v2_body,
)
from ondeck_operator.local.errors import (
    ConvertFailed,
    LocalError,
    ManifestError,
    PortInUse,
    ServeFailed,
    StoreFailed,
)
from ondeck_operator.local.manifest import (
    CLUSTER_ONLY,
    REPLACED_LOCALLY,
    USED_LOCALLY,
    ConvertSummary,
    Loaded,
    Notice,
    TensorSpec,
    default_manifest,
    load_manifest,
    localize,
    notices,
)
from ondeck_operator.local.runner import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_STORE,
    LocalRunner,
    cached_summary,
    child_env,
    url_host,
)

__all__ = [
    "CLUSTER_ONLY",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_STORE",
    "EXAMPLE_DYNAMIC_DIM",
    "INLINE_BODY_LIMIT",
    "REPLACED_LOCALLY",
    "USED_LOCALLY",
    "ConvertFailed",
    "ConvertSummary",
    "Loaded",
    "LocalError",
    "LocalRunner",
    "ManifestError",
    "Notice",
    "PortInUse",
    "ServeFailed",
    "StoreFailed",
    "TensorSpec",
    "banner",
    "cached_summary",
    "child_env",
    "curl_line",
    "default_manifest",
    "example_shape",
    "load_manifest",
    "localize",
    "notices",
    "size",
    "url_host",
    "v1_body",
    "v2_body",
]
