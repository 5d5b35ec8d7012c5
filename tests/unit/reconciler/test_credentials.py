"""The operator's credentials (runtime/credentials.py): kubeconfigs as kubectl reads them,
the pod's ServiceAccount, exec plugins, and one clear line for each broken input. The
real API server's TLS and ServiceAccount tokens are exercised by every tests/e2e run."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ondeck_operator.cli import _register, app
from ondeck_operator.runtime.credentials import (
    CredentialsError,
    from_kubeconfig,
    in_cluster,
    load_credentials,
)

_register()


def _kubeconfig(
    path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None, **extra: Any
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_inline_token_ca_and_client_certificate_data(tmp_path: Path) -> None:
    ca, cert, key = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"
    cfg = _kubeconfig(
        tmp_path / "config",
        {
            "token": "abc",
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
        {
            "server": "https://10.0.0.1:6443/",
            "certificate-authority-data": base64.b64encode(ca).decode(),
        },
    )
    creds = from_kubeconfig(cfg)
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.auth.header() == "Bearer abc"
    assert creds.ca_path
    assert Path(creds.ca_path).read_bytes() == ca
    assert creds.cert_path
    assert Path(creds.cert_path).read_bytes() == cert
    assert creds.key_path
    assert Path(creds.key_path).read_bytes() == key
    assert Path(creds.key_path).stat().st_mode & 0o077 == 0, "a private key must stay private"
    info = creds.connection_info()
    assert (info.server, info.scheme, info.token) == ("https://10.0.0.1:6443", "Bearer", "abc")


def test_relative_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "token").write_text("first\n")
    cfg = _kubeconfig(
        tmp_path / "kube" / "config",
        {"tokenFile": "token", "client-certificate": "c.pem", "client-key": "k.pem"},
        {"server": "https://h:6443", "certificate-authority": "ca.pem"},
    )
    creds = from_kubeconfig(cfg)
    assert creds.ca_path == str(tmp_path / "kube" / "ca.pem")
    assert creds.cert_path == str(tmp_path / "kube" / "c.pem")
    assert creds.auth.header() == "Bearer first"
    # A rotated token is read again, as the ServiceAccount's projected token is.
    (tmp_path / "kube" / "token").write_text("second\n")
    assert creds.auth.header() == "Bearer second"


def test_kubeconfig_list_merges_first_wins_and_context_selects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _kubeconfig(tmp_path / "a", {"token": "from-a"})
    b = tmp_path / "b"
    b.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "other", "cluster": {"server": "https://other:443"}}],
                "users": [{"name": "u", "user": {"token": "from-b"}}],
                "contexts": [{"name": "o", "context": {"cluster": "other", "user": "u"}}],
                "current-context": "o",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{a}:{b}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    creds = load_credentials()
    assert (creds.server, creds.auth.header()) == ("https://10.0.0.1:6443", "Bearer from-a")
    other = load_credentials(context="o")
    assert (other.server, other.auth.header()) == ("https://other:443", "Bearer from-a")


def test_basic_auth_and_insecure(tmp_path: Path) -> None:
    cfg = _kubeconfig(
        tmp_path / "config",
        {"username": "admin", "password": "pw"},
        {"server": "https://h", "insecure-skip-tls-verify": True},
    )
    creds = from_kubeconfig(cfg)
    assert creds.insecure
    assert creds.auth.header() == "Basic " + base64.b64encode(b"admin:pw").decode()


def _plugin(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(body)
    return script


def test_exec_plugin_token_is_cached_until_due(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    script = _plugin(
        tmp_path,
        "import json, os, pathlib\n"
        f"p = pathlib.Path({str(calls)!r})\n"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential'\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',"
        " 'status': {'token': 'tok-' + os.environ['WHO']}}))\n",
    )
    exec_cfg = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(script)],
        "env": [{"name": "WHO", "value": "me"}],
    }
    creds = from_kubeconfig(_kubeconfig(tmp_path / "config", {"exec": exec_cfg}))
    assert creds.auth.header() == "Bearer tok-me"
    assert creds.auth.header() == "Bearer tok-me"
    assert calls.read_text() == "x", "the plugin ran again before its token was due"


def test_exec_plugin_expiry_in_the_past_runs_again(tmp_path: Path) -> None:
    script = _plugin(
        tmp_path,
        "import json\nprint(json.dumps({'status': {'token': 't',"
        " 'expirationTimestamp': '2020-01-01T00:00:00Z'}}))\n",
    )
    exec_cfg = {"command": sys.executable, "args": [str(script)]}
    creds = from_kubeconfig(_kubeconfig(tmp_path / "config", {"exec": exec_cfg}))
    assert creds.auth.header() == "Bearer t"
    assert creds.auth._exec_until < 0 or creds.auth._exec_until < 1.7e9


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "import sys\nprint('denied', file=sys.stderr)\nsys.exit(3)\n",
            "exited with status 3: denied",
        ),
        ("print('not json')\n", "printed no ExecCredential with status.token"),
        ("print('{\"status\": {}}')\n", "printed no ExecCredential with status.token"),
    ],
)
def test_exec_plugin_failures_are_one_line(tmp_path: Path, body: str, message: str) -> None:
    exec_cfg = {"command": sys.executable, "args": [str(_plugin(tmp_path, body))]}
    creds = from_kubeconfig(_kubeconfig(tmp_path / "config", {"exec": exec_cfg}))
    with pytest.raises(CredentialsError, match=message):
        creds.auth.header()


def test_exec_plugin_missing_command(tmp_path: Path) -> None:
    creds = from_kubeconfig(
        _kubeconfig(tmp_path / "config", {"exec": {"command": "no-such-plugin-xyz"}})
    )
    with pytest.raises(CredentialsError, match="exec plugin 'no-such-plugin-xyz' failed"):
        creds.auth.header()


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("ca")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = in_cluster(tmp_path)
    assert creds.server == "https://[fd00::1]:443"
    assert creds.ca_path == str(tmp_path / "ca.crt")
    assert creds.auth.header() == "Bearer sa-token"
    with pytest.raises(CredentialsError, match="does not exist"):
        in_cluster(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2", "cannot read the kubeconfig"),
        ("- a\n- b\n", "is not a YAML mapping"),
        ("clusters: []\n", "has no current-context: pass --context"),
        ("current-context: nope\n", "has no context 'nope'"),
    ],
)
def test_broken_kubeconfig(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(content)
    with pytest.raises(CredentialsError, match=message):
        from_kubeconfig(cfg)


def test_auth_provider_is_refused_with_the_replacement(tmp_path: Path) -> None:
    cfg = _kubeconfig(tmp_path / "config", {"auth-provider": {"name": "gcp"}})
    with pytest.raises(CredentialsError, match="use an exec plugin"):
        from_kubeconfig(cfg)


def test_operator_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("current-context: nope\n")
    result = CliRunner().invoke(app, ["operator", "--kubeconfig", str(cfg)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["CredentialsError: the kubeconfig has no context 'nope'"], lines


def test_the_operator_process_loads_no_client_it_does_not_use(tmp_path: Path) -> None:
    """kopf imports `kubernetes` whenever it can (~26 MiB resident); `ondeck operator`
    keeps it out, and numpy and httpx too (issue 14's memory budget). Python's import
    trace of the real command, which imports all of the operator's runtime before it
    checks the credentials."""
    cfg = tmp_path / "config"
    cfg.write_text("current-context: nope\n")
    argv = ["ondeck", "operator", "--kubeconfig", str(cfg)]
    code = f"import sys; sys.argv = {argv!r}; from ondeck_operator.cli import main; main()"
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()]
    assert "kopf" in imported
    assert "ondeck_operator.runtime.handlers" in imported
    # The trace lists failed attempts too (kopf tries `kubernetes.client`); a package that
    # really loaded has its own line. numpy and httpx belong to `ondeck predict` (~9 MiB).
    assert not {"kubernetes", "numpy", "httpx"} & set(imported)
    assert "CredentialsError: the kubeconfig has no context 'nope'" in run.stderr
