"""A real Kubernetes node for the e2e tests: containerd + kubelet + kube-proxy + kube-scheduler.

`start_node()` runs, next to a control plane started with `address=` the node's IP:
- a Linux bridge the test creates (`bridge_network()`), whose address is the node IP: the
  API server, the kubelet and the test's model HTTP server listen on it, and pods get
  addresses in its /24 through Debian's CNI plugins (bridge + host-local);
- containerd with its own config, root, state and socket under the workdir (never the
  machine's own containerd), a locally built sandbox image and the CRI settings that run
  pods in this kind of container (FACTS.md, "Containers and a real node");
- the kubelet (cgroupfs, no QoS cgroups, swap and cgroup v1 allowed) registering the node
  with that IP, serving on it for `kubectl logs`;
- kube-proxy in iptables mode (Services' ClusterIPs work from the host and from pods), and
  kube-scheduler;
- the images, loaded with `docker save | ctr -n k8s.io images import`.
`RealNode.stop()` ends every process it started by PID, kills the containers left in its
containerd, removes kube-proxy's iptables rules and the bridge, and unmounts what the
kubelet and containerd mounted under the workdir.

The kubelet allows anonymous requests (authorization AlwaysAllow): it listens only on the
test's bridge, and the API server has no kubelet client certificate here.
This module imports no pytest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from controlplane import REPO, ControlPlane, _Process, _spawn, _wait, free_port

BUILD_SCRIPT = REPO / "scripts" / "build-node.sh"
CNI_BIN = Path("/usr/lib/cni")
NODE_NAME = "ondeck-node"
TOOLS = ("containerd", "runc", "ctr", "iptables", "conntrack", "ip", "docker")


class NodeError(RuntimeError):
    """A node process failed to start or the node never became Ready; the message says why."""


def node_problem() -> str | None:
    """Why a real node cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "root (a kubelet, containerd, a bridge and iptables rules)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} (bash scripts/setup.sh --dev installs it)"
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN / plugin).exists():
            return f"the CNI plugin {CNI_BIN / plugin} (Debian's containernetworking-plugins)"
    return None


def node_binaries(*, build: bool = True) -> Path:
    """The folder holding kubelet, kube-proxy and kube-scheduler (built when missing)."""
    version = os.environ.get("ONDECK_K8S_VERSION", "1.36.3")
    base = os.environ.get("ONDECK_NODE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ondeck/node"
    )
    folder = Path(base) / f"v{version}"
    if all((folder / b).exists() for b in ("kubelet", "kube-proxy", "kube-scheduler")):
        return folder
    if not build or shutil.which("go") is None:
        raise NodeError(f"kubelet: not built in {folder} and no go to build it")
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        raise NodeError(f"build-node.sh failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return done


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class BridgeNetwork:
    """A bridge this test created: `gateway` (the node IP) in `subnet` (the pod network)."""

    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(next(self.subnet.hosts()))


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_run("ip", "-json", "route", "show", "table", "all").stdout or "[]")
    used = []
    for route in routes:
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(route.get("dst", ""), strict=False))
    return [n for n in used if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0]


@contextlib.contextmanager
def bridge_network() -> Iterator[BridgeNetwork]:
    """Create a bridge with a free 10.214.x.0/24 on it (and FORWARD accepts for it)."""
    used = _used_networks()
    rng = random.Random()
    for _ in range(50):
        subnet = ipaddress.IPv4Network(f"10.214.{rng.randrange(1, 255)}.0/24")
        if not any(subnet.overlaps(n) for n in used):
            break
    else:
        raise NodeError("no free 10.214.x.0/24 for the node's bridge")
    name = f"ondk{subnet.network_address.packed[2]:03d}"
    net = BridgeNetwork(bridge=name, subnet=subnet)
    _run("ip", "link", "add", name, "type", "bridge")
    rules = [["-i", name, "-j", "ACCEPT"], ["-o", name, "-j", "ACCEPT"]]
    try:
        _run("ip", "addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", name)
        _run("ip", "link", "set", name, "up")
        # Docker's FORWARD policy is DROP, and bridged frames pass iptables here
        # (br_netfilter): let the pod network's own traffic through.
        for rule in rules:
            _run("iptables", "-I", "FORWARD", *rule, "-m", "comment", "--comment", "ondeck-test")
        yield net
    finally:
        for rule in rules:
            _run(
                *("iptables", "-D", "FORWARD", *rule, "-m", "comment"),
                *("--comment", "ondeck-test"),
                check=False,
            )
        _run("ip", "link", "del", name, check=False)


# --------------------------------------------------------------------------- configs


