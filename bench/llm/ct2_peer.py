"""CTranslate2 as a second in-process peer for the language-model benchmark (issue 10,
"Benchmark"; a bench, not a test).

Measured like run.py's `raw_og` measures raw onnxruntime-genai: the same prompt, the same
number of new tokens, greedy, 1 intra-op thread (`intra_threads=1, inter_threads=1`), and
concurrency c as ONE batch of c copies of the prompt. c=1 streams through
`Generator.generate_tokens`; c>1 is one `generate_batch` call whose per-step callback
stamps each request's tokens. The prompt is forwarded at once in both
(`include_prompt_in_result=False`, which `generate_tokens` sets itself), as
onnxruntime-genai's `append_tokens` does. Returns run.py's summary dict (TTFT p50/p90,
inter-token ms, tokens/s, tokens).

The Hugging Face folder is converted offline, once per quantization, into a cache folder
(`ctranslate2.converters.TransformersConverter`; torch and transformers do the loading).
Measured with ctranslate2==4.8.5 (pip, CPU wheel; not a runtime dependency of ondeck).

    .venv/bin/python bench/llm/ct2_peer.py --folder MODEL_FOLDER --cache DIR \\
        [--quantization int8|none] [--concurrency 1 8] [--max-tokens 64] [--rounds 3] \\
        [--check-greedy]

Prints one JSON line per concurrency and, with --check-greedy, one per quantization
comparing CTranslate2's greedy tokens for the prompt with transformers' `generate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import PROMPT, _summary  # noqa: E402

QUANTIZATIONS = ("int8", "none")


def _source_stamp(folder: Path) -> dict[str, Any]:
    """What the cached conversion was made from: each weight file's size and mtime."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a Hugging Face model folder (config.json and *.safetensors "
            "or *.bin weights)"
        )
    return {
        "folder": str(folder.resolve()),
        "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files},
    }


def convert(folder: Path, cache: Path, quantization: str) -> Path:
    """The CTranslate2 model for `folder` at `quantization`, converted once into `cache`.

    A cached conversion is reused while the folder's weight files are unchanged (sizes and
    mtimes recorded next to it); otherwise it is converted again."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    import ctranslate2

    out = cache / f"ct2-{quantization}"
    stamp_file = out / "ondeck-source.json"
    stamp = _source_stamp(folder)
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    ctranslate2.converters.TransformersConverter(str(folder)).convert(
        str(out), quantization=None if quantization == "none" else quantization, force=True
    )
    # The converter writes the tokenizer's bos_token; a tokenizer without one (the bench
    # models' ChatML tokenizer) leaves null there, which CTranslate2 4.8 cannot load
    # ("type must be string, but is null"). The model config's bos_token_id names it.
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    if config.get("bos_token") is None:
        bos_id = json.loads((folder / "config.json").read_text()).get("bos_token_id")
        vocabulary = json.loads((out / "vocabulary.json").read_text())
        if not isinstance(bos_id, int) or not 0 <= bos_id < len(vocabulary):
            raise ValueError(
                f"{folder}: the tokenizer has no bos_token and config.json's bos_token_id "
                f"({bos_id!r}) is not in the vocabulary; CTranslate2 needs one"
            )
        config["bos_token"] = vocabulary[bos_id]
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    stamp_file.write_text(json.dumps(stamp) + "\n")
    return out


def prompt_tokens(folder: Path) -> list[str]:
    """The prompt as CTranslate2 takes it (token strings), from the folder's tokenizer.

    The same ids as onnxruntime-genai's `Tokenizer.encode` on the converted artifact
    (checked on the 94 M and tiny bench models)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT)["input_ids"]
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def load(model: Path) -> Any:
    import ctranslate2

    return ctranslate2.Generator(str(model), device="cpu", intra_threads=1, inter_threads=1)


def generate_stamped(
    generator: Any, tokens: list[str], concurrency: int, max_tokens: int
) -> tuple[float, list[list[float]]]:
    """One batch of `concurrency` copies of the prompt: its start time and, per request,
    the perf_counter stamp of each generated token."""
    if concurrency < 1 or max_tokens < 1:
        raise ValueError("concurrency and max_tokens must be at least 1")
    stamps: list[list[float]] = [[] for _ in range(concurrency)]
    if concurrency == 1:
        start = time.perf_counter()
        for _ in generator.generate_tokens(tokens, max_length=max_tokens, sampling_topk=1):
            stamps[0].append(time.perf_counter())
        return start, stamps

    def on_step(step: Any) -> bool:
        stamps[step.batch_id].append(time.perf_counter())
        return False

    start = time.perf_counter()
    generator.generate_batch(
        [tokens] * concurrency,
        max_length=max_tokens,
        beam_size=1,
        sampling_topk=1,
        include_prompt_in_result=False,
        callback=on_step,
    )
    return start, stamps


