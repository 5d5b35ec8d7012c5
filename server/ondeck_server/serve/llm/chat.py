"""Chat templates rendered with jinja2's sandbox (as transformers does): onnxruntime-
genai's own template engine is a subset and fails on common filters."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ondeck_server.serve.llm.errors import ApiError


class ChatTemplate:
    def __init__(self, source: str, *, bos: str = "", eos: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent)
        self._template = env.from_string(source)
        self._bos = bos
        self._eos = eos

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as exc:
            raise ApiError(
                400, f"the model's chat template refused the messages: {exc}", param="messages"
            ) from None


def _raise(message: str) -> None:
    raise TemplateError(message)


def load(genai: Path) -> ChatTemplate | None:
    """The folder's template (chat_template.jinja, else tokenizer_config.json's)."""
    config: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((genai / "tokenizer_config.json").read_text())
    path = genai / "chat_template.jinja"
    source = path.read_text() if path.is_file() else config.get("chat_template")
    if isinstance(source, list):  # named templates: take the default
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(source, bos=_token(config, "bos_token"), eos=_token(config, "eos_token"))


def _token(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""
