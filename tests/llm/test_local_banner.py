"""`ondeck run` on a language model prints the OpenAI routes, a curl line and an
openai-python snippet instead of V2/V1 tensor requests."""

from __future__ import annotations

from ondeck_operator.local.banner import banner
from ondeck_operator.local.manifest import ConvertSummary


def _summary(fmt: str) -> ConvertSummary:
    return ConvertSummary.model_validate(
        {"digest": "d", "path": "/s/d", "inputs": [], "outputs": [], "sizeBytes": 1024,
         "originalSizeBytes": 4096, "quantize": "int4", "format": fmt}
    )  # fmt: skip


def test_llm_banner() -> None:
    shown = banner(
        name="tinyllm", base_url="http://127.0.0.1:8080", summary=_summary("hf-causal-lm"),
        token="s3cret",
    )  # fmt: skip
    text = "\n".join(shown.lines)
    assert "http://127.0.0.1:8080/v1/chat/completions" in text
    assert "Authorization: Bearer s3cret" in text
    assert "OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key='s3cret')" in text
    assert "/v2/models" not in text
    assert "quantize int4" in text


def test_tensor_banner_unchanged() -> None:
    shown = banner(name="m", base_url="http://h", summary=_summary("onnx"))
    assert "/v2/models/m" in shown.lines[0]
