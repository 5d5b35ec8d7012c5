"""reconcile.plan (pure): the decisions of one reconcile, from observed children."""

from __future__ import annotations

import copy

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment, ModelDeploymentStatus
from ondeck_operator.reconcile.facts import Observed
from ondeck_operator.reconcile.kinds import DEPLOYMENT, INGRESS, JOB, POD, PVC, SERVICE, kind_of
from ondeck_operator.reconcile.plan import Plan, plan, progress_only
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.names import job_name, pvc_name

from .builders import LATER, NOW, finished_job, held, md, observed_after, replace, summary

CONFIG = OperatorConfig()


def kinds(p: Plan) -> list[str]:
    return [o["kind"] for o in p.applies]


def with_status(
    m: ModelDeployment, status: ModelDeploymentStatus, **changes: object
) -> ModelDeployment:
    return m.model_copy(update={"status": status, **changes})


def converge(
    m: ModelDeployment, *, rounds: int = 6
) -> tuple[ModelDeployment, Observed, list[Plan]]:
    """Run plan → apply → plan ... with the conversion succeeding, until nothing is written."""
    observed = Observed()
    plans = []
    for _ in range(rounds):
        p = plan(m, observed, CONFIG, now=NOW)
        plans.append(p)
        observed = observed_after(p, observed)
        job = observed.named(JOB, job_name("iris", artifact_key(m.spec)))
        if job is not None and "status" not in job:
            done, pod = finished_job(job, succeeded=True, message=summary(artifact_key(m.spec)))
            observed = replace(replace(observed, JOB, done), POD, pod)
        m = with_status(m, p.status)
        if p.writes == 0:
            break
    return m, observed, plans


def test_first_reconcile_creates_claim_job_and_service_and_says_not_ready() -> None:
    m = md()
    p = plan(m, Observed(), CONFIG, now=NOW)
    assert kinds(p) == ["PersistentVolumeClaim", "Job", "Service"]
    assert p.deletes == []
    status = p.status
    assert status.phase is not None
    assert status.phase.value == "Converting"
    assert status.observed_generation == 1
    ready = {c.type: c for c in status.conditions or []}["Ready"]
    assert (ready.status.value, ready.reason, ready.observed_generation) == (
        "False",
        "Converting",
        1,
    )
    assert status.url is None
    # Progress is in the status (and in the Job's own Events): Events are for failures
    # and for Ready, two API writes fewer per ModelDeployment.
    assert p.events == []


def test_succeeded_job_points_the_deployment_at_the_digest() -> None:
    m = md()
    first = plan(m, Observed(), CONFIG, now=NOW)
    observed = observed_after(first, Observed())
    job = observed.named(JOB, job_name("iris", artifact_key(m.spec)))
    assert job is not None
    done, pod = finished_job(job, succeeded=True, message=summary(artifact_key(m.spec), "e" * 64))
    observed = replace(replace(observed, JOB, done), POD, pod)
    second = plan(with_status(m, first.status), observed, CONFIG, now=LATER)
    (deployment,) = [o for o in second.applies if kind_of(o) == DEPLOYMENT]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["serve", "--model", f"/artifacts/{'e' * 64}"]
    assert second.status.phase is not None
    assert second.status.phase.value == "Deploying"
    assert second.status.artifact is not None
    assert second.status.artifact.digest == "e" * 64
    assert second.events == []  # Deploying is progress, not an Event
    # The Job is never re-created or patched once it exists.
    assert all(kind_of(o) != JOB for o in second.applies)


