"""A small kubelet + scheduler simulator for the loopback control plane (no container runs).

No kubelet exists on these machines, so pods would stay Pending forever. The simulator
registers one Ready Node and watches pods in every namespace, doing what the scheduler and
the kubelet would do, through the real API (bindings and the pod status subresource):

* a pending pod without a node is bound to the simulated node;
* a pod owned by a Job is marked Running, then, once the test's `job_outcome` rule returns a
  decision for it, Succeeded (exit 0) or Failed (exit 1) with that decision's termination
  message in `status.containerStatuses[0].state.terminated.message`, exactly where the
  kubelet copies the container's `terminationMessagePath`;
* any other pod (Deployment/ReplicaSet pods) is marked Running and Ready at once, with a
  made-up 10.244.x.y IP that nothing answers on, unless the rule the test gave
  `set_pod_ip_rule` names a reachable address for it (a real server on loopback);
* a pod being deleted gracefully is removed (grace period 0), as the kubelet confirms it.

The Job and Deployment controllers of the real kube-controller-manager react to these
statuses: that is what the end-to-end tests exercise. What it does NOT do: run containers,
probes or resource accounting, or simulate node failures. Every loop is bounded by a stop
event and watch timeouts; `stop()` joins the threads with a timeout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("kubelet-sim")

Pod = dict[str, Any]


@dataclass(frozen=True)
class JobOutcome:
    """What a Job pod's single container does: exit 0 or 1 with a termination message."""

    succeeded: bool
    message: str

    @classmethod
    def success(cls, message: str) -> JobOutcome:
        return cls(True, message)

    @classmethod
    def failure(cls, message: str) -> JobOutcome:
        return cls(False, message)


JobRule = Callable[[Pod], JobOutcome | None]
#: The IP a starting pod gets (None: a made-up one).
IpRule = Callable[[Pod], str | None]


#: How often the watch loop lists every pod again (see _watch_loop).
RELIST_SECONDS = 10.0


