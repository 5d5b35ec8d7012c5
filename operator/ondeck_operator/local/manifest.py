"""Local mode's pure core for manifests: load and check a ModelDeployment file with the
operator's own types, resolve its model URI against the manifest's folder, and list the
notices for fields that only mean something in a cluster (never silently dropped)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ondeck_operator.api.spec import ModelDeployment, ModelDeploymentSpec, SpecError
from ondeck_operator.local.errors import ManifestError

#: Fields that only mean something in a cluster, with why; one notice line each when set.
CLUSTER_ONLY: dict[tuple[str, ...], str] = {
    ("server", "image"): "the local server runs from this Python environment",
    ("server", "imagePullPolicy"): "no images locally",
    ("server", "imagePullSecrets"): "no images locally",
    ("server", "replicas"): "one local server process",
    ("server", "resources"): "no resource limits locally",
    ("server", "auth"): "the local server asks for no token (the Secret exists only in clusters)",
    ("server", "env"): "the server process gets this shell's environment",
    ("server", "nodeSelector"): "no nodes locally",
    ("server", "tolerations"): "no nodes locally",
    ("server", "affinity"): "no nodes locally",
    ("server", "serviceAccountName"): "no service accounts locally",
    ("server", "podAnnotations"): "no pods locally",
    ("server", "podLabels"): "no pods locally",
    ("optimize", "timeoutSeconds"): "the local conversion runs until it finishes",
    ("optimize", "resources"): "no resource limits locally",
    ("autoscaling",): "no HorizontalPodAutoscaler locally",
    ("service",): "no Service locally; use --host and --port",
    ("ingress",): "no Ingress locally; use --host and --port",
    ("artifacts",): "the local store is --store",
}


#: Fields local mode uses as a cluster would: they go into the convert and serve command
#: lines. With `CLUSTER_ONLY` (and the credentials note) they cover the whole spec; a test
#: fails when a new spec field is in neither, so no field is ever dropped silently.
USED_LOCALLY: frozenset[tuple[str, ...]] = frozenset(
    {
        ("model", "uri"),
        ("model", "format"),
        ("model", "sha256"),
        ("model", "s3EndpointURL"),
        ("model", "inputs"),
        ("model", "allowUnsafePickle"),
        ("optimize", "level"),
        ("optimize", "quantize"),
        ("optimize", "calibration"),
        ("optimize", "validation"),
        ("server", "batching"),
        ("server", "threads"),
        ("server", "maxBodyBytes"),
        ("server", "maxQueue"),
        ("server", "drainTimeoutSeconds"),
    }
)
#: Read from elsewhere locally, with a note saying so.
REPLACED_LOCALLY: frozenset[tuple[str, ...]] = frozenset({("model", "credentialsSecret")})


class Notice(BaseModel):
    """One line about a manifest field local mode does not use as a cluster would."""

    model_config = ConfigDict(frozen=True)

    field: str
    text: str

    def line(self) -> str:
        return f"ondeck: {self.text}"


class TensorSpec(BaseModel):
    """One model input or output as the convert summary reports it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int]

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {self.shape}"


class ConvertSummary(BaseModel):
    """The fields of `ondeck-server convert`'s JSON summary that local mode reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    digest: str
    path: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    size_bytes: int = Field(alias="sizeBytes")
    original_size_bytes: int = Field(alias="originalSizeBytes")
    quantize: str = "none"
    cached: bool = False


class Loaded(BaseModel):
    """A validated manifest and what local mode needs to know about where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    md: ModelDeployment
    raw: dict[str, Any]
    base_dir: Path


def default_manifest() -> Path:
    """The embedded default: the iris example, shipped inside the package."""
    return Path(
        str(resources.files("ondeck_operator") / "_examples" / "iris" / "modeldeployment.yaml")
    )


def load_manifest(path: Path) -> Loaded:
    """Read and validate a manifest file; every problem becomes one `ManifestError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read it ({exc})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ManifestError(f"{path}:{where}: {problem}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ModelDeployment"]
    if len(found) != 1:
        what = "no ModelDeployment" if not found else f"{len(found)} ModelDeployments"
        raise ManifestError(f"{path}: holds {what}; local mode runs exactly one") from None
    raw = found[0]
    try:
        md = ModelDeployment.from_manifest(raw)
    except SpecError as exc:
        raise ManifestError(f"{path}: {'; '.join(exc.problems)}") from None
    return Loaded(md=md, raw=raw, base_dir=path.resolve().parent)


def _local_uri(uri: str, base_dir: Path, field: str) -> str:
    """A plain relative path made absolute against the manifest's folder; URIs with a
    scheme (file:///abs, https://, s3://, ...) unchanged; pvc:// refused."""
    if uri.startswith("pvc://"):
        raise ManifestError(
            f"{field}: {uri} names a PersistentVolumeClaim, which exists only in clusters; "
            "use a file path, https://, s3:// or gs:// locally"
        )
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def localize(spec: ModelDeploymentSpec, base_dir: Path) -> ModelDeploymentSpec:
    """The spec with the model and calibration URIs usable from this machine."""
    model = spec.model.model_copy(
        update={"uri": _local_uri(spec.model.uri, base_dir, "spec.model.uri")}
    )
    optimize = spec.optimize
    if optimize.calibration is not None:
        local = _local_uri(optimize.calibration, base_dir, "spec.optimize.calibration")
        optimize = optimize.model_copy(update={"calibration": local})
    return spec.model_copy(update={"model": model, "optimize": optimize})


def notices(raw: dict[str, Any]) -> list[Notice]:
    """One notice per cluster-only field the manifest sets (in `CLUSTER_ONLY` order),
    after a note on where local mode takes credentials from when the manifest names a
    Secret. Reads the manifest as written, so defaults are never reported."""
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        return []
    out: list[Notice] = []
    secret = (spec.get("model") or {}).get("credentialsSecret")
    if secret:
        out.append(
            Notice(
                field="spec.model.credentialsSecret",
                text=f"spec.model.credentialsSecret ({secret}) is not read locally: "
                "the AWS_* variables of this shell are used instead",
            )
        )
    for path, why in CLUSTER_ONLY.items():
        node: Any = spec
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            field = "spec." + ".".join(path)
            out.append(Notice(field=field, text=f"ignored in local mode: {field} ({why})"))
    return out