def test_a_converged_model_deployment_makes_no_write() -> None:
    spec = {
        "model": {"uri": "s3://models/iris.onnx"},
        "server": {"replicas": 2, "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}},
        "ingress": {"host": "iris.example.com"},
    }
    m, observed, plans = converge(md(spec))
    assert plans[-1].writes == 0, [p.writes for p in plans]
    # One Event on the way: Ready turning True.
    assert [(e.type, e.reason) for p in plans for e in p.events] == [("Normal", "Ready")]
    assert plans[-1].events == []
    ready = {c.type: c for c in plans[-1].status.conditions or []}["Ready"]
    assert ready.status.value == "True"
    # The same again later: the idle resync still writes nothing, timestamps are kept.
    again = plan(m, observed, CONFIG, now=LATER)
    assert again.writes == 0
    assert again.status_patch is None


def test_a_child_edited_by_hand_is_re_applied() -> None:
    m, observed, _ = converge(md())
    deployment = copy.deepcopy(observed.named(DEPLOYMENT, "iris"))
    assert deployment is not None
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    p = plan(m, replace(observed, DEPLOYMENT, deployment), CONFIG, now=LATER)
    assert kinds(p) == ["Deployment"]


def test_a_deleted_deployment_is_restored_with_the_artifact_it_served() -> None:
    m, observed, _ = converge(md())
    key = artifact_key(m.spec)
    gone = Observed(
        {k: tuple(o for o in observed.of(k) if k != DEPLOYMENT) for k in observed.children}
    )
    p = plan(m, gone, CONFIG, now=LATER)
    assert kinds(p) == ["Deployment"]
    assert p.applies[0]["metadata"]["labels"]["ondeck.io/artifact-key"] == key
    assert all(kind_of(o) != JOB for o in p.applies)


def test_a_failed_new_conversion_keeps_the_old_artifact_serving() -> None:
    m, observed, _ = converge(md())
    old_key = artifact_key(m.spec)
    manifest = m.to_manifest()
    manifest["spec"]["optimize"]["quantize"] = "int8"
    manifest["metadata"]["generation"] = 2
    m2 = ModelDeployment.from_manifest(manifest)
    new_key = artifact_key(m2.spec)
    p = plan(m2, observed, CONFIG, now=LATER)
    assert [kind_of(o).kind for o in p.applies] == ["PersistentVolumeClaim", "Job"]
    observed = observed_after(p, observed)
    job = observed.named(JOB, job_name("iris", new_key))
    assert job is not None
    failed, pod = finished_job(job, succeeded=False, message="ValidationFailed: cosine 0.93 < 0.99")
    observed = replace(replace(observed, JOB, failed), POD, pod)
    p2 = plan(with_status(m2, p.status), observed, CONFIG, now=LATER)
    assert p2.applies == []  # the Deployment keeps the old artifact; the Job is not retried
    conditions = {c.type: c for c in p2.status.conditions or []}
    assert conditions["ArtifactReady"].reason == "ValidationFailed"
    assert conditions["Ready"].message == (
        f"ValidationFailed: cosine 0.93 < 0.99; artifact {old_key} is still serving"
    )
    assert p2.status.phase is not None
    assert p2.status.phase.value == "Ready"
    assert p2.status.artifact is not None
    assert p2.status.artifact.key == old_key
    assert [(e.type, e.reason) for e in p2.events] == [("Warning", "ValidationFailed")]


def test_children_no_longer_wanted_are_deleted_only_when_controlled() -> None:
    m, observed, _ = converge(md({"model": {"uri": "s3://m/x.onnx"}, "ingress": {}}))
    stranger = held(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "other", "labels": {}},
        }
    )
    observed = replace(observed, INGRESS, stranger)
    stale_pvc = held(
        {
            **observed.of(PVC)[0],
            "metadata": {**observed.of(PVC)[0]["metadata"], "name": pvc_name("iris", "0" * 16)},
        }
    )
    observed = replace(observed, PVC, stale_pvc)
    no_ingress = md(
        {"model": {"uri": "s3://m/x.onnx"}},
        generation=2,
        status=m.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if m.status
        else None,
    )
    p = plan(no_ingress, observed, CONFIG, now=LATER)
    deleted = sorted((k.kind, name) for k, name, _ in p.deletes)
    assert deleted == [("Ingress", "iris"), ("PersistentVolumeClaim", pvc_name("iris", "0" * 16))]
    assert SERVICE not in {k for k, _, _ in p.deletes}


def test_an_apply_error_is_reported_and_nothing_is_written() -> None:
    p = plan(md(), Observed(), CONFIG, now=NOW, apply_error="HTTP 403: jobs.batch is forbidden")
    assert p.applies == []
    assert p.deletes == []
    ready = {c.type: c for c in p.status.conditions or []}["Ready"]
    assert (ready.reason, ready.message) == ("ApplyFailed", "HTTP 403: jobs.batch is forbidden")


def test_a_spec_the_operator_cannot_render_is_failed_with_every_problem() -> None:
    from ondeck_operator.api.spec import SpecError
    from ondeck_operator.reconcile.plan import invalid_plan

    body = {
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 3},
        "spec": {"model": {"uri": "s3://m/x.onnx"}, "server": {"replicas": -1}},
        "status": {"phase": "Ready", "url": "http://iris.ml.svc.cluster.local/v2/models/iris"},
    }
    try:
        ModelDeployment.from_manifest(
            {"apiVersion": "ondeck.io/v1alpha1", "kind": "ModelDeployment", **body}
        )
    except SpecError as error:
        p = invalid_plan(body, error, now=NOW)
    else:
        raise AssertionError("the spec should be invalid")
    assert p.applies == []
    assert p.deletes == []
    assert p.status.phase is not None
    assert p.status.phase.value == "Failed"
    (ready,) = p.status.conditions or []
    assert (ready.reason, ready.observed_generation) == ("InvalidSpec", 3)
    assert ready.message.startswith(
        "spec.server.replicas: Input should be greater than or equal to 0"
    )
    # what still serves is not forgotten
    assert p.status.url == "http://iris.ml.svc.cluster.local/v2/models/iris"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "InvalidSpec")]


def test_pods_are_needed_only_until_the_status_holds_the_result() -> None:
    from ondeck_operator.reconcile.facts import pods_needed

    m = md()
    first = plan(m, Observed(), CONFIG, now=NOW)
    observed = observed_after(first, Observed())
    job = observed.named(JOB, job_name("iris", artifact_key(m.spec)))
    assert job is not None
    assert pods_needed(with_status(m, first.status), observed) is None  # still running
    failed, pod = finished_job(job, succeeded=False, message="ConversionFailed: no")
    observed = replace(observed, JOB, failed)
    m = with_status(m, first.status)
    assert pods_needed(m, observed) == job["metadata"]["name"]
    with_pod = plan(m, replace(observed, POD, pod), CONFIG, now=LATER)
    m = with_status(m, with_pod.status)
    assert pods_needed(m, observed) is None
    # Without the pod, the next plan keeps the known message: the status does not change.
    again = plan(m, observed, CONFIG, now=LATER)
    assert again.status_patch is None


def test_only_a_rollouts_progress_counts_as_progress_only() -> None:
    _, _, plans = converge(md())
    ready = plans[-1].status
    fewer = ready.model_copy(update={"ready_replicas": 0})
    assert progress_only(ready, fewer)  # counts only: may wait for the next change
    assert not progress_only(None, ready)  # the first status is never held back
    first = plans[0].status
    assert not progress_only(first, ready)  # phase and conditions changed