def _is_transient(exc: Exception) -> bool:
    """A dropped connection, a timeout or a 5xx/429: the control plane is restarting."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_kind(pod: Pod) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["kind"])
    return None


class KubeletSimulator:
    """Simulates one node; start() launches two daemon threads, stop() ends them."""

    def __init__(
        self, api_client: client.ApiClient, *, node_name: str = "sim-node-0", workers: int = 8
    ) -> None:
        self._api: Any = api_client
        self._core: Any = client.CoreV1Api(api_client)
        self.node_name = node_name
        self._rule: JobRule = lambda pod: None
        self._ip_rule: IpRule = lambda pod: None
        self._lock = threading.Lock()
        self._awaiting: dict[str, Pod] = {}  # Job pods running, waiting for the test's decision
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ips = itertools.count(2)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubelet-sim")
        self._latest: dict[str, Pod] = {}  # uid -> newest state not yet handled
        self._scheduled: set[str] = set()
        self.errors: list[str] = []
        self.transient_failures = 0

    # ---------------------------------------------------------------- public

    def set_job_rule(self, rule: JobRule) -> None:
        """Decide every Job pod from now on with `rule` (None = keep it running for now)."""
        with self._lock:
            self._rule = rule

    def set_pod_ip_rule(self, rule: IpRule) -> None:
        """Give each pod that starts from now on the IP `rule` returns for it (None = a
        made-up 10.244.x.y one, the default for every pod)."""
        with self._lock:
            self._ip_rule = rule

    def start(self) -> None:
        self._register_node()
        for target, name in ((self._watch_loop, "watch"), (self._decide_loop, "decide")):
            thread = threading.Thread(target=target, name=f"kubelet-sim-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self, pod: Pod) -> None:
        """Handle `pod` on the pool: one pod at a time per uid, from its newest state."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._latest[uid] = pod
            if uid in self._scheduled:
                return
            self._scheduled.add(uid)
        self._pool.submit(self._drain, uid)

    def _drain(self, uid: str) -> None:
        while not self._stop.is_set():
            with self._lock:
                pod = self._latest.pop(uid, None)
                if pod is None:
                    self._scheduled.discard(uid)
                    return
            self._handle(pod)

    # ---------------------------------------------------------------- node

    def _register_node(self) -> None:
        node = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=self.node_name,
                labels={"kubernetes.io/hostname": self.node_name, "type": "simulated"},
            )
        )
        with contextlib.suppress(ApiException):
            self._core.create_node(node)
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "5000", "ephemeral-storage": "1Ti"}
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "10.0.0.10"}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "simulated",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.36.3-sim",
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "bootID": "",
                    "containerRuntimeVersion": "sim://1",
                    "kernelVersion": "",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "osImage": "simulated",
                    "systemUUID": "",
                },
            }
        }
        self._core.patch_node_status(self.node_name, status)

    # ---------------------------------------------------------------- loops

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        listed = 0.0
        while not self._stop.is_set():
            try:
                # Relist now and then, as an informer resyncs: after an etcd restart the API
                # server's watch cache can resume a watch without the events of pods
                # written around the restart, and nothing else would bring them back.
                if resource_version is None or time.monotonic() - listed > RELIST_SECONDS:
                    listed = time.monotonic()
                    # Plain JSON, not the client's models: decoding thousands of pods into
                    # models every relist took more CPU than the operator under test.
                    raw = self._core.list_pod_for_all_namespaces(_preload_content=False)
                    listing = json.loads(raw.data)
                    resource_version = listing["metadata"]["resourceVersion"]
                    for item in listing["items"]:
                        self._dispatch(item)
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._core.list_pod_for_all_namespaces,
                    resource_version=resource_version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        break
                    pod = event["object"]
                    resource_version = pod["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._dispatch(pod)
                    elif event["type"] == "DELETED":
                        with self._lock:
                            self._awaiting.pop(pod["metadata"]["uid"], None)
            except ApiException as exc:
                if exc.status == 410:  # resource version too old: list again
                    resource_version = None
                    continue
                self._transient(f"watch: {exc.status} {exc.reason}")
                resource_version = None
                self._stop.wait(0.5)
            except Exception as exc:  # a dropped connection: start over from a fresh list
                self._transient(f"watch: {type(exc).__name__}: {exc}")
                resource_version = None
                self._stop.wait(0.5)

    def _decide_loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                waiting = list(self._awaiting.values())
                rule = self._rule
            for pod in waiting:
                outcome = rule(pod)
                if outcome is None:
                    continue
                with self._lock:
                    if self._awaiting.pop(pod["metadata"]["uid"], None) is None:
                        continue
                try:
                    self._terminate(pod, outcome)
                except Exception as exc:
                    if isinstance(exc, ApiException) and exc.status == 404:
                        continue
                    if not _is_transient(exc):
                        self._record(f"terminate {pod['metadata']['name']}: {exc}")
                        continue
                    # The API server or etcd is restarting: a kubelet tries again.
                    self._transient(f"terminate {pod['metadata']['name']}: {exc}")
                    with self._lock:
                        self._awaiting.setdefault(pod["metadata"]["uid"], pod)

    # ---------------------------------------------------------------- one pod

    def _record(self, message: str) -> None:
        log.warning(message)
        self.errors.append(message)

    def _transient(self, message: str) -> None:
        """A failure a real kubelet rides out (API server or etcd restarting): logged and
        counted, retried, never one of `errors`."""
        log.info("transient: %s", message)
        self.transient_failures += 1

    def _retry_later(self, pod: Pod, delay: float = 0.5) -> None:
        """Handle `pod` again after `delay` unless a newer state of it arrives first: the
        watch stays silent about a pod whose write failed, so nothing else would."""

        def again() -> None:
            if self._stop.wait(delay):
                return
            with self._lock:
                if pod["metadata"]["uid"] in self._latest:
                    return
            self._dispatch(pod)

        threading.Thread(target=again, name="kubelet-sim-retry", daemon=True).start()

    def _handle(self, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        status = pod.get("status") or {}
        phase = status.get("phase", "Pending")
        try:
            if meta.get("deletionTimestamp"):
                if spec.get("nodeName") and phase not in ("Succeeded", "Failed"):
                    self._core.delete_namespaced_pod(
                        meta["name"], meta["namespace"], grace_period_seconds=0
                    )
                return
            if not spec.get("nodeName"):
                self._bind(pod)
                return
            if spec["nodeName"] != self.node_name or phase != "Pending":
                if phase == "Running" and _owner_kind(pod) == "Job":
                    with self._lock:
                        self._awaiting.setdefault(meta["uid"], pod)
                return
            job_pod = _owner_kind(pod) == "Job"
            self._start(pod, ready=not job_pod)
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status in (404, 409):
                return
            where = f"{meta['namespace']}/{meta['name']}"
            if not _is_transient(exc):
                self._record(f"{where}: {exc}")
                return
            self._transient(f"{where}: {exc}")
            self._retry_later(pod)

    def _bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        # _preload_content=False: the generated client cannot deserialize a Binding reply.
        self._core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)

    def _start(self, pod: Pod, *, ready: bool) -> None:
        meta = pod["metadata"]
        now = _now()
        with self._lock:
            chosen = self._ip_rule(pod)
        if chosen is None:
            serial = next(self._ips)
            chosen = f"10.244.{serial // 250 % 250}.{serial % 250 + 1}"
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"sim://{c.get('image', '')}",
                "containerID": f"sim://{meta['uid']}/{c['name']}",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"]["containers"]
        ]
        flag = "True" if ready else "False"
        status = {
            "phase": "Running",
            "hostIP": "10.0.0.10",
            "podIP": chosen,
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
            ],
            "containerStatuses": containers,
        }
        self._core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})

    def _terminate(self, pod: Pod, outcome: JobOutcome) -> None:
        meta = pod["metadata"]
        now = _now()
        code = 0 if outcome.succeeded else 1
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"sim://{c.get('image', '')}",
                "containerID": f"sim://{meta['uid']}/{c['name']}",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if outcome.succeeded else "Error",
                        "message": outcome.message,
                        "startedAt": now,
                        "finishedAt": now,
                        "containerID": f"sim://{meta['uid']}/{c['name']}",
                    }
                },
            }
            for c in pod["spec"]["containers"]
        ]
        status = {
            "phase": "Succeeded" if outcome.succeeded else "Failed",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                },
            ],
            "containerStatuses": containers,
        }
        self._core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})
