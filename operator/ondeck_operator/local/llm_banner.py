"""The banner for a language model (`format: hf-causal-lm`): the OpenAI-compatible
routes, a `curl` line for a chat completion and an openai-python snippet."""

from __future__ import annotations

import json

from ondeck_operator.local.banner import Banner, curl_line, sizes
from ondeck_operator.local.manifest import ConvertSummary

LLM_FORMAT = "hf-causal-lm"


def llm_banner(
    *, name: str, base_url: str, summary: ConvertSummary, token: str | None = None
) -> Banner:
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 32,
    }
    key = repr(token) if token else '"none"'
    lines = [
        f"ondeck: serving {name} (language model, OpenAI API) at {base_url}/v1",
        f"  artifact: {summary.path} ({sizes(summary)})",
        "  chat: " + curl_line(f"{base_url}/v1/chat/completions", json.dumps(body), token),
        "  python:",
        "    from openai import OpenAI",
        f'    client = OpenAI(base_url="{base_url}/v1", api_key={key})',
        f'    answer = client.chat.completions.create(model="{name}",',
        '        messages=[{"role": "user", "content": "Hello!"}], max_tokens=32)',
        "    print(answer.choices[0].message.content)",
        "Press Ctrl-C to stop.",
    ]
    return Banner(lines=lines)
