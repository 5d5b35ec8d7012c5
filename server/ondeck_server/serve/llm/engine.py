"""Continuous batching: ONE decoder (decoder.py: onnxruntime over the artifact's model
with a KV cache of `max_batch` slots), owned by ONE thread, fed from a bounded queue.

Every model and tokenizer call (loading, tokenizing, prefill, decode, detokenizing)
happens on the worker thread. The event loop talks to it through `submit` (a job into
the waiting deque, 429 past `max_queue`) and `Job.cancel`; the worker answers each job
through its own asyncio queue (`call_soon_threadsafe`), so every client gets exactly
its own tokens. Each turn of the worker's loop admits waiting jobs into free slots
(prefilled at once, so a new request never waits for the others to finish), then
decodes one token for every running job in one batch; at most `max_batch` run, the
others wait in order. A cancelled job (client gone, stop string seen, drain deadline)
leaves on the worker's next turn, which frees its slot.

A decode step of a small model costs well under a millisecond, so the handoff is built to
cost less than that: each step's events for all its jobs cross to the event loop in ONE
`call_soon_threadsafe` (one wake-up of the loop, not one per token), and a reader that
finds several pieces waiting takes them together (`Job.drain`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ondeck_server.serve.llm.sampling import log_softmax, penalized, pick, top_tokens

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
    seed: int | None = None
    """the request's own random generator: the same text whatever else runs with it"""
    logprobs: int | None = None
    """None: no log-probabilities; n ≥ 0: each token's, with the n most likely others"""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once it has been generated / per time"""


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
class TokenLogprob:
    """One generated token's log-probability under the model (before temperature and
    top-k/top-p), and the `Sampling.logprobs` most likely tokens at that position."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Piece:
    text: str
    tokens: list[float]
    """when each token in `text` came out of the engine (monotonic s), for TTFT/ITL"""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """one per token, when the request asked for them"""


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
    ids: Any = None
    """the prompt's token ids (int64)"""
    slot: int = -1
    cursor: int = 0
    """prompt tokens already in the cache (the prefill's progress)"""
    next_token: int = -1
    """sampled, sent, not yet in the cache: the next decode step feeds it"""
    limit: int = 0
    rng: Any = None
    stream: Any = None
    pending: list[float] = field(default_factory=list)
    """stamps of tokens the detokenizer holds back (part of a UTF-8 character)"""
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    """how often each token was generated (the penalties' input)"""

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
                out[-1] = Piece(
                    last.text + event.text,
                    last.tokens + event.tokens,
                    last.logprobs + event.logprobs,
                )
            else:
                out.append(event)
        return out


def _deliver(batch: list[tuple[Job, Event]]) -> None:
    """On the event loop: one step's events, in the engine's order."""
    for job, event in batch:
        job.events.put_nowait(event)


def _hand_over(out: dict[Any, list[tuple[Job, Event]]]) -> None:
    """Each event loop's events of one step, in one wake-up of that loop."""
    for loop, batch in out.items():
        if batch:
            # RuntimeError: the loop is closed, nobody is listening any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, batch)


PREFILL_LOGITS_BYTES = 64 * 2**20
"""A prefill call's logits (rows x positions x vocabulary floats) stay under this: a
152k-token vocabulary is prefilled 110 positions at a time, a 2k one 256 (`prefill_chunk`)."""


