"""The analysis loop of rollouts: scrape the stable and candidate server pods' `/metrics`
(on each ready pod's IP, port 8080; no Prometheus needed) every `analysis.interval`,
judge the interval with `reconcile.analysis`, keep the latest verdict per
ModelDeployment, and ask for a reconcile, which reads it (`plan(..., analysis=...)`).
With `analysis.prometheus` the figures come from that Prometheus's `/api/v1/query`
instead (`reconcile.promql`: increase() and histogram_quantile() over the interval, the
pods told apart by their labels as for scraping).

The first scrape of a step (or of a restarted operator) is only a baseline: a verdict is
always about one whole interval of the current step. A pod that cannot be scraped is left
out of that interval (its counters count again from its next scrape). A Prometheus that
cannot be queried gives a Wait verdict whose message says why, and the next interval
covers this one too.

What this module does NOT do: decide anything about the rollout (`reconcile.rollout`),
or scrape pods of ModelDeployments without a rollout in progress.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ondeck_operator.api.constants import (
    LABEL_MODEL_DEPLOYMENT,
    LABEL_TRACK,
    METRICS_PATH,
    SERVER_PORT,
    TRACK_CANARY,
)
from ondeck_operator.api.rollout import (
    AnalysisFigures,
    PrometheusSpec,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    duration_seconds,
)
from ondeck_operator.reconcile import promql
from ondeck_operator.reconcile.analysis import (
    PodSample,
    Snapshot,
    Verdict,
    interval_figures,
    judge,
    parse_sample,
)
from ondeck_operator.reconcile.kinds import POD, KubeApi, KubeError
from ondeck_operator.reconcile.plan import rfc3339
from ondeck_operator.reconcile.rollout import ACTIVE, Analysis

__all__ = ["Analyzer", "Key"]

log = logging.getLogger("ondeck.operator")
Key = tuple[str, str]
Fetch = Callable[[str], Awaitable[str]]
#: How often due analyses are looked for.
TICK_SECONDS = 1.0
SCRAPE_TIMEOUT_SECONDS = 5.0
PROMETHEUS_QUERY_PATH = "/api/v1/query"


@dataclass
class _Watch:
    marker: tuple[str, str, int]  # candidate key, phase, step: a new one starts over
    spec: RolloutSpec
    due: float
    stable: Snapshot | None = None
    candidate: Snapshot | None = None
    #: With Prometheus: when the current interval began (wall clock) and the pods
    #: (stable, candidate) listed then.
    since: float | None = None
    pods: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


def _ready(pod: dict[str, object]) -> str | None:
    """The pod's IP when it is Ready, else None."""
    status = pod.get("status")
    if not isinstance(status, dict):
        return None
    conditions = status.get("conditions") or []
    ready = any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )
    ip = status.get("podIP")
    return str(ip) if ready and ip else None


