"""A real Prometheus for the rollout tests: the binary (on PATH or in
~/.cache/ondeck/tools, built by `scripts/build-prometheus.sh`) run on loopback with a
config file the test writes and reloads (`--web.enable-lifecycle`).

Nothing here imports pytest: `prometheus_binary()` returns None when there is none, and
the fixture in conftest.py skips naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml
from controlplane import free_port
from operator_harness import wait_for

TOOLS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ondeck/tools"
#: How often Prometheus scrapes the servers in the tests: short, so each interval of a few
#: seconds has several samples.
SCRAPE_SECONDS = 1
MISSING = (
    f"the prometheus binary (on PATH or {TOOLS / 'prometheus'}; bash "
    "scripts/build-prometheus.sh, run by scripts/setup.sh --dev, builds it from its Go module)"
)


def prometheus_binary() -> Path | None:
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    cached = TOOLS / "prometheus"
    return cached if cached.exists() else None


class Prometheus:
    """One Prometheus process on 127.0.0.1 (a free port), its data under `workdir`."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self.config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}}))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(binary), f"--config.file={self.config}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for("prometheus ready", self._ready, 60)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def configure(self, scrape_configs: list[dict[str, object]]) -> None:
        """Scrape these jobs (every SCRAPE_SECONDS) from now on."""
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s"}, "scrape_configs": scrape_configs,
        }))  # fmt: skip
        reply = httpx.post(f"{self.url}/-/reload", timeout=10)
        assert reply.status_code == 200, (reply.status_code, reply.text, self.tail())

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
