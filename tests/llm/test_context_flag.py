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
