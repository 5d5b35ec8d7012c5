"""Building and running ondeck's real images with the local Docker engine (no pytest here).

`docker_problem()` says why Docker is unusable (None when it works); `build_images()` runs
scripts/build-images.sh (a debootstrap base cached outside the clone, then every repo
Dockerfile) and returns the image names and sizes. `Container` runs one image detached and
removes it afterwards; `restricted_flags()` turns the securityContext that `ondeck render`
puts on a pod into the `docker run` flags that enforce the same.
The e2e tests load the same images into their node's containerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-images.sh"
#: Tag of the images the tests build (the developer's own `dev` images stay untouched).
TAG = os.environ.get("ONDECK_TEST_IMAGE_TAG", "test")
UID = GID = 65532


class ImageBuildError(RuntimeError):
    """scripts/build-images.sh failed; the message holds its log tail."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def docker_problem() -> str | None:
    """Why the Docker engine cannot be used here, or None when `docker info` answers."""
    if shutil.which("docker") is None:
        return "docker: no docker CLI on PATH (bash scripts/setup.sh --dev installs docker.io)"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{json .ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "docker: `docker info` did not answer within 30 s"
    if done.returncode != 0:
        return f"docker: the daemon does not answer ({done.stderr.strip()[-300:]})"
    return None


@dataclass(frozen=True)
class Images:
    """name -> image reference, and each image's size in bytes."""

    refs: Mapping[str, str]
    sizes: Mapping[str, int]

    @property
    def server(self) -> str:
        return self.refs["ondeck-server"]

    @property
    def converter(self) -> str:
        return self.refs["ondeck-converter"]

    @property
    def operator(self) -> str:
        return self.refs["ondeck-operator"]

    @property
    def pause(self) -> str:
        return self.refs["ondeck-pause"]

    def report(self) -> str:
        return ", ".join(f"{self.refs[n]} {self.sizes[n] / 1e6:.0f} MB" for n in sorted(self.refs))


def build_images(tag: str = TAG, *, timeout: float = 2400) -> Images:
    """Run scripts/build-images.sh (a no-op rebuild takes seconds: Docker's layer cache)."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--tag", tag],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ImageBuildError(f"build-images.sh failed:\n{done.stderr[-4000:]}")
    refs: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in done.stdout.splitlines():
        ref, _, size = line.partition(" ")
        name = ref.partition(":")[0]
        refs[name] = ref
        sizes[name] = int(size)
    return Images(refs=refs, sizes=sizes)


def restricted_flags(
    pod_security: Mapping[str, Any], container_security: Mapping[str, Any]
) -> list[str]:
    """`docker run` flags enforcing a pod's and its container's securityContext.

    Only what the restricted Pod Security Standard asks for is accepted; anything else in
    the context fails loudly, so a new field in render is noticed here.
    """
    merged = {**pod_security, **container_security}
    known = {
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "fsGroupChangePolicy",
        "seccompProfile",
        "allowPrivilegeEscalation",
        "capabilities",
        "privileged",
        "readOnlyRootFilesystem",
    }
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"securityContext fields without a docker equivalent here: {unknown}")
    if merged.get("runAsNonRoot") is not True or not merged.get("runAsUser"):
        raise ValueError("the pod must run as a non-root numeric user")
    flags = ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', merged['runAsUser'])}"]
    if merged.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if merged.get("capabilities", {}).get("drop") == ["ALL"]:
        flags += ["--cap-drop", "ALL"]
    if merged.get("capabilities", {}).get("add"):
        raise ValueError("capabilities are added")
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if merged.get("privileged"):
        raise ValueError("privileged pod")
    # RuntimeDefault is Docker's default seccomp profile: it applies unless a run says
    # `seccomp=unconfined`, which these flags never do.
    if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        raise ValueError(f"seccompProfile {merged.get('seccompProfile')}")
    return flags


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed: {done.stderr[-2000:]}")
    return done


@dataclass
class Container:
    """A detached container; `remove()` deletes it (and its logs) by name."""

    name: str

    @classmethod
    def run(cls, image: str, flags: Sequence[str], argv: Sequence[str]) -> Container:
        name = f"ondeck-test-{uuid.uuid4().hex[:10]}"
        docker("run", "--detach", "--name", name, *flags, image, *argv)
        return cls(name)

    def inspect(self) -> dict[str, Any]:
        (data,) = json.loads(docker("inspect", self.name).stdout)
        return dict(data)

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def wait(self, timeout: float = 600) -> int:
        done = docker("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def logs(self) -> str:
        done = docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def exec(self, *argv: str) -> str:
        return docker("exec", self.name, *argv).stdout

    def ip(self, network: str) -> str:
        return str(self.inspect()["NetworkSettings"]["Networks"][network]["IPAddress"])

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


@contextlib.contextmanager
def internal_network() -> Iterator[str]:
    """A Docker bridge network this test creates, with no route out (`--internal`)."""
    name = f"ondeck-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--internal", name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


def wait_until(what: str, probe: Any, *, timeout: float, container: Container | None = None) -> Any:
    """Poll `probe()` until it returns something truthy; the container's log on failure."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # the server is still starting
            value, last = None, exc
        if value:
            return value
        if container is not None and not container.running():
            break
        time.sleep(0.3)
    logs = container.logs()[-3000:] if container is not None else ""
    raise AssertionError(f"timed out waiting for {what} ({last}):\n{logs}")
