"""Local mode (`ondeck run -f md.yaml`): the same ModelDeployment a cluster runs, on one
machine with no cluster.

It validates the manifest with the operator's own types, builds the very `convert` and
`serve` command lines the conversion Job and the Deployment run (`ondeck_operator.args`),
and runs them as child processes: `python -m ondeck_server convert …` into a local
artifact store, then `python -m ondeck_server serve …` on the artifact. Fields that only
mean something in a cluster are reported, one line each, never silently dropped.

The pure part (loading and checking a manifest, the notices, example request bodies and
the `curl` lines) is separate from `LocalRunner`, the thin shell that starts processes
and waits. It does not import the server package: the two halves of ondeck meet only on
the command line and in the artifact files, as in a cluster.

Errors (each one line `ErrorType: message` and one exit status):

    LocalError
    ├── ManifestError    the manifest cannot be read or is invalid        exit 2
    ├── PortInUse        the address to serve on is taken                 exit 2
    ├── ConvertFailed    `ondeck-server convert` failed (its own line)   exit 1
    └── ServeFailed      `ondeck-server serve` stopped or never got ready exit 1
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ondeck_operator.args import artifact_key, convert_args, serve_args
from ondeck_operator.types import ModelDeployment, ModelDeploymentSpec, SpecError

DEFAULT_STORE = Path("~/.cache/ondeck")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Bodies with more numbers than this go to a file (`curl -d @file`), not the command line.
INLINE_BODY_LIMIT = 256
#: A dynamic dimension other than the batch gets this size in example requests.
EXAMPLE_DYNAMIC_DIM = 8
READY_TIMEOUT_S = 120.0
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------- errors


class LocalError(Exception):
    """Base class: local mode failed for a reason the user can act on."""

    exit_code: ClassVar[int] = 1

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{type(self).__name__}: {text}"


class ManifestError(LocalError):
    """The manifest file is missing, is not YAML, or is not a valid ModelDeployment."""

    exit_code = 2


class PortInUse(LocalError):
    """Something already listens on the host and port asked for."""

    exit_code = 2


class ConvertFailed(LocalError):
    """`ondeck-server convert` exited non-zero. `shown` is True when it already printed
    its own one-line error on stderr, so it is not printed twice."""

    def __init__(self, message: str, *, shown: bool) -> None:
        super().__init__(message)
        self.shown = shown


class ServeFailed(LocalError):
    """`ondeck-server serve` exited, or did not become ready in time."""


# ------------------------------------------------------------------ pure core

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


_V2_FLOAT = {"FP16", "FP32", "FP64", "BF16"}


def _example_value(datatype: str, index: int) -> float | int | bool | str:
    if datatype in _V2_FLOAT:
        return round(0.1 * (index % 10 + 1), 1)
    if datatype == "BOOL":
        return index % 2 == 0
    if datatype == "BYTES":
        return "hello"
    return 1


def example_shape(shape: list[int]) -> list[int]:
    """A concrete shape: batch 1 for a leading dynamic dimension, a small size for others."""
    return [(1 if i == 0 else EXAMPLE_DYNAMIC_DIM) if d < 0 else d for i, d in enumerate(shape)]


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def v2_body(inputs: list[TensorSpec]) -> dict[str, Any]:
    """A valid V2 inference request for these inputs (one row)."""
    tensors = []
    for spec in inputs:
        shape = example_shape(spec.shape)
        data = [_example_value(spec.datatype, i) for i in range(_count(shape))]
        tensors.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"inputs": tensors}


def v1_body(inputs: list[TensorSpec]) -> dict[str, Any] | None:
    """A valid KServe V1 request (`instances`, one instance), or None for models with
    more than one input, which V1 cannot address."""
    if len(inputs) != 1:
        return None
    spec = inputs[0]
    shape = example_shape(spec.shape)
    data = [_example_value(spec.datatype, i) for i in range(_count(shape))]
    instances = _nest(data, shape) if shape else [data[0]]
    if not isinstance(instances, list):
        instances = [instances]
    return {"instances": instances}


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def curl_line(url: str, data: str) -> str:
    """A ready-to-paste curl command; `data` is the JSON body or `@file`."""
    return f"curl -s {shlex.quote(url)} -H 'Content-Type: application/json' -d {shlex.quote(data)}"


class Banner(BaseModel):
    """What `ondeck run` prints once the server is ready, and the request bodies too big
    for a command line, to be written to the files the curl lines name (`-d @file`)."""

    lines: list[str]
    files: dict[Path, str] = Field(default_factory=dict)


def banner(
    *, name: str, base_url: str, summary: ConvertSummary, spill_dir: Path | None = None
) -> Banner:
    """The banner for a served model; bodies with more than `INLINE_BODY_LIMIT` numbers
    go to `spill_dir` when one is given."""
    bodies = {"V2": v2_body(summary.inputs), "V1": v1_body(summary.inputs)}
    urls = {
        "V2": f"{base_url}/v2/models/{name}/infer",
        "V1": f"{base_url}/v1/models/{name}:predict",
    }
    numbers = sum(_count(example_shape(t.shape)) for t in summary.inputs)
    spill = spill_dir is not None and numbers > INLINE_BODY_LIMIT
    lines = [
        f"ondeck: serving {name} at {base_url}/v2/models/{name}",
        "  inputs:  " + ", ".join(t.describe() for t in summary.inputs),
        "  outputs: " + ", ".join(t.describe() for t in summary.outputs),
        f"  artifact: {summary.path} ({_size(summary.original_size_bytes)} → "
        f"{_size(summary.size_bytes)}, quantize {summary.quantize})",
    ]
    files: dict[Path, str] = {}
    for protocol, body in bodies.items():
        if body is None:
            lines.append(
                f"  {protocol}: not available: the V1 protocol addresses single-input models only"
            )
            continue
        data = _json(body)
        if spill and spill_dir is not None:
            path = spill_dir / f"{name}.{protocol.lower()}.json"
            files[path] = data
            data = f"@{path}"
        lines.append(f"  {protocol}: " + curl_line(urls[protocol], data))
    lines.append("Press Ctrl-C to stop.")
    return Banner(lines=lines, files=files)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cached_summary(store: Path, key: str) -> ConvertSummary | None:
    """The summary of `<store>/refs/<key>` when it is a complete artifact, else None."""
    folder = store / "refs" / key
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if not (folder / "model.onnx").is_file():
            return None
        return ConvertSummary(
            digest=manifest["digest"],
            path=str(folder.resolve()),
            inputs=manifest["inputs"],
            outputs=manifest["outputs"],
            sizeBytes=manifest["sizeBytes"],
            originalSizeBytes=manifest["originalSizeBytes"],
            quantize=(manifest.get("settings") or {}).get("quantize", "none"),
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def child_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment for convert and serve: this shell's (AWS_* credentials included),
    minus ONDECK_* settings, so that the manifest alone decides what runs."""
    return {k: v for k, v in environ.items() if not k.startswith("ONDECK_")}


