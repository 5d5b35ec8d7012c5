"""`ondeck operator` settings: bad input exits 2 with one line; peering; the RBAC rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ondeck_operator.cli import _register, app
from ondeck_operator.reconcile.facts import CHILD_KINDS, WATCHED_KINDS
from ondeck_operator.reconcile.kinds import KINDS
from ondeck_operator.runtime.handlers import kopf_settings
from ondeck_operator.runtime.peering import is_active_peer
from ondeck_operator.runtime.settings import OperatorSettings, env_var

RULES = Path(__file__).resolve().parents[3] / "charts/ondeck/files/operator-rules.yaml"
NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)

_register()


BAD = [
    (
        ["--resync-seconds", "0"],
        "SettingsError: --resync-seconds: Input should be greater than or equal to 1",
    ),
    (
        ["--watch-server-timeout", "600"],
        "SettingsError: watch client timeout must be longer than the server timeout (330.0 <= 600)",
    ),
    (["--workers", "0"], "SettingsError: --workers: Input should be greater than or equal to 1"),
    (
        ["--max-connections", "0"],
        "SettingsError: --max-connections: Input should be greater than or equal to 1",
    ),
    (
        ["--write-wait-seconds", "0"],
        "SettingsError: --write-wait-seconds: Input should be greater than 0",
    ),
    (
        ["--list-chunk-size", "0"],
        "SettingsError: --list-chunk-size: Input should be greater than or equal to 1",
    ),
    (
        ["--kubeconfig", "/nonexistent/kubeconfig"],
        "ConfigError: kubeconfig /nonexistent/kubeconfig does not exist",
    ),
    (
        ["--config", "/nonexistent/config.yaml"],
        "ConfigError: cannot read config /nonexistent/config.yaml: No such file or directory",
    ),
]


@pytest.mark.parametrize(("args", "line"), BAD)
def test_bad_settings_exit_2_with_one_line(args: list[str], line: str) -> None:
    result = CliRunner().invoke(app, ["operator", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [line]


def test_bad_enum_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["operator", "--log-level", "loud"])
    assert result.exit_code == 2
    assert "'loud' is not one of" in result.output


def test_every_flag_reads_an_environment_variable() -> None:
    assert env_var("--resync-seconds") == "ONDECK_RESYNC_SECONDS"
    result = CliRunner().invoke(app, ["operator"], env={"ONDECK_WORKERS": "0"})
    assert result.exit_code == 2
    assert "workers" in result.output


def test_kopf_settings_filter_children_on_the_server() -> None:
    ks = kopf_settings(OperatorSettings(), priority=7)
    assert ks.peering.priority == 7
    assert ks.watching.server_timeout == 300
    assert ks.watching.client_timeout == 330
    assert ks.posting.enabled is False
    assert ks.watching.chunk_size == 500  # initial lists in pages
    assert ks.queueing.worker_limit is None  # a bound would deadlock with indices (kopf#1243)
    selectors = {str(s): v for s, v in ks.watching.label_selectors.items()}
    assert len(selectors) == len(WATCHED_KINDS)
    assert all("app.kubernetes.io/managed-by=ondeck-operator" in v for v in selectors.values())


def peer(priority: int, seconds_ago: int, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - dt.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


@pytest.mark.parametrize(
    ("status", "active"),
    [
        ({}, True),
        ({"me": peer(5, 0)}, True),
        ({"me": peer(5, 0), "other": peer(3, 1)}, True),
        ({"me": peer(5, 0), "other": peer(9, 1)}, False),
        ({"me": peer(5, 0), "other": peer(5, 1)}, False),  # kopf pauses on a tie
        ({"me": peer(5, 0), "other": peer(9, 120)}, True),  # a dead peer does not count
        ({"other": "garbage"}, True),
    ],
)
def test_active_peer(status: dict[str, object], active: bool) -> None:
    assert is_active_peer({"status": status}, identity="me", priority=5, now=NOW) is active
    assert is_active_peer(None, identity="me", priority=5, now=NOW)


def test_rbac_rules_are_least_privilege_and_complete() -> None:
    rules = yaml.safe_load(RULES.read_text())["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule

    def allowed(group: str, resource: str) -> set[str]:
        verbs: set[str] = set()
        for rule in rules:
            if group in rule["apiGroups"] and resource in rule["resources"]:
                verbs |= set(rule["verbs"])
        return verbs

    for kind in CHILD_KINDS:
        assert {"get", "list", "watch", "create", "patch", "delete"} <= allowed(
            kind.group, kind.plural
        )
    pods = next(k for k in KINDS.values() if k.plural == "pods")
    assert allowed(pods.group, "pods") == {"get", "list"}
    assert allowed("ondeck.io", "modeldeployments") == {"get", "list", "watch"}
    assert "patch" in allowed("ondeck.io", "modeldeployments/status")