def _containerd_config(workdir: Path, sandbox_image: str) -> tuple[Path, Path]:
    root = workdir / "containerd"
    cni_conf = workdir / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    socket = root / "containerd.sock"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{sandbox_image}"
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni_conf}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
"""
    path = root / "config.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    return path, socket


def _cni_config(workdir: Path, net: BridgeNetwork) -> None:
    conflist = {
        "cniVersion": "0.4.0",
        "name": "ondeck-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net.subnet), "gateway": net.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (workdir / "cni" / "net.d" / "10-ondeck.conflist").write_text(json.dumps(conflist, indent=2))


def _kubelet_config(workdir: Path, net: BridgeNetwork, socket: Path) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.gateway,
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{socket}",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "enableControllerAttachDetach": False,
        "podLogsDir": str(workdir / "pod-logs"),
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "hairpinMode": "hairpin-veth",
        "maxPods": 60,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "localStorageCapacityIsolation": True,
        "containerLogMaxSize": "10Mi",
    }
    path = workdir / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _proxy_config(workdir: Path, net: BridgeNetwork, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": net.gateway,
        "clusterCIDR": str(net.subnet),
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "nodePortAddresses": [f"{net.gateway}/32"],
        # Hairpin (a pod reaching its own Service) needs SNAT on a bridge.
        "iptables": {"masqueradeAll": True, "syncPeriod": "5s", "minSyncPeriod": "0s"},
        # Leave the machine's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = workdir / "kube-proxy-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _scheduler_config(workdir: Path, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
    }
    path = workdir / "kube-scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------- the node


@dataclass
class RealNode:
    """A running node; `stop()` ends it and cleans what it made."""

    workdir: Path
    net: BridgeNetwork
    name: str
    socket: Path
    binaries: Path
    kubeconfig: Path
    processes: list[_Process] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.net.gateway

    def ctr(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = _run(
            *("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args),
            timeout=timeout,
            check=check,
        )
        return done.stdout

    def load_images(self, refs: Sequence[str]) -> None:
        """`docker save` → `ctr images import` (pods use imagePullPolicy: Never)."""
        save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
        try:
            done = subprocess.run(
                [
                    *("ctr", "--address", str(self.socket), "--namespace", "k8s.io"),
                    *("images", "import", "-"),
                ],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait(timeout=60)
        if save.returncode != 0 or done.returncode != 0:
            raise NodeError(f"loading {refs} into containerd failed: {done.stderr[-2000:]}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)

    def _kill_containers(self) -> None:
        """Kill every task of this containerd, and the shims it started (by PID)."""
        with contextlib.suppress(Exception):
            for line in self.ctr("tasks", "ls", "--quiet", check=False, timeout=30).split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", line, check=False, timeout=30)
        shims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if (
                    argv
                    and argv[0].endswith(b"containerd-shim-runc-v2")
                    and str(self.socket).encode() in argv
                ):
                    shims.append(int(proc.name))
        for pid in shims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.name != "containerd":
                process.stop()
        self._kill_containers()
        for process in self.processes:
            if process.name == "containerd":
                process.stop()
        _run(str(self.binaries / "kube-proxy"), "--cleanup", check=False)
        _unmount_under(self.workdir)


def _unmount_under(folder: Path) -> None:
    prefix = str(folder.resolve())
    for _ in range(3):
        points = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)
        ]
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _run("umount", "--lazy", point, check=False)


def start_node(
    workdir: Path,
    plane: ControlPlane,
    net: BridgeNetwork,
    *,
    images: Sequence[str],
    sandbox_image: str,
    binaries: Path | None = None,
    timeout: float = 120.0,
) -> RealNode:
    """Start containerd, load `images`, then kubelet, kube-proxy and kube-scheduler; wait
    until the node is Ready."""
    binaries = binaries or node_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    config, socket = _containerd_config(workdir, sandbox_image)
    _cni_config(workdir, net)
    node = RealNode(
        workdir=workdir,
        net=net,
        name=NODE_NAME,
        socket=socket,
        binaries=binaries,
        kubeconfig=plane.admin_kubeconfig,
    )
    try:
        node.processes.append(
            _spawn(
                "containerd",
                ["containerd", "--config", str(config), "--log-level", "warn"],
                workdir,
            )
        )
        _wait(
            "the containerd socket",
            lambda: (
                socket.exists()
                and _run("ctr", "--address", str(socket), "version", check=False).returncode == 0
            ),
            processes=node.processes,
            timeout=timeout,
        )
        node.load_images([*images, sandbox_image])
        kubelet_config = _kubelet_config(workdir, net, socket)
        node.processes.append(
            _spawn(
                "kubelet",
                [
                    str(binaries / "kubelet"),
                    f"--config={kubelet_config}",
                    f"--kubeconfig={plane.admin_kubeconfig}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-ip={net.gateway}",
                    f"--root-dir={workdir / 'kubelet'}",
                    f"--cert-dir={workdir / 'kubelet-pki'}",
                    "--v=1",
                ],
                workdir,
            )
        )
        node.processes.append(
            _spawn(
                "kube-proxy",
                [
                    str(binaries / "kube-proxy"),
                    f"--config={_proxy_config(workdir, net, plane.admin_kubeconfig)}",
                    "--v=1",
                ],
                workdir,
            )
        )
        node.processes.append(
            _spawn(
                "kube-scheduler",
                [
                    str(binaries / "kube-scheduler"),
                    f"--config={_scheduler_config(workdir, plane.admin_kubeconfig)}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--v=1",
                ],
                workdir,
            )
        )
        _wait(
            "the node to be Ready",
            lambda: _node_ready(plane),
            processes=node.processes,
            timeout=timeout,
        )
    except BaseException:
        node.stop()
        raise
    return node


def _node_ready(plane: ControlPlane) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with plane.api_client() as api:
        core: Any = client.CoreV1Api(api)
        try:
            node = core.read_node(NODE_NAME)
        except ApiException:
            return False
        ready = any(
            c.type == "Ready" and c.status == "True" for c in (node.status.conditions or [])
        )
        if not ready:
            return False
        # The node lifecycle controller (left out: see controlplane.CONTROLLERS) would
        # lift the taints a kubelet registers with once it is Ready.
        taints = [
            t for t in (node.spec.taints or []) if not t.key.startswith("node.kubernetes.io/")
        ]
        if len(taints) != len(node.spec.taints or []):
            core.patch_node(NODE_NAME, {"spec": {"taints": taints or None}})
            return False
        return True


def wait_until(what: str, probe: Any, *, timeout: float, node: RealNode | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} ({last})\n{node.logs() if node else ''}"
    )


@dataclass(frozen=True)
class RealCluster:
    """What the `real_cluster` fixture gives a test."""

    plane: ControlPlane
    node: RealNode
    images: Any  # images.tools.Images
