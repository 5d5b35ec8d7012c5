"""Fixtures for the inference server tests: real models built once per session, and
real `ondeck-server serve` processes on 127.0.0.1 (port 0: the kernel picks a free
one; the server prints the address it bound)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modelzoo

_LISTENING = re.compile(r"serving model '[^']+' on (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    """One `python -m ondeck_server serve …` subprocess; its stderr goes to a file."""

    def __init__(
        self,
        args: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        memory_limit: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        """`command` replaces `python -m ondeck_server serve` (and then `env` replaces
        this process's environment instead of adding to it)."""
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "ondeck_server", "serve", *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env or {}) if command else {**os.environ, **(env or {})},
            # A cap on address space: a regression that allocates without bound then
            # fails inside the server instead of OOM-killing the test machine.
            preexec_fn=(lambda: _limit_memory(memory_limit)) if memory_limit else None,
        )
        self.url = ""

    def wait_listening(self, timeout: float = 60) -> str:
        """The address from the line the server prints once its model is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"server did not start in {timeout} s:\n{self.output()}")

    def wait_ready(self, timeout: float = 60) -> str:
        url = self.url or self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()
        return self.proc.returncode


def free_port() -> int:
    """A port nothing listens on right now (for a test that needs the address before
    the server prints it, which it does only once the model is ready)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model of tests/modelzoo.py, built once."""
    folder = tmp_path_factory.mktemp("zoo")
    models = {name: modelzoo.build(name, folder) for name in modelzoo.BUILDERS}
    models["slow_heavy"] = modelzoo.build_slow(folder / "slow_heavy.onnx", repeats=512)
    return models


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """`start_server(model_path, *flags, env=...)` → a started ServerProcess (not yet
    ready); every process is stopped at the end of the session."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        model: Path | None,
        *flags: str,
        env: dict[str, str] | None = None,
        memory_limit: int | None = None,
    ) -> ServerProcess:
        args = (["--model", str(model)] if model is not None else []) + list(flags)
        if "--host" not in flags and not (env and "ONDECK_HOST" in env):
            args += ["--host", "127.0.0.1"]
        if "--port" not in flags and not (env and "ONDECK_PORT" in env):
            args += ["--port", "0"]
        server = ServerProcess(
            args, log=logs / f"server-{len(started)}.log", env=env, memory_limit=memory_limit
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate()


def _serve(start_server: object, model: Path, *flags: str) -> Iterator[str]:
    server = start_server(model, *flags)  # type: ignore[operator]
    yield server.wait_ready()
    server.terminate()


@pytest.fixture(scope="session")
def mlp_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["mlp"], "--max-body-bytes", "2000000")


@pytest.fixture(scope="session")
def multi_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["multi_input"])


@pytest.fixture(scope="session")
def types_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["all_types"])


@pytest.fixture(scope="session")
def sklearn_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["sklearn"], "--name", "iris")


@pytest.fixture(scope="session")
def fixed_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["fixed_batch"])


@pytest.fixture(scope="session")
def scalar_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    yield from _serve(start_server, zoo["scalar"])
