"""How many requests onnxruntime-genai's Engine decodes per `Engine.run` (issue 10,
"Benchmark"; a probe, not a test): N greedy requests of a few tokens submitted at once,
with `engine.static_batching.max_batch_size` set by overlay, and the TOKEN events of each
step counted. On onnxruntime-genai 0.18.0 every setting gives at most 4 a step (its static
scheduler has `static_batch_size = 4` built in); see RESULTS.md.

    .venv/bin/python bench/llm/engine_batch_probe.py ARTIFACT_DIR [--requests 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def probe(artifact: Path, max_batch: int | None, requests: int) -> list[int]:
    import onnxruntime_genai as og

    config = og.Config(str(artifact / "genai"))
    if max_batch is not None:
        config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": max_batch}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    engine = og.Engine(model)
    buffer = engine.create_event_buffer(64)
    ids = np.asarray(tokenizer.encode("The for statement"), dtype=np.int32)
    token = int(og.EngineEventFlags.TOKEN.value)
    held = []  # a request that is garbage-collected is closed
    for _ in range(requests):
        request = engine.create_request(options=og.RequestOptions())
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(4)
        options.set_do_sample(False)
        request.begin_turn(ids, options)
        held.append(request)
    counts = []
    for _ in range(10_000):  # bounded: requests x 4 steps at most
        if not engine.has_pending_requests():
            break
        counts.append(sum(1 for e in engine.run(buffer) if int(e.flags) & token))
    for request in held:
        request.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    for max_batch in (None, 2, 8, 16):
        counts = probe(args.artifact, max_batch, args.requests)
        print(json.dumps({"max_batch_size": max_batch, "tokens_per_step": counts}))


if __name__ == "__main__":
    main()
