"""Facts about one ModelDeployment from the children the operator observed: the state of
its conversion Job (and the termination message its pod left), of its server Deployment,
and whether pod details are needed at all. Pure: observed objects in, `Facts` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ondeck_operator.api.constants import (
    CONVERT_CONTAINER,
    LABEL_ARTIFACT_KEY,
    ConditionStatus,
    ConditionType,
    Reason,
)
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.rollout import RolloutPhase
from ondeck_operator.api.spec import (
    ModelDeployment,
    ModelDeploymentStatus,
)
from ondeck_operator.reconcile.kinds import (
    DEPLOYMENT,
    HPA,
    HTTPROUTE,
    INGRESS,
    JOB,
    PDB,
    POD,
    PVC,
    SERVICE,
    Kind,
)
from ondeck_operator.reconcile.status import (
    FAILURE_REASONS,
    DeploymentFacts,
    Facts,
    JobState,
    parse_summary,
)
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import model_url, selector_string
from ondeck_operator.render.names import job_name, server_name

Obj = dict[str, Any]

#: The kinds the operator creates, in the order they are applied.
CHILD_KINDS: tuple[Kind, ...] = (PVC, JOB, DEPLOYMENT, SERVICE, INGRESS, HPA, PDB, HTTPROUTE)
#: The kinds the operator watches (pods are listed on demand, see `pods_needed`). An
#: HTTPRoute (spec.gateway) is not watched: its CRD may be absent from the cluster, so it
#: is applied on every reconcile that wants one (an apply that changes nothing is no
#: new version) instead.
WATCHED_KINDS: tuple[Kind, ...] = (PVC, JOB, DEPLOYMENT, SERVICE, INGRESS, HPA, PDB)
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


@dataclass(frozen=True)
class Observed:
    """The children of one ModelDeployment as the watches last saw them, by kind."""

    children: Mapping[Kind, Sequence[Obj]] = field(default_factory=dict)

    def of(self, kind: Kind) -> Sequence[Obj]:
        return self.children.get(kind, ())

    def named(self, kind: Kind, name: str) -> Obj | None:
        return next((o for o in self.of(kind) if o["metadata"]["name"] == name), None)


def controlled_by(obj: Obj, uid: str | None) -> bool:
    if uid is None:
        return True
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _condition_true(obj: Obj, ctype: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def _job_state(job: Obj | None) -> tuple[JobState, bool]:
    """The Job's state and whether it failed by its deadline."""
    if job is None:
        return JobState.ABSENT, False
    if _condition_true(job, "Complete") or _condition_true(job, "SuccessCriteriaMet"):
        return JobState.SUCCEEDED, False
    failed = _condition_true(job, "Failed") or _condition_true(job, "FailureTarget")
    if failed:
        return JobState.FAILED, failed.get("reason") == "DeadlineExceeded"
    return JobState.RUNNING, False


def _termination_message(pods: Sequence[Obj], job: str, *, succeeded: bool) -> str | None:
    """The convert container's termination message from the newest finished pod of `job`."""
    wanted_phase = "Succeeded" if succeeded else "Failed"
    found: list[tuple[str, str]] = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if not any(labels.get(k) == job for k in _JOB_NAME_LABELS):
            continue
        status = pod.get("status") or {}
        if status.get("phase") != wanted_phase:
            continue
        for container in status.get("containerStatuses") or []:
            if container.get("name") != CONVERT_CONTAINER and len(status["containerStatuses"]) > 1:
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            message = terminated.get("message")
            if message:
                found.append((terminated.get("finishedAt") or "", str(message).strip()))
    return max(found)[1] if found else None


def deployment_facts(deployment: Obj) -> DeploymentFacts:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    replicas = int(status.get("replicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    generation = deployment["metadata"].get("generation", 0)
    rolled_out = (
        status.get("observedGeneration", 0) >= generation
        and updated >= desired
        and replicas == updated
        and available >= updated
    )
    progressing: Obj = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    return DeploymentFacts(
        serving_key=(deployment["metadata"].get("labels") or {}).get(LABEL_ARTIFACT_KEY),
        desired=desired,
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)),
        available_replicas=available,
        rolled_out=rolled_out,
        available=_condition_true(deployment, "Available") is not None,
        deadline_exceeded=progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded",
    )


