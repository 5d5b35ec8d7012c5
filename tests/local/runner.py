"""Test helper: `ondeck run` as a real subprocess on a free loopback port, with its
output collected, the printed curl lines turned back into requests, and a bounded wait
for everything."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

BANNER_END = "Press Ctrl-C to stop."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OndeckRun:
    """One `python -m ondeck_operator run …` process."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in unset}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ondeck_operator", "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environ, **(env or {})},
            cwd=cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_banner(self, timeout: float = 120.0) -> list[str]:
        """The lines printed on stdout once the server is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if BANNER_END in self.out:
                return list(self.out)
            if self.proc.poll() is not None:
                self._join()
                raise AssertionError(
                    f"ondeck run exited with {self.proc.returncode}:\n" + "\n".join(self.err[-30:])
                )
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise AssertionError("ondeck run was not ready in time:\n" + "\n".join(self.err[-30:]))

    def wait_exit(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._join()
        return code

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait_exit(timeout)

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    def curl(self, protocol: str) -> tuple[str, str, dict[str, str]]:
        """URL, body (the exact text curl would send) and headers of the printed `V2:` or
        `V1:` line."""
        prefix = f"  {protocol}: "
        (line,) = [line for line in self.out if line.startswith(prefix)]
        argv = shlex.split(line.removeprefix(prefix))
        assert argv[:2] == ["curl", "-s"], line
        assert argv[3:5] == ["-H", "Content-Type: application/json"], line
        headers = dict(argv[i + 1].split(": ", 1) for i, arg in enumerate(argv) if arg == "-H")
        data = argv[argv.index("-d") + 1]
        if data.startswith("@"):
            data = Path(data[1:]).read_text()
        json.loads(data)  # the body is JSON
        return argv[2], data, headers

    def send(self, protocol: str) -> httpx.Response:
        """Do what the printed curl line does."""
        url, body, headers = self.curl(protocol)
        return httpx.post(url, content=body.encode(), headers=headers, timeout=30.0)
