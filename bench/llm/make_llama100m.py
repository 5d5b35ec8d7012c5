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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    text = tinyllm.corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=tinyllm.SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text[i : i + 4096] for i in range(0, len(text), 4096)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = tinyllm.CHATML
    fast.save_pretrained(folder)

    eos = bpe.token_to_id("<|im_end|>")
    pad = bpe.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    model = LlamaForCausalLM(config)
    losses = _train(model, bpe.encode(text).ids, steps=train_steps) if train_steps else []
    model.eval()
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    params = sum(p.numel() for p in model.parameters())

    torch.set_num_threads(1)
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
