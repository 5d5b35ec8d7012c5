"""The next token from one row of logits: greedy, or sampled with temperature, top-k and
top-p from the request's own random generator (so a `seed` gives the same text whatever
else the engine is decoding at the time)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def pick(
    logits: npt.NDArray[Any],
    *,
    temperature: float,
    top_p: float,
    top_k: int,
    rng: np.random.Generator | None,
) -> int:
    """Greedy when temperature is 0 (or no generator); otherwise softmax(logits / T) cut
    to the top_k most likely tokens (0: all), then to the smallest set whose probability
    reaches top_p, renormalised and sampled."""
    if temperature <= 0.0 or rng is None:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / temperature
    if 0 < top_k < scores.size:
        keep = np.argpartition(scores, -top_k)[-top_k:]
    else:
        keep = np.arange(scores.size)
    scores = scores[keep]
    order = np.argsort(-scores, kind="stable")
    keep, scores = keep[order], scores[order]
    probs = np.exp(scores - scores[0])
    probs /= probs.sum()
    if top_p < 1.0:
        # the smallest prefix whose mass reaches top_p (at least one token)
        cut = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        keep, probs = keep[:cut], probs[:cut]
        probs /= probs.sum()
    return int(keep[rng.choice(probs.size, p=probs)])


def log_softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """log p(token) for every token of one row of logits."""
    scores: npt.NDArray[np.float64] = logits.astype(np.float64)
    top = float(scores.max())
    out: npt.NDArray[np.float64] = scores - (top + float(np.log(np.exp(scores - top).sum())))
    return out


def top_tokens(logprobs: npt.NDArray[np.float64], n: int) -> list[int]:
    """The `n` most likely tokens, most likely first (ties: the lower id first)."""
    if n <= 0:
        return []
    n = min(n, logprobs.size)
    best = np.argpartition(-logprobs, n - 1)[:n]
    return [int(t) for t in best[np.lexsort((best, -logprobs[best]))]]


def penalized(
    logits: npt.NDArray[Any], counts: dict[int, int], presence: float, frequency: float
) -> npt.NDArray[np.float32]:
    """A copy of the row with OpenAI's penalties: each token already generated loses
    `presence` once and `frequency` per time it was generated."""
    out: npt.NDArray[np.float32] = logits.astype(np.float32, copy=True)
    tokens = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    out[tokens] -= presence + frequency * times
    return out
