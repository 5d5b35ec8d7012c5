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
    ├── StoreFailed      the local artifact store cannot be used          exit 1
    ├── ConvertFailed    `ondeck-server convert` failed (its own line)   exit 1
    └── ServeFailed      `ondeck-server serve` stopped or never got ready exit 1
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from ondeck_operator.api.spec import ModelDeploymentSpec
from ondeck_operator.local import store as local_store
from ondeck_operator.local.banner import banner, sizes
from ondeck_operator.local.errors import ConvertFailed, PortInUse, ServeFailed, StoreFailed
from ondeck_operator.local.flags import in_manifest_terms
from ondeck_operator.local.manifest import ConvertSummary, Loaded, localize, notices
from ondeck_operator.render.args import artifact_key, convert_args, serve_args, served_name

DEFAULT_STORE = Path("~/.cache/ondeck")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
READY_TIMEOUT_S = 120.0
EXIT_INTERRUPTED = 130
#: What a Ctrl-C during the conversion prints (the line `ondeck-server convert` prints
#: when stopped; the child's own copy is held back, so it shows once).
INTERRUPTED = "Interrupted: conversion stopped; nothing was written"
#: Where local mode says how it serves a manifest that asks for auth (`_token`).
AUTH_FIELD = "spec.server.auth"
#: A line a child prints as its error: `ErrorType: message` (a CamelCase type).
ERROR_LINE = re.compile(r"^[A-Z][A-Za-z]+: \S")


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


def listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP `port` (any address), from /proc/net; None where
    /proc cannot tell (not Linux)."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":
                with contextlib.suppress(ValueError, IndexError):
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.add(fields[9])
    return found if readable else None


def listens_on(pid: int, port: int) -> bool | None:
    """True when process `pid` holds the socket listening on `port`, False when another
    process does (or none), None where this cannot be told."""
    inodes = listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


class _ErrorLinePump:
    """Copies a child's stderr to ours as it comes (progress bars included), holding back
    the one line that looks like its error (`ErrorType: message`) until the next output:
    when that line is the child's last, the caller prints it in manifest terms instead."""

    def __init__(self, source: IO[bytes], sink: TextIO) -> None:
        self.source = source
        self.sink = sink
        self.held: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.sink.write(text)
            self.sink.flush()

    def _pump(self) -> None:
        pending = ""
        fd = self.source.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += self._decoder.decode(chunk)
            while "\n" in pending:
                line, pending = pending.split("\n", 1)
                if self.held is not None:
                    self._write(self.held + "\n")
                    self.held = None
                if ERROR_LINE.match(line):
                    self.held = line
                else:
                    self._write(line + "\n")
            # A partial line: a progress bar redrawn in place goes out at once; what may
            # be the start of an error line waits for its end.
            if pending and not pending[:1].isupper():
                if self.held is not None:
                    self._write(self.held + "\n")
                    self.held = None
                self._write(pending)
                pending = ""
        pending += self._decoder.decode(b"", final=True)
        if pending:
            if self.held is not None:
                self._write(self.held + "\n")
                self.held = None
            self._write(pending)

    def finish(self, error_line: str | None) -> str | None:
        """Wait for the end of the output; returns the held line when it is
        `error_line` (not printed), else prints it and returns None."""
        self._thread.join(timeout=10.0)
        held, self.held = self.held, None
        if held is None:
            return None
        if error_line is not None and held.strip() == error_line.strip():
            return held
        self._write(held + "\n")
        return None


