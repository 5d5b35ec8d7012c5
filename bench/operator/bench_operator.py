"""Operator benchmark against the real loopback control plane (not a test).

Starts etcd + kube-apiserver (with an audit log of ServiceAccount requests) +
kube-controller-manager (its `--kube-api-qps/--kube-api-burst` as given: the fixture's
raised 200/400, or Kubernetes' defaults 20/30), the kubelet simulator (every conversion pod
succeeds at once), and `ondeck operator` as a subprocess under the chart's RBAC, then:

1. the API server's own create rate in the same run, 8 client threads as below: ConfigMaps
   (the cheapest object) and Services (a ClusterIP allocation each), `--floor-count` each;
2. `--count` ModelDeployments created at once (8 client threads) → time until every one has
   its children (Job, claim, Service) and until all are Ready; the operator's peak RSS; a
   timeline of queue depth and phases;
3. API requests per ModelDeployment (audit log: every request of the operator's
   ServiceAccount, by verb, with the API server's latency for each), and the operator's own
   view (reconciles, queue wait, request latency, from its metrics);
4. apply → children and apply → Ready for `--latency-count` sequential creates with the
   `--count` others present;
5. writes during idle resyncs: with everything Ready, requests of three resync passes.

`--peering-kill S` runs two peered replicas and kills the active one S seconds into the
bulk (SIGKILL): when the standby first writes, and when all are Ready.
`--rss-steps 100,1000,3000` instead creates ModelDeployments in steps (each step at once),
waits until all are Ready, and records the operator's RSS at each: bytes per object.
`--operator-src DIR` runs the operator from another source tree (e.g. a `git archive` of an
older commit), for before/after runs under the same load; `--summarize A.json B.json ...`
prints the medians of repeated runs.

Usage: .venv/bin/python bench/operator/bench_operator.py [--count 1000] [--out FILE.json]
The summary is printed as JSON; bench/operator/RESULTS.md records runs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
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

        class RawWatch(watch.Watch):
            """Events as plain dicts: no model objects (their decoding would cost this
            process, which shares the machine's CPUs with the operator, more than the
            operator's own watches)."""

            def get_return_type(self, func: Any) -> None:
                return None

        def follow(lister: Any, *args: Any, seen: Callable[[dict[str, Any]], None]) -> None:
            # One list, then watches resumed from the last resourceVersion (a fresh list
            # every few seconds would load the API server with thousands of objects).
            version: str | None = None
            while not self._stop.is_set():
                w = RawWatch()  # type: ignore[no-untyped-call]
                extra = {"resource_version": version} if version else {}
                try:
                    for event in w.stream(lister, *args, timeout_seconds=5, **extra):  # type: ignore[no-untyped-call]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            seen(event["object"])
                    version = w.resource_version
                except client.ApiException as exc:
                    if exc.status != 410:
                        raise
                    version = None

        def child_seen(kind: str) -> Callable[[dict[str, Any]], None]:
            def seen(obj: dict[str, Any]) -> None:
                md = (obj["metadata"].get("labels") or {}).get("ondeck.io/model-deployment")
                if md:
                    self.first_seen.setdefault((kind, md), time.monotonic())

            return seen

        def md_seen(obj: dict[str, Any]) -> None:
            for cond in (obj.get("status") or {}).get("conditions") or []:
                if cond["type"] == "Ready" and cond["status"] == "True":
                    self.ready_at.setdefault(obj["metadata"]["name"], time.monotonic())

        for kind, lister in sources.items():
            self._threads.append(
                threading.Thread(
                    target=follow,
                    args=(lister, NAMESPACE),
                    kwargs={"seen": child_seen(kind)},
                    daemon=True,
                )
            )
        self._threads.append(
            threading.Thread(
                target=follow,
                args=(custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL),
                kwargs={"seen": md_seen},
                daemon=True,
            )
        )
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


def audit_events(audit_log: Path, since_line: int) -> tuple[list[dict[str, Any]], int]:
    """The operator's requests in the audit log from `since_line` on: verb, resource, the
    API server's latency (received → response complete)."""
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
    out = []
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
        received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"])
        done = dt.datetime.fromisoformat(event["stageTimestamp"])
        out.append(
            {
                "what": f"{event['verb']} {resource}",
                "seconds": (done - received).total_seconds(),
                "code": (event.get("responseStatus") or {}).get("code"),
            }
        )
    return out, len(lines)


def audit_summary(events: list[dict[str, Any]], count: int) -> dict[str, Any]:
    by: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        by[e["what"]].append(e["seconds"])
    non_watch = sum(len(v) for k, v in by.items() if not k.startswith("watch"))
    return {
        "total": round(len(events) / count, 2),
        "exceptWatches": round(non_watch / count, 2),
        "byVerb": {
            k: {
                "perModelDeployment": round(len(v) / count, 2),
                "apiLatencyP50": round(percentile(v, 50), 4),
                "apiLatencyP90": round(percentile(v, 90), 4),
            }
            for k, v in sorted(by.items(), key=lambda kv: -len(kv[1]))
            if not k.startswith("watch")
        },
    }


def scrape(operator: OperatorProcess | None) -> dict[str, float]:
    """The operator's metrics, waiting up to 60 s: on a loaded 2-core machine its event
    loop can be seconds behind during a burst (the harness's own scrape gives up after 2 s)."""
    assert operator is not None
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=20) as rsp:
                body = rsp.read().decode()
            break
        except OSError:
            if attempt == 2:
                raise
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], prefix: str, **labels: str) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k.startswith(prefix) and all(f'{a}="{b}"' in k for a, b in labels.items())
    )


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float, **labels: str
) -> float | None:
    """A quantile of a Prometheus histogram's increase between two scrapes (bucket bound)."""
    buckets = []
    for k, v in after.items():
        if not k.startswith(name + "_bucket") or not all(
            f'{a}="{b}"' in k for a, b in labels.items()
        ):
            continue
        le = k.split('le="')[1].split('"')[0]
        buckets.append((float(le), v - before.get(k, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= q * total)


def create_rate(
    what: str, create: Callable[[int], None], count: int, threads: int = 8
) -> dict[str, Any]:
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))
    seconds = time.monotonic() - started
    return {
        "what": what,
        "count": count,
        "seconds": round(seconds, 2),
        "perSecond": round(count / seconds, 1),
    }


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def restart_controller_manager(plane: Any, qps: int, burst: int) -> None:
    """The fixture runs kube-controller-manager with --kube-api-qps=200 --kube-api-burst=400;
    run it again with the given values (20/30 are Kubernetes' defaults)."""
    from controlplane import _spawn

    for index, process in enumerate(plane.processes):
        if process.name != "kube-controller-manager":
            continue
        argv = [
            a
            for a in process.popen.args
            if not a.startswith(("--kube-api-qps=", "--kube-api-burst="))
        ]
        argv += [f"--kube-api-qps={qps}", f"--kube-api-burst={burst}"]
        process.stop()
        plane.processes[index] = _spawn("kube-controller-manager", argv, plane.workdir)
        return
    raise SystemExit("no kube-controller-manager in the control plane")