def _known_failure(md: ModelDeployment) -> str | None:
    """The conversion failure the status already reports for this generation, if any."""
    status = md.status or ModelDeploymentStatus()
    for cond in status.conditions or []:
        if (
            cond.type == ConditionType.ARTIFACT_READY.value
            and cond.status == ConditionStatus.FALSE
            and cond.reason in FAILURE_REASONS
            and cond.reason != Reason.APPLY_FAILED
            and cond.observed_generation == md.metadata.generation
        ):
            return cond.message
    return None


def pods_needed(md: ModelDeployment, observed: Observed) -> str | None:
    """The conversion Job whose pods the next plan must see (their termination message
    holds the result), or None. Pods are not watched: they are listed once, when the
    wanted artifact's Job has finished and the status does not hold its result yet."""
    wanted = artifact_key(md.spec)
    job = job_name(md.metadata.name, wanted)
    job_obj = observed.named(JOB, job)
    if job_obj is None or not controlled_by(job_obj, md.metadata.uid):
        return None
    state, _ = _job_state(job_obj)
    status = md.status or ModelDeploymentStatus()
    if state == JobState.SUCCEEDED:
        known = status.artifact is not None and status.artifact.key == wanted
        if known and status.artifact and status.artifact.digest:
            return None
        rollout = status.rollout
        candidate = rollout.candidate if rollout else None
        # While a rollout holds the candidate back, the status keeps the stable artifact's
        # report and the candidate's digest is recorded apart. Once it is promoted, its
        # own report is read like any finished Job's (else status.artifact would be empty).
        on_trial = rollout is not None and rollout.phase in (
            RolloutPhase.SHADOW,
            RolloutPhase.CANARY,
        )
        held = on_trial and candidate and candidate.key == wanted and candidate.digest
        return None if held else job
    if state == JobState.FAILED:
        return None if _known_failure(md) is not None else job
    return None


def extract_facts(md: ModelDeployment, observed: Observed, config: OperatorConfig) -> Facts:
    """What the status and the render state depend on, from the observed children."""
    uid = md.metadata.uid
    name = md.metadata.name
    wanted = artifact_key(md.spec)
    deployment = observed.named(DEPLOYMENT, server_name(name))
    if deployment is not None and not controlled_by(deployment, uid):
        deployment = None
    dep_facts = deployment_facts(deployment) if deployment is not None else None
    status = md.status or ModelDeploymentStatus()
    serving = dep_facts.serving_key if dep_facts else None
    if serving is None and status.artifact is not None:
        serving = status.artifact.key  # the Deployment was deleted: restore what it served
    job = job_name(name, wanted)
    job_obj = observed.named(JOB, job)
    if job_obj is not None and not controlled_by(job_obj, uid):
        job_obj = None
    state, timed_out = _job_state(job_obj)
    pods = observed.of(POD)
    message = None
    summary = None
    if state == JobState.SUCCEEDED:
        found = _termination_message(pods, job, succeeded=True)
        summary = parse_summary(found, key=wanted) if found is not None else None
    elif state == JobState.FAILED:
        message = _termination_message(pods, job, succeeded=False) or _known_failure(md)
        if message is None and job_obj is not None:
            failed = _condition_true(job_obj, "Failed") or _condition_true(job_obj, "FailureTarget")
            message = (failed or {}).get("message")
    # A rollout's candidate with a known digest was built (its Job succeeded and was read)
    # even once the Job is gone (its TTL): else a trial longer than the TTL would convert
    # again and start over.
    recorded = status.rollout.candidate if status.rollout else None
    trial_built = recorded is not None and recorded.key == wanted and recorded.digest is not None
    return Facts(
        wanted_key=wanted,
        serving_key=serving,
        wanted_built=serving == wanted or state == JobState.SUCCEEDED or trial_built,
        job=state,
        job_name=job,
        job_message=message,
        job_timed_out=timed_out,
        summary=summary,
        deployment=dep_facts,
        url=model_url(md, config),
        selector=selector_string(md),
        min_available=md.spec.autoscaling.min_replicas if md.spec.autoscaling else 0,
    )
