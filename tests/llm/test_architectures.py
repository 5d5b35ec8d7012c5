"""Qwen2, Qwen3, Phi-3 and Mistral configs through the whole lane: `convert` (the
builder, then the gate against transformers on the same folder: fp32 passes exactly) and
the server's continuous-batching engine, whose greedy text for concurrent requests is
onnxruntime-genai's own generator's, token for token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llm import tinyllm
from llm.greedy import og_greedy
from llm.jobs import BOUND_S, job_text
from ondeck_server.convert import ConvertRequest, convert
from ondeck_server.serve.llm.engine import EngineWorker, Job, Sampling

PROMPTS = ["The for statement", "A class is", "Lists and tuples are"]
NEW_TOKENS = 24


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
    assert served == [og_greedy(genai, p, NEW_TOKENS)[0] for p in PROMPTS]
    assert all(served)