class Bench:
    """One control plane, the kubelet simulator, the watcher and one operator."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.plane = start_control_plane(work / "plane", audit=True)
        if (args.kcm_qps, args.kcm_burst) != (200, 400):
            restart_controller_manager(self.plane, args.kcm_qps, args.kcm_burst)
        self.api = self.plane.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.kubelet = KubeletSimulator(self.plane.api_client())
        self.watcher = Watcher(self.plane.api_client())
        self.operator: OperatorProcess | None = None

    def start(self) -> None:
        self.kubelet.start()

        def succeed(pod: dict[str, Any]) -> JobOutcome:
            key = pod["metadata"]["labels"]["ondeck.io/artifact-key"]
            return JobOutcome.success(summary(key))

        self.kubelet.set_job_rule(succeed)
        install_crds(self.api)
        kubeconfig = install_operator_rbac(self.plane, self.api, self.work)
        for namespace in (NAMESPACE, "floor"):
            self.core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            wait(f"{namespace} ServiceAccount", lambda n=namespace: _exists(self.core, n), 60)
        if self.args.operator_src:
            os.environ["PYTHONPATH"] = str(self.args.operator_src)
        extra = ["--resync-seconds", str(self.args.resync_seconds), *self.args.operator_arg]
        if self.args.peering_kill is not None:
            client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                "kopf.dev",
                "v1",
                NAMESPACE,
                "kopfpeerings",
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "KopfPeering",
                    "metadata": {"name": "ondeck"},
                },
            )
            extra += ["--peering", "ondeck", "--priority", "200"]
        self.operator = OperatorProcess(
            kubeconfig=kubeconfig,
            namespaces=[NAMESPACE],
            workdir=self.work,
            name="bench-operator",
            extra=extra,
            config={"jobBackoffLimit": 0},
            log_level="info",
        )
        self.operator.start()
        if self.args.peering_kill is not None:
            self.standby = OperatorProcess(
                kubeconfig=kubeconfig,
                namespaces=[NAMESPACE],
                workdir=self.work,
                name="bench-standby",
                extra=[*extra[:-1], "100"],
                config={"jobBackoffLimit": 0},
                log_level="info",
            )
            self.standby.start()
            peerings = client.CustomObjectsApi(self.api)

            def both_registered() -> bool:
                peering: Any = peerings.get_namespaced_custom_object(
                    "kopf.dev", "v1", NAMESPACE, "kopfpeerings", "ondeck"
                )
                return {"bench-operator", "bench-standby"} <= set(peering.get("status") or {})

            wait("both replicas in the peering", both_registered, 120)
        self.watcher.start()
        time.sleep(1)

    standby: OperatorProcess

    @property
    def pid(self) -> int:
        assert self.operator is not None
        assert self.operator.popen is not None
        return int(self.operator.popen.pid)

    def create_mds(self, names: list[str]) -> float:
        def create(name: str) -> None:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, manifest(name, server={"replicas": 1})
            )

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        return time.monotonic() - started

    def floor(self, count: int) -> list[dict[str, Any]]:
        """The API server's own create rate, now, from 8 threads like the bulk creates."""

        def config_map(i: int) -> None:
            self.core.create_namespaced_config_map(
                "floor",
                {"metadata": {"name": f"cm-{i:05d}-{self.rounds}"}, "data": {"k": "v"}},  # type: ignore[arg-type]
            )

        def service(i: int) -> None:
            self.core.create_namespaced_service(
                "floor",
                {  # type: ignore[arg-type]
                    "metadata": {"name": f"svc-{i:05d}-{self.rounds}"},
                    "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"a": "b"}},
                },
            )

        self.rounds += 1
        return [
            create_rate("ConfigMap", config_map, count),
            create_rate("Service", service, count),
        ]

    rounds = 0

    def wait_all(self, names: list[str], start: float, timeout: float) -> dict[str, Any]:
        """Until every name is Ready: peak RSS, timeline, children/Ready times."""
        assert self.operator is not None
        peak, timeline, last = 0, [], 0.0
        deadline = start + timeout
        children_done: float | None = None
        while time.monotonic() < deadline:
            peak = max(peak, rss_kib(self.pid)["VmRSS"])
            ready = sum(1 for n in names if n in self.watcher.ready_at)
            with_children = sum(1 for n in names if self.watcher.children_at(n))
            now = time.monotonic()
            if children_done is None and with_children == len(names):
                children_done = max(self.watcher.children_at(n) or 0.0 for n in names) - start
            if now - last >= 5 or ready == len(names):
                last = now
                samples = scrape(self.operator)
                timeline.append(
                    {
                        "t": round(now - start, 1),
                        "children": with_children,
                        "ready": ready,
                        "queue": metric_sum(samples, "ondeck_operator_queue_depth"),
                        "rssMiB": round(rss_kib(self.pid)["VmRSS"] / 1024, 1),
                        "load1": round(os.getloadavg()[0], 2),
                    }
                )
                print(json.dumps(timeline[-1]), flush=True)
            if ready == len(names):
                break
            time.sleep(0.5)
        done = [n for n in names if n in self.watcher.ready_at]
        return {
            "ready": len(done),
            "childrenSeconds": None if children_done is None else round(children_done, 2),
            "readySeconds": round(max(self.watcher.ready_at[n] for n in done) - start, 2)
            if len(done) == len(names)
            else None,
            "rssPeakMiB": round(max(peak, rss_kib(self.pid)["VmHWM"]) / 1024, 1),
            "rssNowMiB": round(rss_kib(self.pid)["VmRSS"] / 1024, 1),
            "timeline": timeline,
        }

    def latency(self, count: int) -> dict[str, Any]:
        created: dict[str, float] = {}
        for i in range(count):
            name = f"lat-{i:04d}"
            created[name] = time.monotonic()
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, manifest(name)
            )
            wait(f"{name} Ready", lambda name=name: name in self.watcher.ready_at, 120)
        children = [self.watcher.children_at(n) - t for n, t in created.items()]  # type: ignore[operator]
        ready = [self.watcher.ready_at[n] - t for n, t in created.items()]
        return {
            "applyToChildren": {
                "p50": round(percentile(children, 50), 4),
                "p99": round(percentile(children, 99), 4),
            },
            "applyToReady": {
                "p50": round(percentile(ready, 50), 4),
                "p99": round(percentile(ready, 99), 4),
            },
        }

    def stop(self) -> None:
        self.watcher.stop()
        if self.operator is not None:
            self.operator.stop()
        if self.args.peering_kill is not None:
            self.standby.stop()
        self.kubelet.stop()
        self.api.close()
        self.plane.stop()


