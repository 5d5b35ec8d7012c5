"""Shadow traffic: the stable server copies a sampled share of its inference requests to a
candidate server (`serve --shadow-url URL --shadow-percent P`) and compares the answers.

The caller only ever sees the stable answer, and it is sent before the copy exists: a
copy is queued after the response went out, with `put_nowait` on a bounded queue (full:
the copy is dropped and counted), and sent by background workers with their own timeout.
A dead, slow or failing candidate therefore changes nothing for callers; it shows in the
counters only.

Comparison, as the accuracy gate compares: floating-point outputs agree when their
cosine similarity is at least `min_cosine` and every row has the same arg-max (top-1);
integer, boolean and string outputs (labels) must be equal. Metrics, on the server's own
registry (so `/metrics` exposes them):

| metric | type | labels |
|---|---|---|
| `ondeck_shadow_requests_total` | counter | result: agree, disagree, failed |
| `ondeck_shadow_dropped_total` | counter (queue full) | — |
| `ondeck_shadow_agreement` | histogram (cosine of a copy; 1 or 0 for exact outputs) | — |

What this module does NOT do: decide anything about a rollout (the operator reads these
counters), retry a copy, or copy requests that are not inference requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from ondeck_server.serve.asgi import OndeckApp, Receive, Scope, Send
from ondeck_server.serve.state import ServerState

__all__ = [
    "AGREE",
    "DISAGREE",
    "FAILED",
    "Shadow",
    "ShadowingApp",
    "compare",
]

log = logging.getLogger("ondeck.server")

AGREE = "agree"
DISAGREE = "disagree"
FAILED = "failed"
#: Copies waiting to be sent; past it they are dropped (never waited for).
QUEUE_SIZE = 64
#: Copies in flight at once.
WORKERS = 4
#: A copy's whole exchange with the candidate.
TIMEOUT_SECONDS = 10.0
#: The gate's default cosine floor (spec.optimize.validation.minCosine).
MIN_COSINE = 0.99
_FORWARDED = (b"content-type", b"authorization", b"inference-header-content-length")


@dataclass(frozen=True)
class Copy:
    path: str
    headers: dict[str, str]
    body: bytes
    answer: bytes


def _outputs(doc: Any) -> dict[str, Any] | None:
    """Output name -> data of a V2 (`outputs`) or V1 (`predictions`) JSON answer."""
    if isinstance(doc, dict) and isinstance(doc.get("outputs"), list):
        found = {}
        for out in doc["outputs"]:
            if not isinstance(out, dict) or "name" not in out:
                return None
            data = np.asarray(out.get("data"))
            shape = out.get("shape")
            if isinstance(shape, list) and data.size == int(np.prod(shape)):
                data = data.reshape(shape)
            found[str(out["name"])] = data
        return found
    if isinstance(doc, dict) and "predictions" in doc:
        return {"predictions": np.asarray(doc["predictions"], dtype=object)}
    return None


def _cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    if norms == 0.0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(np.dot(x, y) / norms)


def _floats(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """`a` as float64 when every element is a real (not bool) number, else None."""
    if a.dtype.kind == "f":
        return a
    if a.dtype == object:
        try:
            flat = [v for v in a.ravel() if not isinstance(v, bool)]
            if len(flat) == a.size and any(isinstance(v, float) for v in flat):
                return np.asarray(a.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            return None
    return None


def compare(stable: bytes, candidate: bytes, *, min_cosine: float = MIN_COSINE) -> float | None:
    """The agreement score of two answers (the lowest cosine over float outputs; 1 or 0 for
    exact outputs), 0 when a float output's top-1 differs in any row; None when the
    stable answer is not a JSON answer this module reads."""
    try:
        ours = _outputs(orjson.loads(stable))
    except orjson.JSONDecodeError:
        return None
    if ours is None:
        return None
    try:
        theirs = _outputs(orjson.loads(candidate)) or {}
    except orjson.JSONDecodeError:
        return 0.0
    score = 1.0
    for name, a in ours.items():
        b = theirs.get(name)
        if b is None or b.shape != a.shape:
            return 0.0
        fa, fb = _floats(a), _floats(b)
        if fa is not None and fb is not None:
            cosine = _cosine(fa, fb)
            top1 = fa.ndim >= 2 and fa.shape[-1] > 1
            if top1 and not np.array_equal(fa.argmax(axis=-1), fb.argmax(axis=-1)):
                return 0.0
            score = min(score, cosine)
        elif not np.array_equal(a, b):
            return 0.0
    return score


class Shadow:
    """The bounded queue, its workers and the counters of one server."""

    def __init__(
        self,
        url: str,
        percent: int,
        registry: CollectorRegistry,
        *,
        min_cosine: float = MIN_COSINE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.percent = percent
        self.min_cosine = min_cosine
        self._transport = transport
        self._queue: asyncio.Queue[Copy] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.requests = Counter(
            "ondeck_shadow_requests", "Shadow copies sent to the candidate, by result.",
            ["result"], registry=registry,
        )  # fmt: skip
        for result in (AGREE, DISAGREE, FAILED):
            self.requests.labels(result)  # every series exists from the start, at 0
        self.dropped = Counter(
            "ondeck_shadow_dropped", "Shadow copies dropped: the queue was full.",
            registry=registry,
        )  # fmt: skip
        self.agreement = Histogram(
            "ondeck_shadow_agreement", "Agreement (cosine) of a shadow answer with stable's.",
            buckets=(0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0), registry=registry,
        )  # fmt: skip

    def sampled(self) -> bool:
        return self.percent >= 100 or random.random() * 100 < self.percent

    def offer(self, copy: Copy) -> None:
        """Queue a copy, or drop (and count) it when the queue is full; never waits."""
        if self._queue is None:
            self._start()
        assert self._queue is not None
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.dropped.inc()

    def _start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._client = httpx.AsyncClient(
            timeout=TIMEOUT_SECONDS, transport=self._transport, follow_redirects=False
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"ondeck-shadow-{i}") for i in range(WORKERS)
        ]

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            copy = await self._queue.get()
            try:
                await self._send(copy)
            finally:
                self._queue.task_done()

    async def _send(self, copy: Copy) -> None:
        assert self._client is not None
        try:
            reply = await self._client.post(
                self.url + copy.path, content=copy.body, headers=copy.headers
            )
        except httpx.HTTPError as exc:
            log.debug("shadow copy to %s failed: %s", self.url, exc)
            self.requests.labels(FAILED).inc()
            return
        if reply.status_code != 200:
            self.requests.labels(FAILED).inc()
            return
        score = compare(copy.answer, reply.content, min_cosine=self.min_cosine)
        if score is None:
            return  # not an answer this module compares (binary outputs)
        self.agreement.observe(score)
        self.requests.labels(AGREE if score >= self.min_cosine else DISAGREE).inc()

    async def drain(self) -> None:
        """Wait until every queued copy was sent (tests)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def _is_inference(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (
        (path.startswith("/v2/models/") and path.endswith("/infer"))
        or (path.startswith("/v1/models/") and path.endswith(":predict"))
    )


class ShadowingApp(OndeckApp):
    """`OndeckApp` that copies sampled inference requests to a candidate once answered."""

    def __init__(self, state: ServerState, api: Any, shadow: Shadow) -> None:
        super().__init__(state, api)
        self.shadow = shadow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_inference(scope) or not self.shadow.sampled():
            await super().__call__(scope, receive, send)
            return
        body = bytearray()
        answer = bytearray()
        status = 0

        async def recording_receive() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))
            await send(message)

        await super().__call__(scope, recording_receive, recording_send)
        # The caller has its answer: only now does the copy exist.
        if status == 200:
            headers = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in scope["headers"]
                if k in _FORWARDED
            }
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to copy with
                self.shadow.offer(Copy(scope["path"], headers, bytes(body), bytes(answer)))
