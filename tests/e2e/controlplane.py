"""A real Kubernetes control plane on loopback for tests and benchmarks (the envtest pattern).

`start_control_plane()` generates a fresh CA and certificates for the run, then starts
Debian's `etcd`, `kube-apiserver` (RBAC, service-account token issuer and keys, admission
with PodSecurity) and `kube-controller-manager` (garbage collector, Job, Deployment,
ReplicaSet, ServiceAccount, namespace, HPA, ... controllers) on 127.0.0.1 ports chosen at run
time, waits until the API server answers `/readyz` and the `default` ServiceAccount exists,
and writes an admin kubeconfig. `ControlPlane.stop()` stops the three processes by PID with
bounded waits. The binaries come from `scripts/build-control-plane.sh` (a cache outside the
clone, keyed by version); `control_plane_binaries()` finds or builds them.

What this module does NOT do: run a kubelet or a scheduler (see `kubelet_sim.py` for the
simulated node), run anything inside pods, or touch a cluster other than the one it starts.
`ControlPlane.restart()` stops one of the three processes (SIGTERM or SIGKILL) and
starts it again on the same ports and etcd data; `TcpProxy` sits between a client and the
API server and cuts its connections at will. The chaos tests use both.

It imports no pytest, so benchmarks use it too.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-control-plane.sh"
SERVICE_CIDR = "10.96.0.0/16"
# Controllers that need a real node, a cloud or a kubelet are left out: the simulated node
# never sends heartbeats, so the node lifecycle controller would evict every pod.
CONTROLLERS = (
    "*,-node-lifecycle-controller,-node-ipam-controller,-cloud-node-lifecycle-controller,"
    "-service-lb-controller,-node-route-controller,-persistentvolume-attach-detach-controller"
)


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or to become ready; the message has its log tail."""


class MissingBinaryError(ControlPlaneError):
    """etcd, go or a built Kubernetes binary is missing; the message names it."""


def control_plane_binaries(*, build: bool = True) -> Path:
    """The folder holding kube-apiserver and kube-controller-manager (built when missing)."""
    if shutil.which("etcd") is None:
        raise MissingBinaryError("etcd: install Debian's etcd-server (bash scripts/setup.sh --dev)")
    version = os.environ.get("ONDECK_K8S_VERSION", "1.36.3")
    base = os.environ.get("ONDECK_CONTROL_PLANE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ondeck/control-plane"
    )
    folder = Path(base) / f"v{version}"
    if (folder / "kube-apiserver").exists() and (folder / "kube-controller-manager").exists():
        return folder
    if not build:
        raise MissingBinaryError(f"kube-apiserver: not built yet in {folder}")
    if shutil.which("go") is None:
        raise MissingBinaryError("go: needed to build kube-apiserver (https://go.dev/dl)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"build-control-plane.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: Any


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    *,
    subject: x509.Name,
    issuer: _Pair | None,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> _Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    else:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                sans.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    signer = issuer.key if issuer else key
    return _Pair(builder.sign(signer, hashes.SHA256()), key)


def _write_pair(pair: _Pair, folder: Path, stem: str) -> tuple[Path, Path]:
    cert = folder / f"{stem}.crt"
    key = folder / f"{stem}.key"
    cert.write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return cert, key


# --------------------------------------------------------------------------- kubeconfigs


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: dict[str, str],
    namespace: str | None = None,
) -> Path:
    """A kubeconfig with one cluster/user/context; `user` is e.g. {"token": ...} or cert paths."""
    context: dict[str, str] = {"cluster": "ondeck-test", "user": "ondeck-test"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ondeck-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "ondeck-test", "user": user}],
        "contexts": [{"name": "ondeck-test", "context": context}],
        "current-context": "ondeck-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)
    workdir: Path | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, as when the machine dies: no shutdown at all."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