def prefill_positions(requested: int, vocab: int, itemsize: int) -> int:
    """Positions one prefill call may hold: `requested`, fewer when their logits would pass
    PREFILL_LOGITS_BYTES, never under 16."""
    return max(16, min(requested, PREFILL_LOGITS_BYTES // (vocab * itemsize)))


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
        prefill_chunk: int = 256,
    ) -> None:
        self.genai = genai
        self.max_context = max_context
        """`--max-context-length`: caps the model's context (prompt + output tokens)"""
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.threads = threads
        self.prefill_chunk = prefill_chunk
        """a longer prompt is prefilled in pieces of this many tokens (fewer for a large
        vocabulary: PREFILL_LOGITS_BYTES), each followed by a decode step of the running
        jobs (their streams do not stall for a long prompt)"""
        self._chunk = prefill_chunk
        self.context = 0
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.serving = False
        """loaded and warmed up: a failure after this is the engine's, not the model's load"""
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: dict[int, Job] = {}
        """slot -> job"""
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
        self.serving = True
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

        from ondeck_server.serve.llm.decoder import Decoder

        self._decoder = Decoder(
            self.genai, slots=self.max_batch, context=self.max_context, threads=self.threads
        )
        self.context = self._decoder.context
        self._chunk = prefill_positions(
            self.prefill_chunk,
            self._decoder.spec.vocab,
            np.dtype(self._decoder.logits_dtype).itemsize,
        )
        # the tokenizer only: onnxruntime-genai never loads the model here
        self._tokenizer = og.Tokenizer(og.Config(str(self.genai)))
        self._token_texts: dict[int, str] = {}
        self._eos = {int(t) for t in self._tokenizer.eos_token_ids} | set(self._decoder.spec.eos)

    def _warm_up(self) -> None:
        loop: Any = _NullLoop()
        job = Job("Hello", Sampling(max_tokens=2, temperature=0.0), loop=loop)
        self._admit(job)
        while self._active:
            self._turn()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._active and not self._waiting:
                    self._cv.wait(0.5)
                if self._stop and not self._active and not self._waiting:
                    return
                # a request cancelled while it waits leaves now, not when a slot frees
                gone = [job for job in self._waiting if job.cancelled or self._stop]
                if gone:
                    self._waiting = collections.deque(
                        j for j in self._waiting if not (j.cancelled or self._stop)
                    )
                fresh: list[Job] = []
                while self._waiting and len(self._active) + len(fresh) < self.max_batch:
                    fresh.append(self._waiting.popleft())
            for job in gone:
                job._send(Finished("cancelled", 0, 0))
            for job in fresh:
                self._admit(job)
            self._turn()

    def _turn(self) -> None:
        """Cancelled jobs leave, new ones are prefilled, every running one decodes one
        token; the events of each step cross to each event loop in one hand-off."""
        out: dict[Any, list[tuple[Job, Event]]] = {}
        for job in list(self._active.values()):
            if job.cancelled:
                self._finish(job, "cancelled", out)
        self._prefill(out)
        # first tokens go out before the decode step, not after it (TTFT)
        _hand_over(out)
        out = {}
        self._decode(out)
        _hand_over(out)

    def _admit(self, job: Job) -> None:
        s = job.sampling
        if job.cancelled:
            job._send(Finished("cancelled", 0, 0))
            return
        if isinstance(job.prompt, str):
            ids = np.asarray(self._tokenizer.encode(job.prompt), dtype=np.int64)
        else:
            ids = np.asarray(job.prompt, dtype=np.int64)
        n = int(ids.size)
        job.prompt_tokens = n
        if n == 0:
            job._send(Rejected(400, "the prompt is empty", job.prompt_param, "empty_prompt"))
            return
        vocab = self._decoder.spec.vocab
        low, high = int(ids.min()), int(ids.max())
        if high >= vocab or low < 0:
            bad = high if high >= vocab else low
            job._send(
                Rejected(
                    400,
                    f"the prompt holds token id {bad}; this model's vocabulary is 0-{vocab - 1}",
                    job.prompt_param,
                    "invalid_token_id",
                )
            )
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
        job.ids = ids
        job.limit = max_tokens
        job.cursor = 0
        job.slot = min(set(range(self.max_batch)) - set(self._active))
        if s.temperature > 0.0:
            job.rng = np.random.default_rng(s.seed)
        job.stream = self._tokenizer.create_stream()
        job.started_at = time.monotonic()
        self._active[job.slot] = job
        job._send(Admitted(prompt_tokens=n, max_tokens=max_tokens))

    def _prefill(self, out: dict[Any, list[tuple[Job, Event]]]) -> None:
        """Every new prompt that fits in one chunk, adjacent slots together; then one
        chunk of one longer prompt."""
        chunk = self._chunk
        whole = sorted(
            (j for j in self._active.values() if j.cursor == 0 and 0 < j.ids.size <= chunk),
            key=lambda j: j.slot,
        )
        runs: list[list[Job]] = []
        for job in whole:
            # rows are padded to the run's longest prompt: at most `chunk` positions in all
            if (
                runs
                and runs[-1][-1].slot + 1 == job.slot
                and (len(runs[-1]) + 1) * max(job.ids.size, *(j.ids.size for j in runs[-1]))
                <= chunk
            ):
                runs[-1].append(job)
            else:
                runs.append([job])
        for run in runs:
            try:
                logits = self._decoder.prefill(run[0].slot, [j.ids for j in run])
            except Exception as exc:  # these requests fail, the others go on
                log.warning("prefill of %d requests failed: %s", len(run), exc)
                for job in run:
                    self._finish(job, "error", out, message=str(exc))
                continue
            now = time.monotonic()
            for job, row in zip(run, logits, strict=True):
                job.cursor = job.ids.size
                self._emit(job, row, now, out)
        longer = next((j for j in self._active.values() if j.cursor < j.ids.size), None)
        if longer is not None:
            end = min(longer.cursor + chunk, longer.ids.size)
            try:
                logits = self._decoder.prefill(longer.slot, [longer.ids[:end]], start=longer.cursor)
            except Exception as exc:  # this request fails, the others go on
                log.warning("prefill failed: %s", exc)
                self._finish(longer, "error", out, message=str(exc))
                return
            longer.cursor = end
            if end == longer.ids.size:
                self._emit(longer, logits[0], time.monotonic(), out)

    def _decode(self, out: dict[Any, list[tuple[Job, Event]]]) -> None:
        running = [j for j in self._active.values() if j.next_token >= 0]
        if not running:
            return
        hi = max(self._active) + 1
        tokens = np.zeros(hi, np.int64)
        lengths = np.zeros(hi, np.int64)
        for job in self._active.values():
            if job.next_token >= 0:
                tokens[job.slot] = job.next_token
                lengths[job.slot] = job.ids.size + job.generated - 1
            else:
                # a prompt still being prefilled runs as a dummy row at its cursor: its
                # next chunk overwrites that position
                lengths[job.slot] = job.cursor
        logits = self._decoder.decode(hi, tokens, lengths)
        now = time.monotonic()
        for job in running:
            self._emit(job, logits[job.slot], now, out)

    def _emit(
        self, job: Job, logits: Any, now: float, out: dict[Any, list[tuple[Job, Event]]]
    ) -> None:
        s = job.sampling
        scores = logits
        if job.counts and (s.presence_penalty or s.frequency_penalty):
            scores = penalized(logits, job.counts, s.presence_penalty, s.frequency_penalty)
        token = pick(scores, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                     rng=job.rng)  # fmt: skip
        job.next_token = -1
        if token in self._eos:
            self._finish(job, "stop", out)
            return
        job.generated += 1
        job.counts[token] = job.counts.get(token, 0) + 1
        job.pending.append(now)
        if s.logprobs is not None:
            job.pending_logprobs.append(self._logprob(logits, token, s.logprobs))
        text = job.stream.decode(token)
        if text:
            self._batch(job, out).append((job, Piece(text, job.pending, job.pending_logprobs)))
            job.pending = []
            job.pending_logprobs = []
        if job.generated >= job.limit:
            self._finish(job, "length", out)
        else:
            job.next_token = token

    def _logprob(self, logits: Any, token: int, top: int) -> TokenLogprob:
        logprobs = log_softmax(logits)
        best = top_tokens(logprobs, top)
        return TokenLogprob(
            self._text(token),
            float(logprobs[token]),
            [(self._text(t), float(logprobs[t])) for t in best],
        )

    def _text(self, token: int) -> str:
        """One token's own text (a piece of a UTF-8 character reads as U+FFFD)."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._tokenizer.decode(np.asarray([token], dtype=np.int32))
            self._token_texts[token] = text
        return text

    def _finish(
        self,
        job: Job,
        reason: str,
        out: dict[Any, list[tuple[Job, Event]]],
        *,
        message: str = "",
    ) -> None:
        self._active.pop(job.slot, None)
        job.next_token = -1
        self._batch(job, out).append(
            (job, Finished(reason, job.prompt_tokens, job.generated, message))
        )

    @staticmethod
    def _batch(job: Job, out: dict[Any, list[tuple[Job, Event]]]) -> list[tuple[Job, Event]]:
        batch = out.get(job.loop)
        if batch is None:
            batch = out[job.loop] = []
        return batch


class _NullLoop:
    """A stand-in event loop for the warm-up job: events go nowhere."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass
