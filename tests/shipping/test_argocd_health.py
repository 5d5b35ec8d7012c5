"""The Argo CD health check (`charts/ondeck/argocd/health.lua`) on its fixtures.

Every case of `health_test.yaml` (Argo CD's own fixture layout) runs twice: in Lua 5.1 via
lupa, the dialect of the gopher-lua interpreter Argo CD embeds, and in the Debian `lua5.4`
binary as a separate process. A property test feeds it arbitrary condition sets and checks
it always answers one of Argo CD's three states with a message, never an error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "charts" / "ondeck" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
CASES: list[dict[str, Any]] = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def _case_id(case: dict[str, Any]) -> str:
    return Path(case["inputPath"]).stem


def _fixture(case: dict[str, Any]) -> dict[str, Any]:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert isinstance(obj, dict)
    return obj


def _lua51_health(obj: dict[str, Any]) -> tuple[str, str]:
    from lupa import lua51

    runtime = lua51.LuaRuntime()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    hs = runtime.execute(HEALTH_LUA.read_text())
    return str(hs["status"]), str(hs["message"])


def _lua_char(c: str) -> str:
    if c.isascii() and c.isprintable() and c not in '"\\':
        return c
    return "".join(f"\\{b:03d}" for b in c.encode())


def _lua_literal(value: Any) -> str:
    """`value` as Lua source: the binary gets the object the way Argo CD builds it."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Decimal byte escapes mean the same in Lua 5.1 and 5.4.
        return '"' + "".join(_lua_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{_lua_literal(str(k))}] = {_lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def _lua54_health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.4")
    if lua is None:
        pytest.skip("needs lua5.4: apt-get install lua5.4 (bash scripts/setup.sh --dev)")
    harness = (
        f"obj = {_lua_literal(obj)}\n"
        f"local hs = assert(loadfile({_lua_literal(str(HEALTH_LUA))}))()\n"
        'io.write(hs.status, "\\n", hs.message)\n'
    )
    done = subprocess.run(
        [lua, "-"], input=harness, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    status, message = done.stdout.split("\n", 1)
    return status, message


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fixture_lua51(case: dict[str, Any]) -> None:
    expected = (case["healthStatus"]["status"], case["healthStatus"]["message"])
    assert _lua51_health(_fixture(case)) == expected


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fixture_lua54_binary(case: dict[str, Any]) -> None:
    expected = (case["healthStatus"]["status"], case["healthStatus"]["message"])
    assert _lua54_health(_fixture(case)) == expected


def test_fixtures_cover_every_state_and_every_file() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}
    listed = {Path(c["inputPath"]).name for c in CASES}
    on_disk = {p.name for p in (ARGOCD / "testdata").glob("*.yaml")}
    assert listed == on_disk


def test_non_ascii_message_survives_both_interpreters() -> None:
    obj = _fixture(CASES[7])
    obj["status"]["conditions"][-1]["message"] = "Modèle prêt — 2/2 réplicas"
    assert _lua51_health(obj) == ("Healthy", "Modèle prêt — 2/2 réplicas")
    assert _lua54_health(obj) == ("Healthy", "Modèle prêt — 2/2 réplicas")


_condition = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Ready", "ArtifactReady", "Available", "Other"]),
        "status": st.sampled_from(["True", "False", "Unknown"]),
    },
    optional={
        "reason": st.sampled_from(["Converting", "ConversionFailed", "Deploying", "Ready", ""]),
        "message": st.text(max_size=20),
        "observedGeneration": st.integers(min_value=0, max_value=5),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    generation=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
    status=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "observedGeneration": st.integers(min_value=0, max_value=5),
                "phase": st.sampled_from(["Pending", "Converting", "Deploying", "Ready", "Failed"]),
                "conditions": st.lists(_condition, max_size=4, unique_by=lambda c: c["type"]),
            },
        ),
    ),
)
def test_any_status_gives_a_state_and_a_message(
    generation: int | None, status: dict[str, Any] | None
) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "m"}}
    if generation is not None:
        obj["metadata"]["generation"] = generation
    if status is not None:
        obj["status"] = status
    state, message = _lua51_health(obj)
    assert state in {"Healthy", "Progressing", "Degraded"}
    assert isinstance(message, str)
    if state == "Healthy":
        ready = [c for c in (status or {}).get("conditions", []) if c["type"] == "Ready"]
        assert ready
        assert ready[-1]["status"] == "True"


