"""The server image serves a language model artifact: the operator runs the language
model's Deployment from the same server image as a tensor model's, so that image must hold
what serving an LLM artifact imports (onnxruntime-genai's tokenizer, jinja2's sandbox)
and nothing of the conversion stack (transformers, torch).

As in tests/shipping/test_image_contents.py, the image's Python environment is rebuilt
from this one: a `python -S` process sees only the distributions of ondeck's base
requirements plus the `[server]` extra, which is what Dockerfile.server installs."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from ondeck_server.convert.run import Outcome
from server.conftest import ServerProcess
from shipping.test_image_contents import SANDBOX, image_env, image_modules


def test_the_server_image_serves_a_language_model(int4_artifact: Outcome, tmp_path: Path) -> None:
    modules = image_modules("server")
    assert {"onnxruntime_genai", "jinja2", "onnxruntime"} <= modules
    assert not modules & {"torch", "transformers", "safetensors"}
    argv = ["serve", "--model", str(int4_artifact.path), "--name", "tiny"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--threads", "1"]
    env = image_env(
        "server", root=tmp_path, imports=[], main=("ondeck-server", "ondeck_server", argv)
    )
    server = ServerProcess(
        [], log=tmp_path / "server.log", env=env, command=[sys.executable, "-S", "-c", SANDBOX]
    )
    try:
        url = server.wait_ready(timeout=120)
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "The"}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=60,
        )
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        assert answer["usage"]["completion_tokens"] > 0
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert "No module named" not in server.output()
    finally:
        assert server.terminate() == 0, server.output()