class LocalRunner:
    """Runs convert, then serve, as child processes; stops them on SIGINT/SIGTERM."""

    def __init__(
        self,
        *,
        store: Path,
        host: str,
        port: int,
        err: TextIO,
        out: TextIO,
        auth_token: str | None = None,
        convert_only: bool = False,
    ) -> None:
        self.store = store.expanduser()
        self.host = host
        self.port = port
        self.err = err
        self.out = out
        self.auth_token = auth_token
        self.convert_only = convert_only
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
        name = md.metadata.name
        for notice in notices(loaded.raw):
            self._say(notice.line())
        spec = localize(md.spec, loaded.base_dir)
        self._open_store()
        token = self._token(spec)
        # Held (listening) from now until the server takes over: a second `ondeck run`
        # on this port is told at once, not after its conversion.
        holder = None if self.convert_only else self._hold_port()
        try:
            with self._signals():
                summary = self._convert(spec, name=name)
                if summary is None:
                    self._say(INTERRUPTED)
                    return EXIT_INTERRUPTED
                self._name_ref(name, summary.digest)
                if self.convert_only:
                    print(
                        f"ondeck: {name} is converted: {summary.path} "
                        f"({sizes(summary)}); refs/{name} points at it",
                        file=self.out,
                        flush=True,
                    )
                    return 0
                if holder is not None:
                    holder.close()
                    holder = None
                return self._serve(spec, name=name, summary=summary, token=token)
        finally:
            if holder is not None:
                holder.close()

    def _open_store(self) -> None:
        try:
            self.store.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.store, prefix=".probe-"):
                pass  # the store is writable
        except OSError as exc:
            raise StoreFailed(
                f"cannot use {self.store} as the artifact store ({exc.strerror or exc}); "
                "pick another with --store"
            ) from None

    def _token(self, spec: ModelDeploymentSpec) -> str | None:
        """The bearer token the local server asks for: --auth-token, else one made for
        this run when the manifest asks for auth (its Secret exists only in clusters)."""
        if self.auth_token:
            self._say("ondeck: the server asks for the bearer token given with --auth-token")
            return self.auth_token
        if spec.server.auth is None:
            return None
        self._say(
            f"ondeck: {AUTH_FIELD}: the Secret {spec.server.auth.secret_name} exists only in "
            "clusters; this run's server asks for a token made for it (in the curl lines "
            "below; choose one with --auth-token)"
        )
        return secrets.token_urlsafe(24)

    def _hold_port(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((self.host, self.port))
            probe.listen(1)
        except OSError as exc:
            probe.close()
            raise self._port_in_use(exc.strerror) from None
        return probe

    def _port_in_use(self, why: str | None) -> PortInUse:
        return PortInUse(
            f"cannot listen on {self.host}:{self.port} ({why or 'Address already in use'}); "
            "pick another with --port"
        )

    def _port_taken(self) -> bool:
        try:
            self._hold_port().close()
        except PortInUse:
            return True
        return False

    def _name_ref(self, name: str, digest: str) -> None:
        """`<store>/refs/<name>` → the artifact, so `ondeck ls` shows it by name."""
        try:
            local_store.point_ref(self.store, name, digest)
        except (OSError, ValueError) as exc:
            self._say(f"ondeck: warning: cannot point refs/{name} at the artifact ({exc})")

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
        with tempfile.TemporaryDirectory(prefix="ondeck-run-") as tmp:
            log = Path(tmp) / "termination-log"
            argv = convert_args(spec, store=str(self.store), ref=key, termination_log=str(log))
            # Not "converting": with an unchanged model the child finds the artifact
            # already built (after fetching and hashing the file) and converts nothing.
            self._say(f"ondeck: fetching {spec.model.uri} for {name}; artifact store {self.store}")
            env = child_env(dict(os.environ))
            if _isatty(self.err):
                # Its stderr is a pipe to us (to name fields in its error line); the
                # progress bar is still drawn as on the terminal behind it.
                env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
                env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
            proc = subprocess.Popen(
                [sys.executable, "-m", "ondeck_server", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # see _serve
            )
            assert proc.stderr is not None
            pump = _ErrorLinePump(proc.stderr, self.err)
            try:
                stdout = self._wait_output(proc)
            finally:
                if proc.poll() is None:
                    self._terminate(proc, grace_s=5.0)
                message = log.read_text(encoding="utf-8").strip() if log.is_file() else ""
                held = pump.finish(message or None)
                proc.stderr.close()
                if stdout is None or proc.returncode != 0:
                    # A conversion stopped halfway leaves its work folder (hundreds of MB
                    # for a big model): it is of no use to anyone, remove it now.
                    with contextlib.suppress(OSError):
                        local_store.remove_leftovers(self.store)
            if stdout is None:
                return None
            if proc.returncode != 0:
                line = held or (message if ERROR_LINE.match(message) else "")
                if line:
                    raise ConvertFailed(line, shown=False, line=in_manifest_terms(line))
                raise ConvertFailed(
                    f"ondeck-server convert exited with status {proc.returncode}; "
                    "see its output above",
                    shown=False,
                )
        summary = self._parse_summary(stdout)
        if summary.cached:
            self._say(f"ondeck: artifact {summary.digest[:12]} reused (already in the store)")
        return summary

    def _wait_output(self, proc: subprocess.Popen[bytes]) -> str | None:
        """Wait for a child that prints one result on stdout; None when stopped. (Its
        stderr has a reader of its own, so no `communicate`.)"""
        stream = proc.stdout
        assert stream is not None
        chunks: list[bytes] = []

        def read() -> None:
            with contextlib.suppress(OSError, ValueError):
                chunks.append(stream.read())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while True:
            if self._stop is not None:
                self._terminate(proc, grace_s=10.0)
                return None
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            reader.join(timeout=10.0)
            return b"".join(chunks).decode("utf-8", errors="replace")

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

    def _serve(
        self,
        spec: ModelDeploymentSpec,
        *,
        name: str,
        summary: ConvertSummary,
        token: str | None = None,
    ) -> int:
        with tempfile.TemporaryDirectory(prefix="ondeck-run-") as secret_dir:
            token_file = None
            if token is not None:
                token_file = Path(secret_dir) / "token"
                fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(token)
            argv = serve_args(
                spec,
                model_path=summary.path,
                name=name,
                host=self.host,
                port=self.port,
                auth_token_file=str(token_file) if token_file else None,
            )
            return self._serve_argv(argv, spec=spec, name=name, summary=summary, token=token)

    def _serve_argv(
        self,
        argv: list[str],
        *,
        spec: ModelDeploymentSpec,
        name: str,
        summary: ConvertSummary,
        token: str | None,
    ) -> int:
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
                name=served_name(spec, name),
                base_url=base_url,
                summary=summary,
                spill_dir=self.store / "requests",
                token=token,
            )
            for path, text in shown.files.items():
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text, encoding="utf-8")
                except OSError as exc:
                    raise StoreFailed(
                        f"cannot write the example request {path} ({exc.strerror or exc})"
                    ) from None
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
        """True once the child itself listens on the port and /v2/health/ready answers
        200; False when stopped by a signal. Another process answering on the port (a
        second `ondeck run`, anything started meanwhile) is not taken for the child."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"{base_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._stop is not None:
                return False
            code = proc.poll()
            if code is not None:
                if self._port_taken():
                    raise self._port_in_use(None)
                raise ServeFailed(
                    f"ondeck-server serve exited with status {code} before it was ready; "
                    "see its output above"
                )
            if listens_on(proc.pid, self.port) is not False:
                try:
                    with urllib.request.urlopen(url, timeout=1.0) as response:
                        if response.status == 200 and proc.poll() is None:
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


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