# ------------------------------------------------------------ against the operator's status


def test_failure_reasons_are_the_operators() -> None:
    from ondeck_operator.reconcile.status import FAILURE_REASONS

    table = re.search(r"local failureReasons = \{(.*?)\n\}", HEALTH_LUA.read_text(), re.S)
    assert table
    assert set(re.findall(r"^\s+(\w+) = true,", table.group(1), re.M)) == {
        r.value for r in FAILURE_REASONS
    }


def _scenarios() -> dict[str, tuple[Any, str]]:
    """Facts the reconciler can observe → the health Argo CD must show."""
    from ondeck_operator.reconcile.status import DeploymentFacts, Facts, JobState

    def deployment(key: str, *, ready: int, rolled_out: bool, deadline: bool = False) -> Any:
        return DeploymentFacts(
            serving_key=key,
            desired=2,
            replicas=2,
            ready_replicas=ready,
            available_replicas=ready,
            rolled_out=rolled_out,
            available=ready >= 1,
            deadline_exceeded=deadline,
        )

    def facts(**observed: Any) -> Facts:
        return Facts(wanted_key="new", job_name="iris-convert-new", **observed)

    return {
        "converting": (
            facts(serving_key=None, wanted_built=False, job=JobState.RUNNING),
            "Progressing",
        ),
        "conversion-failed-nothing-serving": (
            facts(
                serving_key=None,
                wanted_built=False,
                job=JobState.FAILED,
                job_message="ConversionError: unsupported operator Foo",
            ),
            "Degraded",
        ),
        "validation-failed-old-serving": (
            facts(
                serving_key="old",
                wanted_built=False,
                job=JobState.FAILED,
                job_message="ValidationFailed: mean cosine 0.96 is below 0.99",
                deployment=deployment("old", ready=2, rolled_out=True),
            ),
            "Degraded",
        ),
        "converting-new-old-serving": (
            facts(
                serving_key="old",
                wanted_built=False,
                job=JobState.RUNNING,
                deployment=deployment("old", ready=2, rolled_out=True),
            ),
            "Progressing",
        ),
        "rolling-out": (
            facts(
                serving_key="new",
                wanted_built=True,
                job=JobState.SUCCEEDED,
                deployment=deployment("new", ready=1, rolled_out=False),
            ),
            "Progressing",
        ),
        "rollout-stalled": (
            facts(
                serving_key="new",
                wanted_built=True,
                job=JobState.SUCCEEDED,
                deployment=deployment("new", ready=0, rolled_out=False, deadline=True),
            ),
            "Degraded",
        ),
        "apply-failed": (
            facts(
                serving_key=None,
                wanted_built=False,
                job=JobState.ABSENT,
                apply_error="jobs.batch is forbidden: exceeded quota",
            ),
            "Degraded",
        ),
        "ready": (
            facts(
                serving_key="new",
                wanted_built=True,
                job=JobState.SUCCEEDED,
                deployment=deployment("new", ready=2, rolled_out=True),
            ),
            "Healthy",
        ),
    }


SCENARIOS = _scenarios()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_health_of_every_status_the_operator_writes(scenario: str) -> None:
    """The operator's own compute_status (pure) makes the status; health.lua reads it."""
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.reconcile.status import compute_status

    facts, expected = SCENARIOS[scenario]
    manifest = _fixture(CASES[0])
    manifest["metadata"]["generation"] = 4
    md = ModelDeployment.from_manifest(manifest)
    status = compute_status(md, facts, now="2026-11-22T07:00:00Z")
    obj = {**manifest, "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert _lua51_health(obj) == (expected, ready["message"])
    # The user edits the spec: until the operator catches up, the old status is not trusted.
    obj["metadata"]["generation"] = 5
    assert _lua51_health(obj) == (
        "Progressing",
        "Waiting for the ondeck operator to observe generation 5",
    )