def url_host(host: str) -> str:
    """The host to put into URLs: a wildcard bind address is reached on loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------ the shell


class LocalRunner:
    """Runs convert, then serve, as child processes; stops them on SIGINT/SIGTERM."""

    def __init__(self, *, store: Path, host: str, port: int, err: TextIO, out: TextIO) -> None:
        self.store = store.expanduser()
        self.host = host
        self.port = port
        self.err = err
        self.out = out
        self._stop: int | None = None

    # -- signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = signum

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    # -- the steps

    def run(self, loaded: Loaded) -> int:
        """The whole local run; returns the exit status, raises `LocalError`."""
        md = loaded.md
        for notice in notices(loaded.raw):
            self._say(notice.line())
        spec = localize(md.spec, loaded.base_dir)
        self._check_port()
        with self._signals():
            summary = self._convert(spec, name=md.metadata.name)
            if summary is None:
                self._say("ondeck: stopped before the model was served")
                return EXIT_INTERRUPTED
            return self._serve(spec, name=md.metadata.name, summary=summary)

    def _check_port(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise PortInUse(
                    f"cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                    "pick another with --port"
                ) from None

    def _convert(self, spec: ModelDeploymentSpec, *, name: str) -> ConvertSummary | None:
        key = artifact_key(spec)
        # With a pinned sha256 the key names the content: a hit needs no fetch at all.
        # Without one, convert still runs; it fetches, hashes, and skips the work when an
        # artifact with the same digest exists (so an edited model file is picked up).
        if spec.model.sha256 is not None:
            hit = cached_summary(self.store, key)
            if hit is not None:
                self._say(f"ondeck: artifact {hit.digest[:12]} reused (pinned sha256, no fetch)")
                return hit
        self.store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ondeck-run-") as tmp:
            log = Path(tmp) / "termination-log"
            argv = convert_args(spec, store=str(self.store), ref=key, termination_log=str(log))
            self._say(f"ondeck: converting {spec.model.uri} for {name} into {self.store}")
            proc = subprocess.Popen(
                [sys.executable, "-m", "ondeck_server", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None,  # progress bars and the error line go straight to the user
                text=True,
                env=child_env(dict(os.environ)),
                start_new_session=True,  # see _serve
            )
            stdout = self._wait_output(proc)
            if stdout is None:
                return None
            if proc.returncode != 0:
                message = log.read_text(encoding="utf-8").strip() if log.is_file() else ""
                if message:
                    raise ConvertFailed(message, shown=True)
                raise ConvertFailed(
                    f"ondeck-server convert exited with status {proc.returncode}; "
                    "see its output above",
                    shown=False,
                )
        summary = self._parse_summary(stdout)
        if summary.cached:
            self._say(f"ondeck: artifact {summary.digest[:12]} reused (already in the store)")
        return summary

    def _wait_output(self, proc: subprocess.Popen[str]) -> str | None:
        """Wait for a child that prints one result on stdout; None when stopped."""
        while True:
            if self._stop is not None:
                self._terminate(proc, grace_s=10.0)
                return None
            try:
                stdout, _ = proc.communicate(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            return stdout or ""

    @staticmethod
    def _parse_summary(stdout: str) -> ConvertSummary:
        lines = [line for line in stdout.splitlines() if line.strip()]
        try:
            return ConvertSummary.model_validate_json(lines[-1])
        except (IndexError, ValueError):
            raise ConvertFailed(
                "ondeck-server convert succeeded but printed no JSON summary on stdout",
                shown=False,
            ) from None

    def _serve(self, spec: ModelDeploymentSpec, *, name: str, summary: ConvertSummary) -> int:
        argv = serve_args(spec, model_path=summary.path, name=name, host=self.host, port=self.port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondeck_server", *argv],
            stdin=subprocess.DEVNULL,
            env=child_env(dict(os.environ)),
            # Its own session: a Ctrl-C in the terminal reaches only `ondeck run`, which
            # then sends the server exactly one SIGTERM (a second signal would cut the
            # server's drain short).
            start_new_session=True,
        )
        base_url = f"http://{url_host(self.host)}:{self.port}"
        try:
            if not self._wait_ready(proc, base_url):
                return 0  # stopped by a signal while starting: a clean stop
            shown = banner(
                name=name, base_url=base_url, summary=summary, spill_dir=self.store / "requests"
            )
            for path, text in shown.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            for line in shown.lines:
                print(line, file=self.out, flush=True)
            while self._stop is None:
                try:
                    code = proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                raise ServeFailed(f"ondeck-server serve exited with status {code}")
            self._say("ondeck: stopping the server")
            self._terminate(proc, grace_s=float(spec.server.drain_timeout_seconds) + 5.0)
            return 0
        finally:
            if proc.poll() is None:
                self._terminate(proc, grace_s=5.0)

    def _wait_ready(self, proc: subprocess.Popen[bytes], base_url: str) -> bool:
        """True once /v2/health/ready answers 200; False when stopped by a signal."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"{base_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._stop is not None:
                return False
            code = proc.poll()
            if code is not None:
                raise ServeFailed(
                    f"ondeck-server serve exited with status {code} before it was ready; "
                    "see its output above"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise ServeFailed(f"ondeck-server serve was not ready after {READY_TIMEOUT_S:.0f} s")

    @staticmethod
    def _terminate(proc: subprocess.Popen[Any], *, grace_s: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
