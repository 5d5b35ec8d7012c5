"""Operator benchmark against the real loopback control plane (not a test).

Starts etcd + kube-apiserver (with an audit log of ServiceAccount requests) +
kube-controller-manager, the kubelet simulator (every conversion pod succeeds at once), and
`ondeck operator` as a subprocess under the chart's RBAC, then measures:

1. apply → children: time from creating one ModelDeployment to its Job, claim and
   Service existing (p50/p99 over `--latency-count` sequential creates);
2. apply → Ready with simulated pods, for the same ModelDeployments;
3. `--count` ModelDeployments created at once (8 client threads) → time until all Ready;
4. the operator's peak RSS, and API requests per ModelDeployment (audit log: every request
   of the operator's ServiceAccount, watches and peering included; and the reconciler's
   own client by verb, from its metrics);
5. writes during idle resyncs: with everything Ready, requests of three resync passes.

Usage: .venv/bin/python bench/operator/bench_operator.py [--count 1000] [--out FILE.json]
The summary is printed as JSON; bench/operator/RESULTS.md records a run.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests"))

from controlplane import start_control_plane  # noqa: E402
from kubelet_sim import JobOutcome, KubeletSimulator  # noqa: E402
from kubernetes import client  # noqa: E402
from operator_harness import (  # noqa: E402
    GROUP,
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    PLURAL,
    VERSION,
    OperatorProcess,
    install_crds,
    install_operator_rbac,
    manifest,
    summary,
)

NAMESPACE = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Watcher:
    """Timestamps of the first sighting of objects and of Ready, from watches."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.first_seen: dict[tuple[str, str], float] = {}
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        from kubernetes import watch

        batch, core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        sources = {
            "Job": batch.list_namespaced_job,
            "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim,
            "Service": core.list_namespaced_service,
        }

        def loop_children(kind: str, lister: Any) -> None:
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    lister, NAMESPACE, timeout_seconds=5
                )
                for event in stream:
                    obj = event["object"]
                    md = (obj.metadata.labels or {}).get("ondeck.io/model-deployment")
                    if md:
                        self.first_seen.setdefault((kind, md), time.monotonic())

        def loop_mds() -> None:
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    NAMESPACE,
                    PLURAL,
                    timeout_seconds=5,
                )
                for event in stream:
                    obj = event["object"]
                    status = obj.get("status") or {}
                    for cond in status.get("conditions") or []:
                        if cond["type"] == "Ready" and cond["status"] == "True":
                            self.ready_at.setdefault(obj["metadata"]["name"], time.monotonic())

        for kind, lister in sources.items():
            self._threads.append(
                threading.Thread(target=loop_children, args=(kind, lister), daemon=True)
            )
        self._threads.append(threading.Thread(target=loop_mds, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def children_at(self, name: str) -> float | None:
        times = [
            self.first_seen.get((k, name)) for k in ("Job", "PersistentVolumeClaim", "Service")
        ]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)


def wait(what: str, probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def audit_counts(audit_log: Path, since_line: int) -> tuple[collections.Counter[str], int]:
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
    counts: collections.Counter[str] = collections.Counter()
    lines = audit_log.read_text().splitlines()
    for line in lines[since_line:]:
        event = json.loads(line)
        if (
            event.get("user", {}).get("username") != user
            or event.get("stage") != "ResponseComplete"
        ):
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        counts[f"{event['verb']} {resource}"] += 1
    return counts, len(lines)


def metric_sum(samples: dict[str, float], prefix: str, **labels: str) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k.startswith(prefix) and all(f'{a}="{b}"' in k for a, b in labels.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-count", type=int, default=50)
    parser.add_argument("--resync-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ondeck-opbench-"))
    results: dict[str, Any] = {"count": args.count, "latencyCount": args.latency_count}

    plane = start_control_plane(work / "plane", audit=True)
    api = plane.api_client()
    kubelet = KubeletSimulator(plane.api_client())
    operator: OperatorProcess | None = None
    watcher = Watcher(plane.api_client())
    try:
        kubelet.start()

        def succeed(pod: dict[str, Any]) -> JobOutcome:
            key = pod["metadata"]["labels"]["ondeck.io/artifact-key"]
            return JobOutcome.success(summary(key))

        kubelet.set_job_rule(succeed)
        install_crds(api)
        kubeconfig = install_operator_rbac(plane, api, work)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        wait("default ServiceAccount", lambda: _exists(core, NAMESPACE), 30)
        custom = client.CustomObjectsApi(api)
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            namespaces=[NAMESPACE],
            workdir=work,
            name="bench-operator",
            extra=["--resync-seconds", str(args.resync_seconds)],
            config={"jobBackoffLimit": 0},
            log_level="info",
        )
        operator.start()
        assert operator.popen is not None
        pid = operator.popen.pid
        watcher.start()
        time.sleep(1)

        # 1 + 2: sequential creates, latency to children and to Ready.
        created: dict[str, float] = {}
        for i in range(args.latency_count):
            name = f"lat-{i:04d}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, manifest(name)
            )
            wait(f"{name} Ready", lambda name=name: name in watcher.ready_at, 60)
        children = [watcher.children_at(n) - t for n, t in created.items()]  # type: ignore[operator]
        ready = [watcher.ready_at[n] - t for n, t in created.items()]
        results["applyToChildren"] = {
            "p50": percentile(children, 50),
            "p99": percentile(children, 99),
            "mean": statistics.mean(children),
        }
        results["applyToReady"] = {
            "p50": percentile(ready, 50),
            "p99": percentile(ready, 99),
            "mean": statistics.mean(ready),
        }
        print(json.dumps(results), flush=True)

        # 3 + 4: many at once.
        assert plane.audit_log is not None
        time.sleep(2)  # let the audit batch flush
        _, mark = audit_counts(plane.audit_log, 0)
        before = operator.metrics()
        names = [f"md-{i:05d}" for i in range(args.count)]
        start = time.monotonic()

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, manifest(name, server={"replicas": 1})
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        applied = time.monotonic() - start
        peak = 0
        deadline = start + 900
        timeline = []
        last_sample = 0.0
        while time.monotonic() < deadline and not all(n in watcher.ready_at for n in names):
            peak = max(peak, rss_kib(pid)["VmRSS"])
            now = time.monotonic()
            if now - last_sample >= 5:
                last_sample = now
                samples = operator.metrics()
                timeline.append(
                    {
                        "t": round(now - start, 1),
                        "children": sum(1 for n in names if watcher.children_at(n)),
                        "ready": sum(1 for n in names if n in watcher.ready_at),
                        "queue": metric_sum(samples, "ondeck_operator_queue_depth"),
                        "converting": metric_sum(
                            samples, "ondeck_operator_modeldeployments", phase="Converting"
                        ),
                        "deploying": metric_sum(
                            samples, "ondeck_operator_modeldeployments", phase="Deploying"
                        ),
                    }
                )
                print(json.dumps(timeline[-1]), flush=True)
            time.sleep(0.5)
        done = [n for n in names if n in watcher.ready_at]
        converge = max(watcher.ready_at[n] for n in done) - start if done else float("nan")
        results["bulk"] = {
            "created": args.count,
            "ready": len(done),
            "createSeconds": applied,
            "convergeSeconds": converge,
            "rssPeakMiB": round(max(peak, rss_kib(pid)["VmHWM"]) / 1024, 1),
            "rssNowMiB": round(rss_kib(pid)["VmRSS"] / 1024, 1),
            "timeline": timeline,
        }
        time.sleep(3)
        counts, mark2 = audit_counts(plane.audit_log, mark)
        after = operator.metrics()
        total = sum(counts.values())
        results["apiRequestsPerModelDeployment"] = {
            "auditTotal": round(total / args.count, 2),
            "auditByVerb": {k: round(v / args.count, 2) for k, v in counts.most_common(12)},
            "reconcilerByVerb": {
                verb: round(
                    (
                        metric_sum(after, "ondeck_operator_api_requests_total", verb=verb)
                        - metric_sum(before, "ondeck_operator_api_requests_total", verb=verb)
                    )
                    / args.count,
                    2,
                )
                for verb in ("apply", "create", "delete", "patch", "get")
            },
            "reconciles": round(
                (
                    metric_sum(after, "ondeck_operator_reconciles_total", result="ok")
                    - metric_sum(before, "ondeck_operator_reconciles_total", result="ok")
                )
                / args.count,
                2,
            ),
        }
        print(json.dumps(results), flush=True)

        # 5: idle resyncs.
        writes_before = metric_sum(after, "ondeck_operator_writes_total")
        reconciles_before = metric_sum(after, "ondeck_operator_reconciles_total", result="ok")
        time.sleep(args.resync_seconds * 3.2)
        idle = operator.metrics()
        time.sleep(2)
        idle_counts, _ = audit_counts(plane.audit_log, mark2)
        writes = {
            k: v for k, v in idle_counts.items() if not k.startswith(("get", "list", "watch"))
        }
        results["idleResync"] = {
            "seconds": args.resync_seconds * 3.2,
            "reconciles": metric_sum(idle, "ondeck_operator_reconciles_total", result="ok")
            - reconciles_before,
            "reconcilerWrites": metric_sum(idle, "ondeck_operator_writes_total") - writes_before,
            "auditWritesExceptPeering": {
                k: v for k, v in writes.items() if "kopfpeerings" not in k
            },
        }
        results["simulatorErrors"] = kubelet.errors[:5]
    finally:
        watcher.stop()
        if operator is not None:
            operator.stop()
        kubelet.stop()
        api.close()
        plane.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _exists(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except client.ApiException:
        return False
    return True


if __name__ == "__main__":
    main()
