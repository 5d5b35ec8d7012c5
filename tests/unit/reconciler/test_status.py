"""status.py: conditions, phase, the merge patch and the Events, from facts."""

from __future__ import annotations

import pytest

from ondeck_operator.api.constants import Reason
from ondeck_operator.reconcile.status import (
    DeploymentFacts,
    Facts,
    JobState,
    compute_status,
    failure_reason,
    parse_summary,
    status_patch,
    transitions,
)

from .builders import LATER, NOW, md, summary


def facts(**overrides: object) -> Facts:
    base: dict[str, object] = {
        "wanted_key": "k2",
        "serving_key": None,
        "wanted_built": False,
        "job": JobState.RUNNING,
        "job_name": "iris-convert-k2",
        "url": "http://iris.ml.svc.cluster.local/v2/models/iris",
        "selector": "s",
    }
    return Facts(**{**base, **overrides})  # type: ignore[arg-type]


def available(key: str, *, ready: int = 2) -> DeploymentFacts:
    return DeploymentFacts(
        serving_key=key,
        desired=2,
        replicas=2,
        ready_replicas=ready,
        available_replicas=ready,
        rolled_out=ready == 2,
        available=ready > 0,
        deadline_exceeded=False,
    )


def test_last_transition_time_changes_only_with_the_status() -> None:
    m = md()
    first = compute_status(m, facts(), now=NOW)
    # Converting -> Deploying: Ready stays False (reason changes), its time is kept.
    m = m.model_copy(update={"status": first})
    second = compute_status(m, facts(wanted_built=True, job=JobState.SUCCEEDED), now=LATER)
    before = {c.type: c for c in first.conditions or []}
    after = {c.type: c for c in second.conditions or []}
    assert after["Ready"].reason == "Deploying"
    assert after["Ready"].last_transition_time == before["Ready"].last_transition_time == NOW
    assert after["ArtifactReady"].status.value == "True"
    assert after["ArtifactReady"].last_transition_time == LATER


def test_ready_needs_the_wanted_artifact_rolled_out() -> None:
    m = md()
    old = compute_status(
        m, facts(serving_key="k1", wanted_built=False, deployment=available("k1")), now=NOW
    )
    ready = {c.type: c for c in old.conditions or []}["Ready"]
    assert ready.status.value == "False"
    assert old.phase is not None
    assert old.phase.value == "Converting"
    done = compute_status(
        m,
        facts(serving_key="k2", wanted_built=True, job=JobState.ABSENT, deployment=available("k2")),
        now=NOW,
    )
    ready = {c.type: c for c in done.conditions or []}["Ready"]
    assert (ready.status.value, ready.reason) == ("True", "Ready")
    assert done.phase is not None
    assert done.phase.value == "Ready"
    assert (done.replicas, done.ready_replicas, done.url) == (2, 2, facts().url)


def test_hpa_minimum_counts_for_available() -> None:
    m = md()
    one = DeploymentFacts("k2", 1, 1, 1, 1, True, True, False)
    status = compute_status(
        m, facts(serving_key="k2", wanted_built=True, deployment=one, min_available=2), now=NOW
    )
    cond = {c.type: c for c in status.conditions or []}["Available"]
    assert (cond.status.value, cond.message) == ("False", "1/2 replicas available")


@pytest.mark.parametrize(
    ("message", "timed_out", "reason"),
    [
        ("ChecksumMismatch: sha256 differs", False, Reason.CHECKSUM_MISMATCH),
        ("ValidationFailed: cosine 0.9", False, Reason.VALIDATION_FAILED),
        ("FetchFailed: 404 from s3://b/k", False, Reason.SOURCE_UNAVAILABLE),
        ("ConversionFailed: exporter refused", False, Reason.CONVERSION_FAILED),
        ("UnsafeModel: a pickle", False, Reason.UNSAFE_MODEL),
        ("ConverterMissing: torch", False, Reason.CONVERTER_MISSING),
        ("NewerConverterError: x", False, Reason.CONVERSION_FAILED),
        ("Traceback (most recent call last):", False, Reason.CONVERSION_FAILED),
        (None, False, Reason.CONVERSION_FAILED),
        (None, True, Reason.CONVERSION_TIMED_OUT),
    ],
)
def test_failure_reasons(message: str | None, timed_out: bool, reason: Reason) -> None:
    assert failure_reason(message, timed_out=timed_out) == reason


def test_summary_parsing_is_lenient() -> None:
    report = parse_summary(summary("k", "a" * 64), key="k")
    assert (report.key, report.digest, report.size_bytes) == ("k", "a" * 64, 10)
    assert parse_summary("not json", key="k").key == "k"
    assert parse_summary('{"digest": "d", "inputs": "bad"}', key="k").digest == "d"


def test_the_patch_is_none_when_nothing_changed_and_removes_keys() -> None:
    m = md()
    status = compute_status(m, facts(serving_key="k1", deployment=available("k1")), now=NOW)
    assert status_patch(status, status) is None
    gone = compute_status(m, facts(), now=NOW)
    patch = status_patch(status, gone)
    assert patch is not None
    assert patch["status"]["url"] is None  # a merge patch removes a key only when told


def test_events_for_ready_transitions_and_failures() -> None:
    m = md()
    first = compute_status(m, facts(), now=NOW)
    assert [(e.type, e.reason) for e in transitions(None, first)] == [("Normal", "Converting")]
    failed = compute_status(
        m, facts(job=JobState.FAILED, job_message="ConversionFailed: nope"), now=NOW
    )
    assert [(e.type, e.reason, e.message) for e in transitions(first, failed)] == [
        ("Warning", "ConversionFailed", "ConversionFailed: nope")
    ]
    assert transitions(failed, failed) == []
