"""Local mode (`ondeck run -f md.yaml`): the same ModelDeployment a cluster runs, on one
machine with no cluster.

It validates the manifest with the operator's own types, builds the very `convert` and
`serve` command lines the conversion Job and the Deployment run (`ondeck_operator.render.args`),
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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ondeck_operator.api.spec import ModelDeploymentSpec
from ondeck_operator.local.banner import banner
from ondeck_operator.local.errors import ConvertFailed, PortInUse, ServeFailed
from ondeck_operator.local.manifest import ConvertSummary, Loaded, localize, notices
from ondeck_operator.render.args import artifact_key, convert_args, serve_args

DEFAULT_STORE = Path("~/.cache/ondeck")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Bodies with more numbers than this go to a file (`curl -d @file`), not the command line.
#: A dynamic dimension other than the batch gets this size in example requests.
READY_TIMEOUT_S = 120.0
EXIT_INTERRUPTED = 130


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