def ct2_generate(
    folder: Path,
    cache: Path,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    *,
    quantization: str = "int8",
) -> dict[str, Any]:
    """CTranslate2's row at one concurrency, in the shape run.py's `raw_og` returns."""
    generator = load(convert(folder, cache, quantization))
    tokens = prompt_tokens(folder)
    ttft: list[float] = []
    itl: list[float] = []
    total = 0
    wall = 0.0
    for _ in range(rounds):
        start, stamps = generate_stamped(generator, tokens, concurrency, max_tokens)
        wall += max(s[-1] for s in stamps if s) - start
        for s in stamps:
            if not s:
                continue
            ttft.append(s[0] - start)
            if len(s) > 1:
                itl.append((s[-1] - s[0]) / (len(s) - 1))
            total += len(s)
    return _summary(ttft, itl, total, wall)


def _reference_text() -> str:
    """Real English for the teacher-forced check: the pydoc "for" statement topic (ships
    with Python; the bench models' tokenizers are trained on pydoc topics)."""
    from pydoc_data import topics

    return str(topics.topics["for"])


def greedy_agreement(
    folder: Path, cache: Path, quantization: str, n: int = 32, positions: int = 128
) -> dict[str, Any]:
    """CTranslate2 (at `quantization`) against transformers (fp32 PyTorch) on the folder.

    - greedy: how many of the first `n` greedy tokens for the benchmark's prompt agree,
      position by position (`generate(do_sample=False)` vs `generate_batch`, both forced to
      `n` tokens);
    - teacher-forced: over the first `positions` tokens of a real text, how often the two
      logits' arg-max agree, and the largest absolute logit difference (a greedy
      continuation that repeats one token, as a barely trained model's does, agrees
      trivially; this does not)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT)["input_ids"]
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n
        )
    reference = [int(t) for t in out[0, len(ids) :]]
    generator = load(convert(folder, cache, quantization))
    result = generator.generate_batch(
        [tokenizer.convert_ids_to_tokens(ids)],
        max_length=n,
        min_length=n,
        beam_size=1,
        sampling_topk=1,
        include_prompt_in_result=False,
    )
    got = [int(t) for t in result[0].sequences_ids[0]]
    pairs = list(zip(got, reference, strict=False))
    first_diff = next((i for i, (a, b) in enumerate(pairs) if a != b), None)

    text_ids = tokenizer(_reference_text(), truncation=True, max_length=positions)["input_ids"]
    with torch.no_grad():
        hf_logits = model(torch.tensor([text_ids])).logits[0].numpy()
    ct2_logits = np.asarray(generator.forward_batch([text_ids]))[0]
    return {
        "quantization": quantization,
        "greedy_compared": len(pairs),
        "greedy_agree": sum(a == b for a, b in pairs),
        "greedy_first_difference": first_diff,
        "greedy_distinct_tokens": len(set(reference)),
        "teacher_forced_positions": len(text_ids),
        "teacher_forced_top1_agree": int((hf_logits.argmax(-1) == ct2_logits.argmax(-1)).sum()),
        "max_abs_logit_difference": float(f"{np.abs(hf_logits - ct2_logits).max():.3g}"),
        "ct2": got,
        "transformers": reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="converted models go here")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="int8")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--check-greedy", action="store_true", help="also compare greedy tokens, int8 and none"
    )
    args = parser.parse_args()
    import ctranslate2

    for c in args.concurrency:
        row = ct2_generate(
            args.folder, args.cache, c, args.max_tokens, args.rounds,
            quantization=args.quantization,
        )  # fmt: skip
        print(json.dumps({
            "server": f"ct2-{args.quantization}", "c": c, **row,
            "ctranslate2": ctranslate2.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }), flush=True)  # fmt: skip
    if args.check_greedy:
        for quantization in QUANTIZATIONS:
            print(json.dumps(greedy_agreement(args.folder, args.cache, quantization)), flush=True)


if __name__ == "__main__":
    main()
