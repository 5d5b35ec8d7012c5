"""Build the tiny LLaMA-architecture model of this example into examples/tinyllm/model/:
a byte-level BPE tokenizer and a 2-layer LlamaForCausalLM trained offline on the
standard library's pydoc topics (no hub, no download). Training is not bitwise
reproducible; nothing depends on it being so.

    .venv/bin/python examples/tinyllm/make_model.py [--steps 2000]

2000 steps take a few CPU-minutes and give text that reads a little like the corpus;
the test suite uses the same builder with 250 steps (tests/llm/tinyllm.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from llm import tinyllm  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "model")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(tinyllm.build(args.out, steps=args.steps))