def _spawn(name: str, argv: list[str], workdir: Path) -> _Process:
    log = workdir / f"{name}.log"
    handle = log.open("ab")  # a restarted process appends to its log
    try:
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
        )
    finally:
        handle.close()
    return _Process(name, popen, log, argv=list(argv), workdir=workdir)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager; stop() ends them."""

    workdir: Path
    server: str
    ca_file: Path
    admin_kubeconfig: Path
    admin_cert: Path
    admin_key: Path
    audit_log: Path | None
    processes: list[_Process] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)
    etcd_url: str = ""

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for the admin (or the given kubeconfig)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.admin_kubeconfig),
            client_configuration=configuration,
        )
        return client.ApiClient(configuration)

    def service_account_kubeconfig(
        self, path: Path, *, namespace: str, name: str, seconds: int = 7200
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount namespace/name (a TokenRequest token)."""
        from kubernetes import client

        with self.api_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
            )
            core: Any = client.CoreV1Api(api)
            token = core.create_namespaced_service_account_token(
                name, namespace, request
            ).status.token
        return write_kubeconfig(
            path, server=self.server, ca_file=self.ca_file, user={"token": token}
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)

    def process(self, name: str) -> _Process:
        """The running process called `name` (etcd, kube-apiserver, kube-controller-manager)."""
        return next(p for p in self.processes if p.name == name)

    def ready(self) -> bool:
        """etcd healthy and the API server answering /readyz (no exception)."""
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as rsp:
                if b"true" not in rsp.read():
                    return False
            with urllib.request.urlopen(
                f"{self.server}/readyz", timeout=5, context=self.ssl_context()
            ) as rsp:
                return bool(rsp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def restart(
        self,
        name: str,
        *,
        kill: bool = False,
        down_seconds: float = 0.0,
        timeout: float = 120.0,
    ) -> float:
        """Stop one control-plane process (SIGTERM, or SIGKILL with `kill=True`), keep it
        down `down_seconds`, start it again with the same command line (same ports, same
        etcd data), and wait until etcd and the API server are ready again. Returns the
        seconds the API was unavailable from the stop to ready (for the reports)."""
        old = self.process(name)
        started = time.monotonic()
        if kill:
            old.kill()
        else:
            old.stop(timeout=30)
        time.sleep(down_seconds)
        assert old.workdir is not None
        new = _spawn(name, old.argv, old.workdir)
        self.processes[self.processes.index(old)] = new
        _wait(f"{name} back", self.ready, processes=[new], timeout=timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        # Reverse order: controller-manager, then apiserver, then etcd.
        for process in reversed(self.processes):
            process.stop()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)


def _wait(
    what: str,
    check: Any,
    *,
    processes: Sequence[_Process],
    timeout: float,
    interval: float = 0.25,
) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for process in processes:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode} while waiting "
                    f"for {what}:\n{process.tail()}"
                )
        try:
            if check():
                return
        except Exception as exc:  # the check talks to a server that is still starting
            last = exc
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)
    raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what} ({last}):\n{tails}")


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:apiserver"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def start_control_plane(
    workdir: Path,
    *,
    binaries: Path | None = None,
    audit: bool = False,
    timeout: float = 120.0,
    address: str = "127.0.0.1",
) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager under `workdir`; wait until ready.

    The API server listens on `address` only (loopback unless given, e.g. the bridge address
    of a real node, so pods reach it through the `kubernetes` Service); etcd always stays
    on loopback.

    With `audit=True` the API server writes an audit log (Metadata level, ServiceAccount
    requests only) to `workdir/audit.log`, which benchmarks use to count API requests.
    """
    binaries = binaries or control_plane_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)

    ca = _issue(subject=_name("ondeck-test-ca"), issuer=None)
    ca_file, _ = _write_pair(ca, pki, "ca")
    serving = _issue(
        subject=_name("kube-apiserver"),
        issuer=ca,
        server_names=[
            "127.0.0.1",
            *([address] if address != "127.0.0.1" else []),
            "localhost",
            "10.96.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    serving_cert, serving_key = _write_pair(serving, pki, "apiserver")
    admin = _issue(subject=_name("ondeck-admin", "system:masters"), issuer=ca, client=True)
    admin_cert, admin_key = _write_pair(admin, pki, "admin")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_file = pki / "sa.key"
    sa_key_file.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sa_key_file.chmod(0o600)

    # etcd on tmpfs when there is one: these are throwaway clusters and fsync dominates.
    shm = Path("/dev/shm")
    etcd_data = Path(
        shm / f"ondeck-etcd-{os.getpid()}-{time.monotonic_ns()}"
        if shm.is_dir() and os.access(shm, os.W_OK)
        else workdir / "etcd-data"
    )
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://{address}:{api_port}"
    processes: list[_Process] = []
    plane = ControlPlane(
        workdir=workdir,
        server=server,
        ca_file=ca_file,
        admin_kubeconfig=workdir / "admin.kubeconfig",
        admin_cert=admin_cert,
        admin_key=admin_key,
        audit_log=workdir / "audit.log" if audit else None,
        processes=processes,
        scratch=[etcd_data],
    )
    plane.etcd_url = etcd_url
    try:
        processes.append(
            _spawn(
                "etcd",
                [
                    "etcd",
                    "--name=ondeck-test",
                    f"--data-dir={etcd_data}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=ondeck-test=http://127.0.0.1:{peer_port}",
                    "--log-level=warn",
                    "--logger=zap",
                    # etcd 3.4 cannot answer the API server's on-demand progress requests;
                    # periodic progress notifications keep its watch cache fresh instead, so
                    # a watch from "now" or from a just-listed resourceVersion starts at once
                    # rather than waiting up to 3 s and failing with 504 "Too large resource
                    # version".
                    "--experimental-watch-progress-notify-interval=200ms",
                ],
                workdir,
            )
        )
        _wait(
            "etcd /health",
            lambda: b"true" in urllib.request.urlopen(f"{etcd_url}/health", timeout=2).read(),
            processes=processes,
            timeout=timeout,
        )

        apiserver = [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            # `kubectl logs/exec` reach a kubelet by the node's InternalIP (no node DNS here).
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--secure-port={api_port}",
            f"--tls-cert-file={serving_cert}",
            f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={ca_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_key_file}",
            f"--service-account-signing-key-file={sa_key_file}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=1",
        ]
        if audit:
            policy = workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            apiserver += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={plane.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        processes.append(_spawn("kube-apiserver", apiserver, workdir))
        context = plane.ssl_context()
        _wait(
            "kube-apiserver /readyz",
            lambda: (
                urllib.request.urlopen(f"{server}/readyz", timeout=5, context=context).status == 200
            ),
            processes=processes,
            timeout=timeout,
        )
        write_kubeconfig(
            plane.admin_kubeconfig,
            server=server,
            ca_file=ca_file,
            user={"client-certificate": str(admin_cert), "client-key": str(admin_key)},
        )
        processes.append(
            _spawn(
                "kube-controller-manager",
                [
                    str(binaries / "kube-controller-manager"),
                    f"--kubeconfig={plane.admin_kubeconfig}",
                    "--secure-port=0",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--leader-elect=false",
                    f"--controllers={CONTROLLERS}",
                    f"--service-account-private-key-file={sa_key_file}",
                    f"--root-ca-file={ca_file}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--use-service-account-credentials=false",
                    "--concurrent-gc-syncs=10",
                    "--horizontal-pod-autoscaler-sync-period=2s",
                    "--v=1",
                ],
                workdir,
            )
        )

        def default_service_account() -> bool:
            request = urllib.request.Request(
                f"{server}/api/v1/namespaces/default/serviceaccounts/default"
            )
            try:
                urllib.request.urlopen(request, timeout=5, context=context)
            except urllib.error.HTTPError:
                return False
            return True

        _wait(
            "the default ServiceAccount (kube-controller-manager running)",
            default_service_account,
            processes=processes,
            timeout=timeout,
        )
    except BaseException:
        plane.stop()
        raise
    return plane


class TcpProxy:
    """A loopback TCP forwarder to `target` (host, port) whose open connections can be
    cut at will: `cut()` closes every forwarded connection at once, both sides, as a
    load balancer restart or a network blip does to a client's watch streams. TLS passes
    through untouched (the API server's certificate names 127.0.0.1). `close()` stops it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._open.discard(sock)

    def cut(self) -> int:
        """Close every open connection; returns how many sockets were open."""
        with self._lock:
            sockets = list(self._open)
        self._close(*sockets)
        return len(sockets)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)
        self.cut()


@contextlib.contextmanager
def running_control_plane(workdir: Path, **kwargs: Any) -> Iterator[ControlPlane]:
    plane = start_control_plane(workdir, **kwargs)
    try:
        yield plane
    finally:
        plane.stop()
