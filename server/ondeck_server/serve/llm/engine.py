"""Batching at batch boundaries (on CPU the Engine batches statically): ONE
onnxruntime-genai Engine, owned by ONE thread, fed from a bounded queue.

Every onnxruntime-genai call (loading, tokenizing, `Engine.run`, cancelling, closing)
happens on the worker thread. The event loop talks to it through `submit` (a job into
the waiting deque, 429 past `max_queue`) and `Job.cancel`; the worker answers each job
through its own asyncio queue (`call_soon_threadsafe`), so every client gets exactly
its own tokens. At most `max_batch` jobs decode together; the others wait in order.
A cancelled job (client gone, stop string seen, drain deadline) is cancelled in the
engine on the worker's next step, which frees its slot.

A decode step of a small model costs well under a millisecond, so the handoff is built to
cost less than that: each step's events for all its jobs cross to the event loop in ONE
`call_soon_threadsafe` (one wake-up of the loop, not one per token), and a reader that
finds several pieces waiting takes them together (`Job.drain`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ondeck.llm")


@dataclass
class Sampling:
    max_tokens: int | None
    """None: what the context leaves after the prompt."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    default_max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"


@dataclass
class Admitted:
    prompt_tokens: int
    max_tokens: int


@dataclass
class Rejected:
    status: int
    message: str
    param: str | None
    code: str


@dataclass
class Piece:
    text: str
    tokens: list[float]
    """when each token in `text` came out of the engine (monotonic s), for TTFT/ITL"""


@dataclass
class Finished:
    reason: str
    """stop (EOS), length, cancelled, error"""
    prompt_tokens: int
    completion_tokens: int
    message: str = ""


Event = Admitted | Rejected | Piece | Finished


@dataclass
class Job:
    prompt: str | list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    prompt_param: str = "prompt"
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    prompt_tokens: int = 0
    generated: int = 0
    # worker-side state
    request: Any = None
    turn: int = 0
    stream: Any = None
    done: bool = False
    pending: list[float] = field(default_factory=list)
    """stamps of tokens the detokenizer holds back (part of a UTF-8 character)"""

    def cancel(self) -> None:
        self.cancelled = True

    def _send(self, event: Event) -> None:
        # RuntimeError: the loop is closed, nobody is listening any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def drain(self, first: Event) -> list[Event]:
        """`first` and every event already waiting, consecutive pieces merged into one
        (the loop was behind the engine: the client gets them in one chunk)."""
        out = [first]
        while not self.events.empty():
            event = self.events.get_nowait()
            last = out[-1]
            if isinstance(event, Piece) and isinstance(last, Piece):
                out[-1] = Piece(last.text + event.text, last.tokens + event.tokens)
            else:
                out.append(event)
        return out


def _deliver(batch: list[tuple[Job, Event]]) -> None:
    """On the event loop: one step's events, in the engine's order."""
    for job, event in batch:
        job.events.put_nowait(event)


class QueueFull(Exception):
    pass


