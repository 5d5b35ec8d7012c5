"""`--max-context-length`: the served context is the model's, capped by the flag
(what ModelDeployment `spec.llm.maxContextLength` renders into)."""

from __future__ import annotations

import httpx
import pytest

from ondeck_server.convert.run import Outcome
from server.conftest import ServerProcess


def test_max_context_length_caps_the_served_context(
    fp32_artifact: Outcome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("llm-context")
    proc = ServerProcess(
        ["--model", str(fp32_artifact.path), "--host", "127.0.0.1", "--port", "0",
         "--max-batch-size", "2", "--threads", "1", "--max-context-length", "32",
         "--name", "tiny"],
        log=logs / "server.log",
    )  # fmt: skip
    try:
        url = proc.wait_ready(timeout=120)
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        assert models["data"][0]["max_model_len"] == 32
        done = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "x " * 40, "max_tokens": 1},
            timeout=60,
        )
        assert done.status_code == 400, done.text
        assert done.json()["error"]["code"] == "context_length_exceeded"
        assert "32 tokens" in done.json()["error"]["message"]
    finally:
        assert proc.terminate() == 0, proc.output()


def test_default_sampling_flags_apply_to_requests_that_set_none(
    fp32_artifact: Outcome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`--default-*` (spec.llm.sampling): a request without max_tokens gets the default's
    5 tokens, without temperature greedy text, and a sampled request (temperature 1, no
    top_k) is cut to the default top_k of 1, which is greedy too; a request's own value
    wins over the default."""
    logs = tmp_path_factory.mktemp("llm-defaults")
    proc = ServerProcess(
        ["--model", str(fp32_artifact.path), "--host", "127.0.0.1", "--port", "0",
         "--max-batch-size", "2", "--threads", "1", "--name", "tiny",
         "--default-temperature", "0", "--default-top-k", "1", "--default-max-tokens", "5"],
        log=logs / "server.log",
    )  # fmt: skip
    try:
        url = proc.wait_ready(timeout=120)

        def complete(**extra: object) -> dict[str, object]:
            body = {"model": "tiny", "prompt": "The for statement", **extra}
            answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            result: dict[str, object] = answer.json()
            return result

        default = complete()
        assert default["usage"]["completion_tokens"] == 5  # type: ignore[index]
        greedy = complete(max_tokens=5, temperature=0)
        assert default["choices"][0]["text"] == greedy["choices"][0]["text"]  # type: ignore[index]
        sampled = complete(max_tokens=5, temperature=1.0, seed=11)
        assert sampled["choices"][0]["text"] == greedy["choices"][0]["text"]  # type: ignore[index]
        longer = complete(max_tokens=9, temperature=0)
        assert longer["usage"]["completion_tokens"] == 9  # type: ignore[index]
    finally:
        assert proc.terminate() == 0, proc.output()
