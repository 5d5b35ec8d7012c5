"""The continuous-batching decoder (serve/llm/decoder.py) on the real tiny LLaMA artifact:
a sequence's logits do not depend on what else shares the batch, on which slot it holds,
or on its prompt being prefilled whole, padded beside others, or in chunks; the KV cache
it allocates is the one the operator sizes the pod for; a decoder of another shape is
refused with a message naming what it has. And sampling (serve/llm/sampling.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm.jobs import job_text
from ondeck_server import artifact
from ondeck_server.convert.run import Outcome
from ondeck_server.serve.llm.decoder import Decoder, DecoderError
from ondeck_server.serve.llm.engine import EngineWorker, Job, Sampling
from ondeck_server.serve.llm.sampling import penalized, pick

TOL = 1e-5
"""float tolerance: onnxruntime may pick another kernel for another batch size"""


def _prompts(artifact_dir: Path) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Config(str(artifact_dir / "genai")))
    texts = ["The for statement", "A class is a way to bundle data", "Lists"]
    return [np.asarray(tokenizer.encode(t), np.int64) for t in texts]


def _greedy_alone(
    genai: Path, prompt: np.ndarray[Any, np.dtype[np.int64]], steps: int
) -> tuple[list[int], list[np.ndarray[Any, Any]]]:
    decoder = Decoder(genai, slots=1, threads=1)
    logits = [decoder.prefill(0, [prompt])[0]]
    tokens = [int(logits[-1].argmax())]
    for i in range(steps):
        row = decoder.decode(1, np.array([tokens[-1]]), np.array([prompt.size + i]))[0]
        logits.append(row)
        tokens.append(int(row.argmax()))
    return tokens, logits


def test_a_rows_logits_do_not_depend_on_its_batch_or_slot(fp32_artifact: Outcome) -> None:
    genai = fp32_artifact.path / artifact.GENAI_DIR
    prompts = _prompts(fp32_artifact.path)
    steps = 12
    alone = [_greedy_alone(genai, p, steps) for p in prompts]
    # slots 0 and 1 prefilled together (right-padded), slot 2 left free (a dummy row),
    # slot 3 prefilled alone two steps late: lengths differ in every step
    decoder = Decoder(genai, slots=4, threads=1)
    first = decoder.prefill(0, prompts[:2])
    tokens = np.zeros(4, np.int64)
    lengths = np.zeros(4, np.int64)
    got: dict[int, list[np.ndarray[Any, Any]]] = {0: [first[0]], 1: [first[1]], 3: []}
    for slot in (0, 1):
        tokens[slot] = int(first[slot].argmax())
        lengths[slot] = prompts[slot].size
    for step in range(steps + 2):
        if step == 2:
            row = decoder.prefill(3, [prompts[2]])[0]
            got[3].append(row)
            tokens[3], lengths[3] = int(row.argmax()), prompts[2].size
        hi = 4 if step >= 2 else 2
        logits = decoder.decode(hi, tokens[:hi].copy(), lengths[:hi].copy())
        for slot in got:
            if slot < hi and len(got[slot]) <= steps:
                got[slot].append(logits[slot])
                tokens[slot] = int(logits[slot].argmax())
                lengths[slot] += 1
    for slot, index in ((0, 0), (1, 1), (3, 2)):
        expected_tokens, expected = alone[index]
        assert len(got[slot]) == steps + 1
        worst = max(float(np.abs(a - b).max()) for a, b in zip(got[slot], expected, strict=True))
        assert worst <= TOL, (slot, worst)
        assert [int(r.argmax()) for r in got[slot]] == expected_tokens


def test_a_prompt_prefilled_in_chunks_continues_like_one_prefilled_whole(
    fp32_artifact: Outcome,
) -> None:
    genai = fp32_artifact.path / artifact.GENAI_DIR
    prompt = np.concatenate(_prompts(fp32_artifact.path) * 3)
    whole = Decoder(genai, slots=2, threads=1).prefill(1, [prompt])[0]
    decoder = Decoder(genai, slots=2, threads=1)
    for start in range(0, prompt.size, 5):
        last = decoder.prefill(1, [prompt[: start + 5]], start=start)[0]
    assert float(np.abs(last - whole).max()) <= TOL
    with pytest.raises(ValueError, match="one prompt at a time"):
        decoder.prefill(0, [prompt, prompt], start=3)


def test_the_cache_is_what_the_operator_sizes_the_pod_for(fp32_artifact: Outcome) -> None:
    """The operator's kv_cache_bytes (render/sizing.py), from the report the conversion
    prints, equals the cache the server allocates for as many slots."""
    from ondeck_operator.reconcile import status
    from ondeck_operator.render import sizing

    summary = artifact.summary(
        fp32_artifact.manifest, path=fp32_artifact.path, ref=None, cached=False
    )
    report = status.parse_summary(json.dumps(summary), key="k")
    decoder = Decoder(fp32_artifact.path / artifact.GENAI_DIR, slots=3, threads=1)
    assert sizing.kv_cache_bytes(report, 3) == decoder.cache_bytes > 0


def test_a_decoder_of_another_shape_is_refused_naming_its_inputs(
    fp32_artifact: Outcome, tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    genai = tmp_path / "genai"
    genai.mkdir()
    shutil.copy(fp32_artifact.path / artifact.GENAI_DIR / "genai_config.json", genai)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["logits"])],
        "not-a-decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(genai / "model.onnx"))
    with pytest.raises(DecoderError, match=r"missing \['attention_mask'"):
        Decoder(genai, slots=1)


def test_sampling() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.5, -1.0], np.float32)
    assert pick(logits, temperature=0.0, top_p=1.0, top_k=0, rng=None) == 1
    rng = np.random.default_rng(0)
    # top_k 1 and a tiny top_p keep only the most likely token
    assert {pick(logits, temperature=1.0, top_p=1.0, top_k=1, rng=rng) for _ in range(50)} == {1}
    assert {pick(logits, temperature=1.0, top_p=1e-6, top_k=0, rng=rng) for _ in range(50)} == {1}
    # top_k 2 never leaves the two most likely; the seed fixes the sequence
    draws = [pick(logits, temperature=1.0, top_p=1.0, top_k=2, rng=rng) for _ in range(400)]
    assert set(draws) == {1, 3}
    again = np.random.default_rng(7)
    first = [pick(logits, temperature=0.8, top_p=0.9, top_k=0, rng=again) for _ in range(30)]
    again = np.random.default_rng(7)
    assert first == [
        pick(logits, temperature=0.8, top_p=0.9, top_k=0, rng=again) for _ in range(30)
    ]
    # the frequencies follow softmax(logits): p(1) / p(3) = e^0.5 ≈ 1.65 among the top 2
    ratio = draws.count(1) / draws.count(3)
    assert 1.2 < ratio < 2.3, ratio


def test_penalties_lower_what_was_generated() -> None:
    logits = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    out = penalized(logits, {2: 3, 0: 1}, presence=0.5, frequency=0.25)
    assert out.tolist() == [1.0 - 0.75, 2.0, 3.0 - 1.25, 0.5]
    assert logits.tolist() == [1.0, 2.0, 3.0, 0.5]  # the engine's row is left alone


def test_the_engine_applies_penalties_to_its_own_tokens_only(fp32_artifact: Outcome) -> None:
    """Greedy with presence and frequency penalties through the engine (beside an
    unpenalized request) equals a plain loop over the decoder that penalizes the tokens
    generated so far, and differs from the unpenalized text."""
    import asyncio

    import onnxruntime_genai as og

    genai = fp32_artifact.path / artifact.GENAI_DIR
    tokenizer = og.Tokenizer(og.Config(str(genai)))
    prompt = "The for statement"
    ids = np.asarray(tokenizer.encode(prompt), np.int64)
    decoder = Decoder(genai, slots=1, threads=1)
    row = decoder.prefill(0, [ids])[0]
    counts: dict[int, int] = {}
    tokens: list[int] = []
    eos = set(tokenizer.eos_token_ids)
    for step in range(20):
        token = int(np.argmax(penalized(row, counts, 1.5, 0.5) if counts else row))
        if token in eos:
            break
        tokens.append(token)
        counts[token] = counts.get(token, 0) + 1
        row = decoder.decode(1, np.array([token]), np.array([ids.size + step]))[0]
    stream = tokenizer.create_stream()
    expected = "".join(stream.decode(t) for t in tokens)

    async def go() -> list[str]:
        worker = EngineWorker(genai, max_batch=2, max_queue=4, threads=1)
        worker.start()
        try:
            assert await asyncio.to_thread(worker.ready.wait, 120)
            loop = asyncio.get_running_loop()
            jobs = [
                Job(prompt, Sampling(max_tokens=20, temperature=0.0, presence_penalty=1.5,
                                     frequency_penalty=0.5), loop=loop),
                Job(prompt, Sampling(max_tokens=20, temperature=0.0), loop=loop),
            ]  # fmt: skip
            for job in jobs:
                worker.submit(job)
            return list(await asyncio.gather(*(job_text(j) for j in jobs)))
        finally:
            worker.stop()

    penalized_text, plain_text = asyncio.run(go())
    assert penalized_text == expected != ""
    assert plain_text != penalized_text