class EngineWorker:
    def __init__(
        self,
        genai: Path,
        *,
        max_batch: int,
        max_queue: int,
        threads: int | None,
        max_context: int | None = None,
        batch_wait: float = 0.0,
        batch_wait_share: float = 0.1,
    ) -> None:
        self.genai = genai
        self.batch_wait = batch_wait
        """longest (s) a new batch waits for the requests the last one suggests are coming"""
        self.batch_wait_share = batch_wait_share
        """...and at most this share of the last batch's duration"""
        self._peak = 0
        """most requests in flight (running + waiting) since the current batch began"""
        self._batch_began = 0.0
        self._last_batch_s = 0.0
        self.max_context = max_context
        """`--max-context-length`: caps the model's context (prompt + output tokens)"""
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.threads = threads
        self.context = 0
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: dict[int, Job] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="ondeck-llm-engine", daemon=True)

    # ------------------------------------------------------------ event-loop side

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def cancel_all(self) -> None:
        with self._cv:
            for job in [*self._waiting, *self._active.values()]:
                job.cancelled = True
            self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            for job in [*self._waiting, *self._active.values()]:
                job.cancelled = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker thread

    def _main(self) -> None:
        try:
            self._load()
            self._warm_up()
        except BaseException as exc:  # reported by the server, which then exits 1
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        except BaseException as exc:  # pragma: no cover - a bug: fail every job loudly
            log.exception("the engine thread failed")
            self.failed = exc
            for job in [*self._waiting, *self._active.values()]:
                job._send(Finished("error", job.prompt_tokens, job.generated, str(exc)))

    def _load(self) -> None:
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(self.genai))
        overlay: dict[str, Any] = {
            "engine": {"static_batching": {"max_batch_size": self.max_batch}}
        }
        if self.threads is not None:
            overlay["model"] = {
                "decoder": {"session_options": {"intra_op_num_threads": self.threads}}
            }
        config.overlay(json.dumps(overlay))
        self._model = og.Model(config)
        self._tokenizer = og.Tokenizer(self._model)
        self._engine = og.Engine(self._model)
        self._buffer = self._engine.create_event_buffer(max(64, 4 * self.max_batch))
        self._eos = {int(t) for t in self._tokenizer.eos_token_ids}
        genai_config = json.loads((self.genai / "genai_config.json").read_text())
        self.context = int(genai_config["model"]["context_length"])
        if self.max_context is not None:
            self.context = min(self.context, self.max_context)

    def _warm_up(self) -> None:
        loop: Any = _NullLoop()
        job = Job("Hello", Sampling(max_tokens=2, temperature=0.0), loop=loop)
        self._admit(job)
        while self._active:
            self._step()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._active and not self._waiting:
                    self._cv.wait(0.5)
                if self._stop and not self._active and not self._waiting:
                    return
                fresh: list[Job] = []
                # a request cancelled while it waits (its client left) leaves now, not
                # when the running batch ends
                gone = [job for job in self._waiting if job.cancelled]
                if gone:
                    self._waiting = collections.deque(j for j in self._waiting if not j.cancelled)
                if not self._active:
                    # A batch boundary: the Engine (static batching) takes new requests
                    # only now; anything admitted while a batch decodes waits for all of
                    # it. So new requests wait in our deque during a batch, and a new batch
                    # waits briefly for as many as were in flight during the last one
                    # (closed-loop clients send their next request a round trip after
                    # their last token): otherwise the first to come back starts a batch
                    # alone and the rest wait for it to finish.
                    self._gather()
                    while self._waiting and len(fresh) < self.max_batch:
                        fresh.append(self._waiting.popleft())
                    self._peak = len(fresh) + len(self._waiting)
                    if fresh:
                        self._batch_began = time.monotonic()
                if self._stop:
                    fresh += list(self._waiting)
                    self._waiting.clear()
            for job in gone:
                job._send(Finished("cancelled", 0, 0))
            for job in fresh:
                if job.cancelled:
                    job._send(Finished("cancelled", 0, 0))
                    continue
                self._admit(job)
            for job in list(self._active.values()):
                if job.cancelled and not job.done:
                    job.done = True
                    job.request.cancel_turn(job.turn)
            if self._active:
                self._peak = max(self._peak, len(self._active) + len(self._waiting))
                self._step()
                if not self._active:
                    self._last_batch_s = time.monotonic() - self._batch_began

    def _gather(self) -> None:
        """With the lock held and no batch running: wait (bounded) until as many requests
        wait as were in flight during the last batch, capped at `max_batch`. No wait when
        the last batch had one request (a lone client pays no extra latency)."""
        target = min(self.max_batch, self._peak)
        if target <= 1 or not self._waiting:
            return
        window = min(self.batch_wait, self.batch_wait_share * self._last_batch_s)
        deadline = time.monotonic() + window
        while not self._stop and len(self._waiting) < target:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _admit(self, job: Job) -> None:
        og = self._og
        s = job.sampling
        if isinstance(job.prompt, str):
            ids = np.asarray(self._tokenizer.encode(job.prompt), dtype=np.int32)
        else:
            ids = np.asarray(job.prompt, dtype=np.int32)
        n = int(ids.size)
        job.prompt_tokens = n
        if n == 0:
            job._send(Rejected(400, "the prompt is empty", job.prompt_param, "empty_prompt"))
            return
        if n >= self.context:
            job._send(
                Rejected(
                    400,
                    f"the prompt is {n} tokens; this model's context is {self.context} tokens "
                    "(prompt + completion must fit in it)",
                    job.prompt_param,
                    "context_length_exceeded",
                )
            )
            return
        room = self.context - n
        max_tokens = s.max_tokens if s.max_tokens is not None else s.default_max_tokens
        if max_tokens is None:
            max_tokens = room
        elif s.max_tokens is None:
            max_tokens = min(max_tokens, room)
        if max_tokens > room:
            job._send(
                Rejected(
                    400,
                    f"{s.max_tokens_param} is {max_tokens} but the prompt is {n} tokens and "
                    f"this model's context is {self.context} tokens: at most {room} new tokens "
                    "fit",
                    s.max_tokens_param,
                    "context_length_exceeded",
                )
            )
            return
        request = self._engine.create_request(options=og.RequestOptions())
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(max_tokens)
        if s.temperature <= 0.0:
            options.set_do_sample(False)
        else:
            options.set_do_sample(True)
            options.set_temperature(s.temperature)
            options.set_top_p(s.top_p)
            options.set_top_k(s.top_k if s.top_k > 0 else 0)
        job.request = request
        job.stream = self._tokenizer.create_stream()
        job.turn = request.begin_turn(ids, options)
        job.started_at = time.monotonic()
        self._active[id(request)] = job
        job._send(Admitted(prompt_tokens=n, max_tokens=max_tokens))

    def _step(self) -> None:
        og = self._og
        token_flag = int(og.EngineEventFlags.TOKEN.value)
        finished_flag = int(og.EngineEventFlags.TURN_FINISHED.value)
        failed_flag = int(og.EngineEventFlags.FAILED.value)
        events = self._engine.run(self._buffer)
        now = time.monotonic()
        out: dict[Any, list[tuple[Job, Event]]] = {}
        for event in events:
            job = self._active.get(id(event.request))
            if job is None:
                continue
            batch = out.get(job.loop)
            if batch is None:
                batch = out[job.loop] = []
            flags = int(event.flags)
            if flags & token_flag:
                token = int(event.token)
                if token not in self._eos:
                    job.generated += 1
                    job.pending.append(now)
                    text = job.stream.decode(token)
                    if text:
                        batch.append((job, Piece(text, job.pending)))
                        job.pending = []
            if flags & (finished_flag | failed_flag):
                reason = _reason(og, event, failed=bool(flags & failed_flag))
                self._active.pop(id(event.request), None)
                job.done = True
                job.request.close()
                batch.append(
                    (
                        job,
                        Finished(
                            reason,
                            job.prompt_tokens,
                            job.generated,
                            str(event.error_code) if reason == "error" else "",
                        ),
                    )
                )
        for loop, batch in out.items():
            if batch:
                # RuntimeError: the loop is closed, nobody is listening any more
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver, batch)


def _reason(og: Any, event: Any, *, failed: bool) -> str:
    if failed:
        return "error"
    finish = event.finish_reason
    if finish == og.FinishReason.CANCELLED:
        return "cancelled"
    if finish in (og.FinishReason.MAX_GENERATED_TOKENS, og.FinishReason.MAX_SESSION_TOKENS):
        return "length"
    if finish == og.FinishReason.FAILED:
        return "error"
    return "stop"


class _NullLoop:
    """A stand-in event loop for the warm-up job: events go nowhere."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass
