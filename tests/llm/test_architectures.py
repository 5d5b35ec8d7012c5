"""Qwen2, Qwen3, Phi-3 and Mistral configs through the whole lane: `convert` (the
builder, then the gate against transformers on the same folder: fp32 passes exactly) and
the server's continuous-batching engine, whose greedy text for concurrent requests is
onnxruntime-genai's own generator's, token for token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from llm import tinyllm
from llm.jobs import BOUND_S, job_text
from ondeck_server.convert import ConvertRequest, convert
from ondeck_server.serve.llm.engine import EngineWorker, Job, Sampling

PROMPTS = ["The for statement", "A class is", "Lists and tuples are"]
NEW_TOKENS = 24


def _generator_text(genai: Path, prompt: str) -> str:
    import onnxruntime_genai as og

    model = og.Model(og.Config(str(genai)))
    tokenizer = og.Tokenizer(model)
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[None, :])
    stream, eos, text = tokenizer.create_stream(), set(tokenizer.eos_token_ids), ""
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token not in eos:
            text += stream.decode(token)
    return text


async def _served(genai: Path) -> list[str]:
    worker = EngineWorker(genai, max_batch=4, max_queue=8, threads=1)
    worker.start()
    try:
        assert await asyncio.to_thread(worker.ready.wait, BOUND_S)
        assert worker.failed is None, worker.failed

        async def one(prompt: str) -> str:
            job = Job(
                prompt,
                Sampling(max_tokens=NEW_TOKENS, temperature=0.0),
                loop=asyncio.get_running_loop(),
            )
            worker.submit(job)
            return await job_text(job)

        return list(await asyncio.gather(*(one(p) for p in PROMPTS)))
    finally:
        worker.stop()


@pytest.mark.parametrize("arch", sorted(tinyllm.ARCHITECTURES))
def test_an_architecture_converts_passes_the_gate_and_serves_the_generators_text(
    arch: str, tiny_folder: Path, tmp_path: Path
) -> None:
    folder = tinyllm.build_architecture(tmp_path / arch, arch, tokenizer_from=tiny_folder)
    done = convert(ConvertRequest(source=str(folder), store=tmp_path / "store"))
    report = done.manifest.validation
    assert report["passed"] is True
    assert report["greedy"]["agreement"] == 1.0
    genai = done.path / "genai"
    served = asyncio.run(_served(genai))
    assert served == [_generator_text(genai, p) for p in PROMPTS]
    assert all(served)