class Analyzer:
    """Which rollouts are analysed, their last scrapes and verdicts."""

    def __init__(self, kube: KubeApi, *, fetch: Fetch | None = None, port: int = SERVER_PORT):
        self.kube = kube
        self.port = port
        self.results: dict[Key, Analysis] = {}
        self._watches: dict[Key, _Watch] = {}
        self._fetch = fetch
        self._session: aiohttp.ClientSession | None = None

    def track(self, key: Key, spec: RolloutSpec, status: RolloutStatus | None) -> None:
        """After a reconcile: analyse `key` while its rollout is active."""
        if status is None or status.phase not in ACTIVE or status.candidate is None:
            self.forget(key)
            return
        marker = (status.candidate.key, status.phase.value, status.step)
        watch = self._watches.get(key)
        if watch is None or watch.marker != marker or watch.spec != spec:
            self._watches[key] = _Watch(marker=marker, spec=spec, due=time.monotonic())
            # The last verdict judged the step before: judged in the second the next step
            # began holding, it would count as that step's own analysis and pass it.
            self.results.pop(key, None)

    def forget(self, key: Key) -> None:
        self._watches.pop(key, None)
        self.results.pop(key, None)

    async def run(self, on_result: Callable[[Key], None]) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            due = [k for k, w in self._watches.items() if w.due <= now]
            for key in due:
                watch = self._watches.get(key)
                if watch is None:
                    continue
                watch.due = now + duration_seconds(watch.spec.analysis.interval)
                try:
                    if await self.analyze(key, watch):
                        on_result(key)
                except KubeError as exc:
                    log.warning("rollout analysis of %s/%s skipped: %s", key[0], key[1], exc)

    async def analyze_now(self, key: Key) -> bool:
        """Scrape and judge a tracked rollout at once (whatever its interval says)."""
        watch = self._watches.get(key)
        return watch is not None and await self.analyze(key, watch)

    async def analyze(self, key: Key, watch: _Watch) -> bool:
        """Scrape both tracks; judge the interval since the last scrape. True when a new
        verdict is in `results`."""
        pods = await self.kube.list(
            POD, key[0], label_selector=f"{LABEL_MODEL_DEPLOYMENT}={key[1]}"
        )
        prometheus = watch.spec.analysis.prometheus
        if prometheus is not None:
            return await self._from_prometheus(key, watch, prometheus, pods)
        targets: dict[str, tuple[bool, str]] = {}
        for pod in pods:
            ip = _ready(pod)
            if ip is None:
                continue
            labels = pod["metadata"].get("labels") or {}
            targets[pod["metadata"]["name"]] = (labels.get(LABEL_TRACK) == TRACK_CANARY, ip)
        samples = await asyncio.gather(*(self._sample(ip) for _, ip in targets.values()))
        stable: dict[str, PodSample] = {}
        candidate: dict[str, PodSample] = {}
        for (name, (canary, _)), sample in zip(targets.items(), samples, strict=True):
            if sample is not None:
                (candidate if canary else stable)[name] = sample
        before_stable, before_candidate = watch.stable, watch.candidate
        watch.stable, watch.candidate = stable, candidate
        if before_stable is None or before_candidate is None:
            return False  # a baseline
        figures = interval_figures(
            stable_before=before_stable,
            stable_after=stable,
            candidate_before=before_candidate,
            candidate_after=candidate,
        )
        shadow = watch.marker[1] == RolloutPhase.SHADOW.value
        now = rfc3339(dt.datetime.now(dt.UTC))
        self.results[key] = judge(figures, watch.spec.analysis, shadow=shadow, now=now)
        return True

    async def _from_prometheus(
        self, key: Key, watch: _Watch, prometheus: PrometheusSpec, pods: list[dict[str, Any]]
    ) -> bool:
        """The interval since the last judgment, from Prometheus. Every pod listed now or
        at the interval's start counts (one that served and went away did serve)."""
        now = time.time()
        stable_now: set[str] = set()
        candidate_now: set[str] = set()
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            canary = labels.get(LABEL_TRACK) == TRACK_CANARY
            (candidate_now if canary else stable_now).add(str(pod["metadata"]["name"]))
        listed = (frozenset(stable_now), frozenset(candidate_now))
        if watch.since is None:
            watch.since, watch.pods = now, listed
            return False  # a baseline
        asked = promql.queries(
            prometheus,
            key[0],
            stable=listed[0] | watch.pods[0],
            candidate=listed[1] | watch.pods[1],
            window_seconds=round(now - watch.since),
        )
        at = rfc3339(dt.datetime.now(dt.UTC))
        try:
            answers = await asyncio.gather(
                *(self._query(prometheus.url, q, now) for q in asked.values())
            )
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
            message = f"Prometheus {prometheus.url} could not be queried: {exc}"
            log.warning("rollout analysis of %s/%s: %s", key[0], key[1], message)
            figures = AnalysisFigures(time=at, verdict=Verdict.WAIT.value, message=message)
            self.results[key] = (Verdict.WAIT, None, figures)
            return True
        watch.since, watch.pods = now, listed
        judged = promql.figures(dict(zip(asked, answers, strict=True)))
        shadow = watch.marker[1] == RolloutPhase.SHADOW.value
        self.results[key] = judge(judged, watch.spec.analysis, shadow=shadow, now=at)
        return True

    async def _query(self, base: str, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        """One instant query at time `at`; PrometheusError (a ValueError) on an error."""
        url = base.rstrip("/") + PROMETHEUS_QUERY_PATH
        async with self._client().get(url, params={"query": query, "time": f"{at:.3f}"}) as reply:
            try:
                doc = await reply.json(content_type=None)
            except ValueError as exc:
                raise promql.PrometheusError(
                    f"HTTP {reply.status}, not a JSON answer from {url}"
                ) from exc
            return promql.read_vector(doc)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _sample(self, ip: str) -> PodSample | None:
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{self.port}{METRICS_PATH}"
        try:
            text = await (self._fetch or self._get)(url)
            return parse_sample(text)
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.debug("scrape of %s failed: %s", url, exc)
            return None

    async def _get(self, url: str) -> str:
        async with self._client().get(url) as reply:
            reply.raise_for_status()
            return await reply.text()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