def run_bulk(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    assert bench.operator is not None
    assert bench.plane.audit_log is not None
    results: dict[str, Any] = {"machineAtStart": machine()}
    results["apiServerFloorBefore"] = bench.floor(args.floor_count)
    print(json.dumps(results), flush=True)
    time.sleep(2)  # let the audit batch flush
    _, mark = audit_events(bench.plane.audit_log, 0)
    before = scrape(bench.operator)
    names = [f"md-{i:05d}" for i in range(args.count)]
    start = time.monotonic()
    load_before = os.getloadavg()
    create_seconds = bench.create_mds(names)
    bulk = bench.wait_all(names, start, args.timeout)
    bulk["createSeconds"] = round(create_seconds, 2)
    bulk["loadavgAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    bulk["loadavgAtStart"] = [round(x, 2) for x in load_before]
    results["bulk"] = bulk
    time.sleep(3)
    events, _mark2 = audit_events(bench.plane.audit_log, mark)
    after = scrape(bench.operator)
    results["apiRequestsPerModelDeployment"] = audit_summary(events, args.count)
    results["operatorView"] = {
        "reconcilesPerModelDeployment": round(
            (
                metric_sum(after, "ondeck_operator_reconciles_total", result="ok")
                - metric_sum(before, "ondeck_operator_reconciles_total", result="ok")
            )
            / args.count,
            2,
        ),
        "queueWaitP50": histogram_quantile(
            before, after, "ondeck_operator_queue_wait_seconds", 0.5
        ),
        "queueWaitP90": histogram_quantile(
            before, after, "ondeck_operator_queue_wait_seconds", 0.9
        ),
        "reconcileP50": histogram_quantile(
            before, after, "ondeck_operator_reconcile_duration_seconds", 0.5
        ),
        "reconcileP90": histogram_quantile(
            before, after, "ondeck_operator_reconcile_duration_seconds", 0.9
        ),
        "cpuSeconds": cpu_seconds(bench.pid),
    }
    results["apiServerFloorAfter"] = bench.floor(args.floor_count)
    floor = statistics.mean(
        r["perSecond"]
        for r in results["apiServerFloorBefore"] + results["apiServerFloorAfter"]
        if r["what"] == "Service"
    )
    results["ratios"] = {
        "serviceCreatesPerSecondMean": round(floor, 1),
        "childrenSecondsTimesServiceRate": None
        if bulk["childrenSeconds"] is None
        else round(bulk["childrenSeconds"] * floor / args.count, 2),
    }
    print(json.dumps(results), flush=True)

    if args.latency_count:
        results["withOthersPresent"] = bench.latency(args.latency_count)
        print(json.dumps(results["withOthersPresent"]), flush=True)

    # Idle resyncs.
    time.sleep(3)
    idle_from = scrape(bench.operator)
    _, mark3 = audit_events(bench.plane.audit_log, 0)
    time.sleep(args.resync_seconds * 3.2)
    idle = scrape(bench.operator)
    time.sleep(2)
    idle_events, _ = audit_events(bench.plane.audit_log, mark3)
    results["idleResync"] = {
        "seconds": args.resync_seconds * 3.2,
        "reconciles": metric_sum(idle, "ondeck_operator_reconciles_total", result="ok")
        - metric_sum(idle_from, "ondeck_operator_reconciles_total", result="ok"),
        "reconcilerWrites": metric_sum(idle, "ondeck_operator_writes_total")
        - metric_sum(idle_from, "ondeck_operator_writes_total"),
        "auditWritesExceptPeering": collections.Counter(
            e["what"]
            for e in idle_events
            if not e["what"].startswith(("get", "list", "watch"))
            and "kopfpeerings" not in e["what"]
        ),
    }
    results["machineAtEnd"] = machine()
    return results


def run_takeover(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Two peered replicas; the active one is killed (SIGKILL) `--peering-kill` seconds into
    the bulk: when does the standby write, and when is everything Ready?"""
    assert bench.operator is not None
    names = [f"md-{i:05d}" for i in range(args.count)]
    start = time.monotonic()
    bench.create_mds(names)
    time.sleep(max(0.0, start + args.peering_kill - time.monotonic()))
    ready_at_kill = sum(1 for n in names if n in bench.watcher.ready_at)
    children_at_kill = sum(1 for n in names if bench.watcher.children_at(n))
    bench.operator.kill()
    killed = time.monotonic()
    first_write: float | None = None
    while time.monotonic() < start + args.timeout:
        if first_write is None:
            writes = metric_sum(scrape(bench.standby), "ondeck_operator_writes_total")
            if writes > 0:
                first_write = time.monotonic() - killed
                print(json.dumps({"standbyFirstWriteAfterKill": first_write}), flush=True)
        if all(n in bench.watcher.ready_at for n in names):
            break
        time.sleep(0.5)
    done = [n for n in names if n in bench.watcher.ready_at]
    return {
        "takeover": {
            "killedAtSeconds": round(killed - start, 2),
            "childrenAtKill": children_at_kill,
            "readyAtKill": ready_at_kill,
            "peeringLifetime": 60,
            "standbyFirstWriteAfterKill": None if first_write is None else round(first_write, 2),
            "allReadySeconds": round(max(bench.watcher.ready_at[n] for n in done) - start, 2)
            if len(done) == len(names)
            else None,
            "ready": len(done),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    }


def run_rss_steps(bench: Bench, steps: list[int], timeout: float) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    made = 0
    for target in steps:
        names = [f"md-{i:05d}" for i in range(made, target)]
        start = time.monotonic()
        bench.create_mds(names)
        made = target
        waited = bench.wait_all([f"md-{i:05d}" for i in range(target)], start, timeout)
        time.sleep(5)
        out.append(
            {
                "modelDeployments": target,
                "readySeconds": waited["readySeconds"],
                "rssMiB": round(rss_kib(bench.pid)["VmRSS"] / 1024, 1),
                "rssPeakMiB": round(rss_kib(bench.pid)["VmHWM"] / 1024, 1),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
        print(json.dumps(out[-1]), flush=True)
    for low, high in itertools.pairwise(out):
        high["bytesPerModelDeploymentSincePrevious"] = round(
            (high["rssMiB"] - low["rssMiB"])
            * 2**20
            / (high["modelDeployments"] - low["modelDeployments"])
        )
    return {"rssSteps": out}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)


def summarize(files: list[Path]) -> dict[str, Any]:
    """Medians over repeated runs (each one `--out` file of the bulk mode)."""
    runs = [json.loads(f.read_text()) for f in files]

    def median(get: Callable[[dict[str, Any]], Any]) -> float | None:
        values = []
        for run in runs:
            with contextlib.suppress(KeyError, TypeError):
                value = get(run)
                if value is not None:
                    values.append(float(value))
        return round(statistics.median(values), 2) if values else None

    def rate(run: dict[str, Any], what: str) -> float:
        floor = run["apiServerFloorBefore"] + run["apiServerFloorAfter"]
        return float(statistics.mean(r["perSecond"] for r in floor if r["what"] == what))

    return {
        "runs": len(runs),
        "childrenSeconds": median(lambda r: r["bulk"]["childrenSeconds"]),
        "readySeconds": median(lambda r: r["bulk"]["readySeconds"]),
        "rssPeakMiB": median(lambda r: r["bulk"]["rssPeakMiB"]),
        "requestsPerModelDeployment": median(
            lambda r: r["apiRequestsPerModelDeployment"]["exceptWatches"]
        ),
        "serviceCreatesPerSecond": median(lambda r: rate(r, "Service")),
        "configMapCreatesPerSecond": median(lambda r: rate(r, "ConfigMap")),
        "childrenTimesServiceRateOverCount": median(
            lambda r: r["ratios"]["childrenSecondsTimesServiceRate"]
        ),
        "readyTimesServiceRateOverCount": median(
            lambda r: r["bulk"]["readySeconds"] * rate(r, "Service") / int(r["args"]["count"])
        ),
        "operatorCpuSeconds": median(lambda r: r["operatorView"]["cpuSeconds"]),
        "applyToChildrenP99WithOthers": median(
            lambda r: r["withOthersPresent"]["applyToChildren"]["p99"]
        ),
        "load1AtStart": median(lambda r: r["machineAtStart"]["loadavg"][0]),
        "idleResyncWrites": median(lambda r: r["idleResync"]["reconcilerWrites"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-count", type=int, default=30)
    parser.add_argument("--floor-count", type=int, default=500)
    parser.add_argument("--resync-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--kcm-qps", type=int, default=200)
    parser.add_argument("--kcm-burst", type=int, default=400)
    parser.add_argument(
        "--peering-kill",
        type=float,
        help="two peered replicas; SIGKILL the active one this many seconds into the bulk",
    )
    parser.add_argument("--rss-steps", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--operator-src", type=Path, help="run the operator from this tree")
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="one more operator flag (repeat)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--summarize", type=Path, nargs="+", help="print medians of these --out files and exit"
    )
    args = parser.parse_args()
    if args.summarize:
        print(json.dumps(summarize(args.summarize), indent=2))
        return
    work = Path(tempfile.mkdtemp(prefix="ondeck-opbench-"))
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "kubeControllerManager": {"kubeApiQps": args.kcm_qps, "kubeApiBurst": args.kcm_burst},
    }
    bench = Bench(args, work)
    try:
        bench.start()
        if args.rss_steps:
            results.update(run_rss_steps(bench, args.rss_steps, args.timeout))
        elif args.peering_kill is not None:
            results.update(run_takeover(bench, args))
        else:
            results.update(run_bulk(bench, args))
        results["simulatorErrors"] = bench.kubelet.errors[:5]
    finally:
        bench.stop()
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
