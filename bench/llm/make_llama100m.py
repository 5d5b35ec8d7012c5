"""A ~100 M-parameter random-weight LLaMA-architecture Hugging Face folder, built offline
for speed work (issue 10, "Benchmark"; a bench helper, not a test; never committed).

The tiny test model (tests/llm/tinyllm.py: hidden 64, 2 layers) decodes a token in
~0.05 ms, so per-token overhead dominates every ratio and int4 gains nothing on it. This
one has the shape of a small real model: hidden 1024, 8 layers, 16 heads, 4 KV heads,
MLP 2816, vocabulary 2048 (the same byte-level BPE recipe as the tiny model, trained
on the pydoc topics text), context 1024: 94.4 M parameters, ~380 MB fp32.

The weights are random (seeded), so the text is noise. Two things keep every benchmark
request at its full length: the end-of-sequence token's row of the output head is zero
(its logit is exactly 0 while the largest of 2048 random logits is well above 0, so
greedy decoding never picks it) and the script checks that transformers' greedy output
for the benchmark prompt has no EOS in `--check-tokens` tokens.

    .venv/bin/python bench/llm/make_llama100m.py --out /tmp/llama100m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE))

from run import PROMPT  # noqa: E402

from llm import tinyllm  # noqa: E402

VOCAB = 2048
CONTEXT = 1024


def build(folder: Path, *, seed: int, check_tokens: int, train_steps: int) -> dict[str, object]:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    text = tinyllm.corpus()
    bpe = tinyllm.tokenizer(text, folder, vocab=VOCAB, context=CONTEXT)
    eos, pad = bpe.token_to_id("<|im_end|>"), bpe.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = tinyllm.llama_config(
        bpe, context=CONTEXT, hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=4
    )
    model = LlamaForCausalLM(config)
    losses = _train(model, bpe.encode(text).ids, steps=train_steps) if train_steps else []
    model.eval()
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    params = sum(p.numel() for p in model.parameters())

    torch.set_num_threads(1)
    fast = PreTrainedTokenizerFast.from_pretrained(folder)  # as saved for the builder
    ids = fast(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=check_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad
        )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    if eos in new or len(new) != check_tokens:
        raise SystemExit(f"greedy output stopped early ({len(new)} tokens): try another --seed")

    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(folder, safe_serialization=True)
    meta = {
        "params": params,
        "seed": seed,
        "train_steps": train_steps,
        "losses": losses,
        "checked_tokens": check_tokens,
    }
    (folder / "ondeck-llama100m.json").write_text(json.dumps(meta))
    return {"folder": str(folder), **meta}


def _train(model: Any, ids: list[int], *, steps: int) -> list[float]:
    """`steps` AdamW steps of 4 x 64 tokens (~10 s each at one thread): enough to move
    the logits off random towards the corpus' token frequencies, so int4's rounding no
    longer flips most top-1 predictions and convert's int4 gate (top-1 agreement >= 0.8)
    can pass. The text stays noise-like; this model is for speed, not for reading."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    seq, batch = 64, 4
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts.tolist()])
        out = model(input_ids=x, labels=x)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(round(float(out.loss), 3))
        print(f"step {step} loss {losses[-1]}", file=sys.stderr, flush=True)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-tokens", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=0, help="0: random weights")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    built = build(
        args.out, seed=args.seed, check_tokens=args.check_tokens, train_steps=args.train_steps
    )
    print(json.dumps(built))


if __name__ == "__main__":
    main()
