"""Where the operator's API calls go and who it says it is: the pod's ServiceAccount in a
cluster, else a kubeconfig (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`) as kubectl
reads it.

Read here rather than through the `kubernetes` package: that package costs the operator
~26 MiB of resident memory (kopf imports its generated client whenever it is importable),
a fifth of the operator's budget at 1000 ModelDeployments (issue 14), for a job of reading
one YAML file. What is supported is what clusters hand out: bearer tokens (inline, a
`tokenFile`, the ServiceAccount's rotated token), client certificates, basic auth, CA
bundles (file or inline data) and `exec` credential plugins (client.authentication.k8s.io
v1 and v1beta1: EKS, GKE, AKS, OIDC helpers). Legacy `auth-provider` entries (removed from
kubectl in 1.26) are refused with a message.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_TIMEOUT_SECONDS = 60.0
# An exec credential without an expiry is asked again after this long, and one with an
# expiry this long before it, so a token never expires in flight.
EXEC_REFRESH_SECONDS = 300.0


class CredentialsError(Exception):
    """The kubeconfig or the ServiceAccount could not give usable credentials."""


@dataclass
class TokenSource:
    """Where the bearer token comes from; `header()` re-reads a file or re-runs a plugin
    when due, so rotated tokens are picked up (callers ask at most once a minute)."""

    token: str | None = None
    token_file: Path | None = None
    exec_config: dict[str, Any] | None = None
    basic: tuple[str, str] | None = None
    _exec_token: str | None = field(default=None, repr=False)
    _exec_until: float = field(default=0.0, repr=False)

    def header(self) -> str | None:
        if self.exec_config is not None:
            return f"Bearer {self._run_exec()}"
        if self.token_file is not None:
            try:
                return f"Bearer {self.token_file.read_text().strip()}"
            except OSError as exc:
                msg = f"cannot read the token file {self.token_file}: {exc}"
                raise CredentialsError(msg) from None
        if self.token:
            return f"Bearer {self.token}"
        if self.basic is not None:
            raw = f"{self.basic[0]}:{self.basic[1]}".encode()
            return f"Basic {base64.b64encode(raw).decode()}"
        return None

    def _run_exec(self) -> str:
        now = time.time()
        if self._exec_token is not None and now < self._exec_until:
            return self._exec_token
        cfg = self.exec_config or {}
        command = [str(cfg.get("command", "")), *[str(a) for a in cfg.get("args") or []]]
        env = dict(os.environ)
        env.update({str(e["name"]): str(e["value"]) for e in cfg.get("env") or []})
        api_version = str(cfg.get("apiVersion", "client.authentication.k8s.io/v1"))
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        )
        try:
            done = subprocess.run(
                command,
                env=env,
                capture_output=True,
                timeout=EXEC_TIMEOUT_SECONDS,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            status = json.loads(done.stdout)["status"]
            token = str(status["token"])
        except subprocess.CalledProcessError as exc:
            tail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise CredentialsError(
                f"the kubeconfig's exec plugin {command[0]!r} exited with status "
                f"{exc.returncode}: {tail[0]}"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CredentialsError(
                f"the kubeconfig's exec plugin {command[0]!r} failed: {exc}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise CredentialsError(
                f"the kubeconfig's exec plugin {command[0]!r} printed no "
                "ExecCredential with status.token"
            ) from None
        until = now + EXEC_REFRESH_SECONDS
        expiry = status.get("expirationTimestamp")
        if expiry:
            expires = datetime.fromisoformat(str(expiry).replace("Z", "+00:00")).timestamp()
            until = min(until, expires - 60.0)
        self._exec_token, self._exec_until = token, until
        return token


@dataclass
class Credentials:
    """An API server's address, how to trust it and how to authenticate to it."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    auth: TokenSource = field(default_factory=TokenSource)

    def connection_info(self) -> Any:
        """The same credentials as a `kopf.ConnectionInfo` for kopf's login handler."""
        import kopf

        header = self.auth.header()
        scheme, token = None, None
        if header:
            scheme, _, token = header.partition(" ")
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=self.ca_path,
            insecure=self.insecure,
            scheme=scheme,
            token=token,
            certificate_path=self.cert_path,
            private_key_path=self.key_path,
        )


