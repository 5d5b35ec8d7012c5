"""Local mode's pure core for manifests: load and check a ModelDeployment file with the
operator's own types, resolve its model URI against the manifest's folder, and list the
notices for fields that only mean something in a cluster (never silently dropped)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

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
    ("server", "env"): "the server process gets this shell's environment",
    ("server", "nodeSelector"): "no nodes locally",
    ("server", "tolerations"): "no nodes locally",
    ("server", "affinity"): "no nodes locally",
    ("server", "serviceAccountName"): "no service accounts locally",
    ("server", "podAnnotations"): "no pods locally",
    ("server", "podLabels"): "no pods locally",
    ("model", "size"): "it sizes the conversion Job; no resource limits locally",
    ("optimize", "timeoutSeconds"): "the local conversion runs until it finishes",
    ("optimize", "resources"): "no resource limits locally",
    ("autoscaling",): "no HorizontalPodAutoscaler locally",
    ("service",): "no Service locally; use --host and --port",
    ("ingress",): "no Ingress locally; use --host and --port",
    ("artifacts",): "the local store is --store",
    ("rollout",): "one local server: a new version replaces the old one",
    ("gateway",): "no Gateway API locally; use --host and --port",
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
        ("optimize", "int4"),
        ("optimize", "calibration"),
        ("optimize", "validation"),
        ("server", "batching"),
        ("server", "threads"),
        ("server", "maxBodyBytes"),
        ("server", "maxQueue"),
        ("server", "drainTimeoutSeconds"),
        # the local server asks for a token too: --auth-token, or one made for the run
        ("server", "auth"),
        # serve_args passes them to the language-model server, locally as in a cluster
        ("llm", "maxContextLength"),
        ("llm", "maxBatchSize"),
        ("llm", "servedModelName"),
        ("llm", "sampling"),
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
    format: str = ""
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


#: Limits of the one manifest reader (`ondeck validate`, `ondeck render`, `ondeck run`).
#: The API server takes at most 3 MiB per request and etcd 1.5 MiB per object; a
#: ModelDeployment is a few KiB, nests ~10 levels and uses no aliases.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 64
#: Values (scalars, lists, maps) in one file, with every alias counted as what it expands to.
MAX_NODES = 20_000
#: Values that aliases add, all aliases of the file together ("billion laughs" stops here).
MAX_ALIAS_NODES = 10_000
#: Echoed values in error lines are cut to this many characters.
MAX_SHOWN = 80

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}...{size}"


def clip(line: str, limit: int = 500) -> str:
    """One error line, never longer than `limit` characters (an echoed value may be huge)."""
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line)} characters)"


class _LimitError(yaml.MarkedYAMLError):
    """A reader limit was passed at a place in the file."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth limit and a budget of values, aliases expanded.

    PyYAML shares an aliased node instead of copying it, so a 1 KB "billion laughs" file
    loads quickly; what walks the result afterwards (validation, rendering, printing)
    visits every expansion. The composer counts each alias as the size of the node it
    names and stops at the budget; an alias inside its own anchor is refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}

    def _refuse(self, problem: str, mark: Any) -> NoReturn:
        raise _LimitError(problem=problem, problem_mark=mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor or "")
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    self._refuse(
                        "a YAML alias refers to a value that contains it", event.start_mark
                    )
                self._alias_nodes += size
                self._nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    self._refuse(
                        f"YAML aliases expand to more than {MAX_ALIAS_NODES} values",
                        event.start_mark,
                    )
                if self._nodes > MAX_NODES:
                    self._refuse(f"more than {MAX_NODES} values", event.start_mark)
            return super().compose_node(parent, index)
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                self._refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        before = self._nodes
        self._nodes += 1
        if self._nodes > MAX_NODES:
            self._refuse(f"more than {MAX_NODES} values", event.start_mark)
        node = super().compose_node(parent, index)
        if collection:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node


def _read_bytes(path: Path) -> bytes:
    if str(path) == "-":
        data: bytes = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
    else:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ManifestError(f"{path}: is a folder, not a file") from None
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{path}: larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB, the limit for a "
            "manifest file"
        )
    return data


#: Zip (skops, TorchScript, .npz), pickle protocol 2+, ONNX/protobuf has no magic, so
#: the model suffixes as well.
_BINARY_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_MODEL_SUFFIXES = {".onnx", ".skops", ".pt", ".pt2", ".pth", ".pkl", ".joblib", ".npz", ".bin"}


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 (a BOM allowed), or UTF-16/UTF-32 with a BOM, as YAML allows; else one line."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in data:
        if data.startswith(_BINARY_MAGIC) or path.suffix.lower() in _MODEL_SUFFIXES:
            raise ManifestError(
                f"{path}: is a binary file (a model?), not a ModelDeployment manifest; "
                "pass the manifest with -f and name the model in its spec.model.uri"
            )
        raise ManifestError(
            f"{path}: holds NUL bytes (UTF-16 or UTF-32 without a byte order mark?); "
            "save the file as UTF-8"
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        raise ManifestError(
            f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte 0x{byte} at "
            f"offset {exc.start}); save the file as UTF-8"
        ) from None


def read_documents(path: Path) -> list[tuple[int, Any]]:
    """The YAML documents of a manifest file ('-': stdin) as (index, document), empty
    documents left out. The one reader of `ondeck validate`, `render` and `run`: size,
    depth and alias limits, UTF-8/16/32 only, and every problem one `ManifestError` line."""
    text = _decode(path, _read_bytes(path))
    docs: list[Any] = []
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
        while loader.check_data():  # type: ignore[no-untyped-call]
            docs.append(loader.get_data())
    except yaml.reader.ReaderError as exc:
        raise ManifestError(
            f"{path}: not valid YAML: character #x{exc.character:04x} at offset "
            f"{exc.position} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        if isinstance(exc, _LimitError):
            raise ManifestError(f"{path}: refused{where}: {problem}") from None
        raise ManifestError(f"{path}: not valid YAML{where}: {clip(str(problem))}") from None
    except (ValueError, OverflowError) as exc:  # e.g. `2001-02-30`, a 5 000-digit int
        raise ManifestError(f"{path}: a value cannot be read: {clip(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return [(index, doc) for index, doc in enumerate(docs) if doc is not None]


def load_manifest(path: Path) -> Loaded:
    """Read and validate a manifest file; every problem becomes one `ManifestError`."""
    docs = [doc for _, doc in read_documents(path)]
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ModelDeployment"]
    if len(found) != 1:
        what = "no ModelDeployment" if not found else f"{len(found)} ModelDeployments"
        raise ManifestError(f"{path}: holds {what}; local mode runs exactly one") from None
    raw = found[0]
    try:
        md = ModelDeployment.from_manifest(raw)
    except SpecError as exc:
        problems = "; ".join(clip(problem) for problem in exc.problems)
        raise ManifestError(f"{path}: {problems}") from None
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
    if optimize.validation.data is not None:
        data = _local_uri(optimize.validation.data, base_dir, "spec.optimize.validation.data")
        validation = optimize.validation.model_copy(update={"data": data})
        optimize = optimize.model_copy(update={"validation": validation})
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