def load_credentials(kubeconfig: Path | None = None, context: str | None = None) -> Credentials:
    """The pod's ServiceAccount when running in a cluster (and no kubeconfig or context is
    given), else the kubeconfig. Raises CredentialsError with what is missing."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return from_kubeconfig(kubeconfig, context)


def in_cluster(root: Path = SERVICE_ACCOUNT) -> Credentials:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not (root / "token").is_file():
        raise CredentialsError(f"running in a cluster but {root / 'token'} does not exist")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    ca = root / "ca.crt"
    return Credentials(
        server=server,
        ca_path=str(ca) if ca.is_file() else None,
        auth=TokenSource(token_file=root / "token"),
    )


def _kubeconfig_paths(kubeconfig: Path | None) -> list[Path]:
    if kubeconfig is not None:
        return [kubeconfig]
    listed = os.environ.get("KUBECONFIG", "")
    if listed:
        return [Path(p) for p in listed.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _merge(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    """kubectl's merge of several kubeconfig files: the first file to set a value wins.
    Returns the merged config and, per cluster/user name, the folder its relative paths
    are relative to."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": ""}
    base: dict[str, Path] = {}
    found = False
    for path in paths:
        if not path.is_file():
            if len(paths) == 1:
                raise CredentialsError(
                    f"no kubeconfig at {path} and not running in a cluster: "
                    "pass --kubeconfig or set KUBECONFIG"
                )
            continue
        found = True
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"cannot read the kubeconfig {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise CredentialsError(f"the kubeconfig {path} is not a YAML mapping")
        merged["current-context"] = merged["current-context"] or doc.get("current-context") or ""
        for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") not in merged[section]:
                    merged[section][entry.get("name")] = entry.get(key) or {}
                    base[f"{section}/{entry.get('name')}"] = path.parent
    if not found:
        raise CredentialsError(
            f"none of the kubeconfig files {', '.join(map(str, paths))} exists and not "
            "running in a cluster: pass --kubeconfig or set KUBECONFIG"
        )
    return merged, base


def _file(entry: dict[str, Any], key: str, folder: Path) -> str | None:
    """`<key>-data` (base64, written to a private temporary file, as kubectl does) or
    `<key>` (a path, relative to the kubeconfig's folder)."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            raw = base64.b64decode(str(data), validate=True)
        except ValueError:
            raise CredentialsError(f"the kubeconfig's {key}-data is not base64") from None
        fd, name = tempfile.mkstemp(prefix=f"ondeck-{key}-")
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        return name
    path = entry.get(key)
    return str(folder / str(path)) if path else None


def from_kubeconfig(kubeconfig: Path | None = None, context: str | None = None) -> Credentials:
    config, base = _merge(_kubeconfig_paths(kubeconfig))
    name = context or config["current-context"]
    if not name:
        raise CredentialsError("the kubeconfig has no current-context: pass --context")
    ctx = config["contexts"].get(name)
    if ctx is None:
        raise CredentialsError(f"the kubeconfig has no context {name!r}")
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    cluster = config["clusters"].get(cluster_name)
    if not cluster or not cluster.get("server"):
        raise CredentialsError(f"the kubeconfig's context {name!r} names no cluster with a server")
    user = config["users"].get(user_name) or {}
    cluster_dir = base.get(f"clusters/{cluster_name}", Path.cwd())
    user_dir = base.get(f"users/{user_name}", Path.cwd())
    if user.get("auth-provider"):
        raise CredentialsError(
            f"the kubeconfig's user {user_name!r} uses an auth-provider, which kubectl "
            "dropped in 1.26: use an exec plugin (e.g. gke-gcloud-auth-plugin, kubelogin)"
        )
    token_file = user.get("tokenFile")
    exec_config = user.get("exec")
    if isinstance(exec_config, dict) and "/" in str(exec_config.get("command", "")):
        # kubectl runs a command with a path relative to the kubeconfig's folder.
        exec_config = {**exec_config, "command": str(user_dir / str(exec_config["command"]))}
    basic = (str(user["username"]), str(user.get("password", ""))) if user.get("username") else None
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=_file(cluster, "certificate-authority", cluster_dir),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        cert_path=_file(user, "client-certificate", user_dir),
        key_path=_file(user, "client-key", user_dir),
        auth=TokenSource(
            token=user.get("token"),
            token_file=user_dir / str(token_file) if token_file else None,
            exec_config=exec_config,
            basic=basic,
        ),
    )
