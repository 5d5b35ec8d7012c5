"""A tiny LLaMA-architecture Hugging Face model folder, built offline (no hub).

- tokenizer: a byte-level BPE (`tokenizers`, vocab 512) trained on the standard
  library's `pydoc_data/topics.py` (text that ships with Python), with ChatML's special
  tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` and a ChatML chat template;
- model: `LlamaForCausalLM` from a config (hidden 64, 2 layers, 4 heads, 2 KV heads,
  context 256), trained for 250 steps (~30 s) on the same text so greedy output is not one
  token repeated; saved as safetensors.

Nothing depends on training being bitwise reproducible: the tests compare the served
model with transformers on the same folder, never with fixed strings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 512
CONTEXT = 256
HELD_OUT_CHARS = 20_000


def corpus() -> str:
    """The pydoc topics text (465 KB of English about Python)."""
    from pydoc_data import topics

    return "\n\n".join(str(v) for v in topics.topics.values())


def held_out_text() -> str:
    """Text the model was not trained on (the corpus' tail), for gates."""
    return corpus()[-HELD_OUT_CHARS:]


def for_tests(scratch: Path) -> Path:
    """The tiny model folder for a test session: built under `scratch`, or kept in
    `ONDECK_TINYLLM_CACHE` across sessions when that is set (built there once)."""
    cache = os.environ.get("ONDECK_TINYLLM_CACHE")
    if not cache:
        return build(scratch / "tinyllm")
    folder = Path(cache) / "tinyllm"
    if not (folder / "ondeck-tinyllm.json").is_file():
        build(folder)
    return folder


def build(folder: Path, *, steps: int = 250, seed: int = 0) -> Path:
    """Write the model folder; returns it. `steps` AdamW steps of 16 x 64 tokens at one
    thread (~30 s on a busy 2-core machine; loss 7.7 → ~3.2). Fewer leave the logits so
    flat that int4's rounding flips the top-1 token at half the positions."""
    import torch
    from transformers import LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    text = corpus()
    train_text = text[:-HELD_OUT_CHARS]

    bpe = tokenizer(train_text, folder, vocab=VOCAB, context=CONTEXT)
    eos, pad = bpe.token_to_id("<|im_end|>"), bpe.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = llama_config(
        bpe, context=CONTEXT, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2
    )
    model = LlamaForCausalLM(config)
    _train(model, bpe.encode(train_text).ids, steps=steps)
    model.eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(folder, safe_serialization=True)
    meta = {"steps": steps, "seed": seed}
    (folder / "ondeck-tinyllm.json").write_text(json.dumps(meta))
    return folder


def tokenizer(text: str, folder: Path, *, vocab: int, context: int) -> Any:
    """A byte-level BPE of `vocab` tokens trained on `text`, saved in `folder` as a Hugging
    Face tokenizer with the ChatML template and special tokens; the `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    bpe.train_from_iterator(chunks, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=context,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return bpe


def llama_config(
    bpe: Any,
    *,
    context: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
) -> Any:
    """A LLaMA `LlamaConfig` of these sizes for the tokenizer `bpe` (its ChatML end token
    is EOS, `<|endoftext|>` pads)."""
    from transformers import LlamaConfig

    eos, pad = bpe.token_to_id("<|im_end|>"), bpe.token_to_id("<|endoftext|>")
    return LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def _train(model: object, ids: list[int], *, steps: int) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = torch.tensor(ids, dtype=torch.long)
        seq, batch = 64, 16
        optim = torch.optim.AdamW(model.parameters(), lr=3e-3)  # type: ignore[attr-defined]
        model.train()  # type: ignore[attr-defined]
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
            x = torch.stack([data[s : s + seq] for s in starts.tolist()])
            out = model(input_ids=x, labels=x)  # type: ignore[operator]
            optim.zero_grad()
            out.loss.backward()
            optim.step()
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python tests/llm/tinyllm.py OUT
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(build(Path(sys.argv[1])))


#: Architectures besides LLaMA that onnxruntime-genai's builder exports for CPU, each as
#: (transformers config class, model class, extra config): the issue names Qwen2/2.5/3 and
#: Phi-3; Mistral is LLaMA with a sliding-window field.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": CONTEXT}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
}


def build_architecture(folder: Path, arch: str, *, tokenizer_from: Path, seed: int = 0) -> Path:
    """A random-weight model of `arch` (the tiny model's sizes) with the tokenizer files
    of `tokenizer_from`. Untrained: weights drawn with std 0.2, so its logits are spread
    enough that fp32 rounding never flips a greedy token; the text is noise."""
    import shutil

    import torch
    import transformers

    config_name, model_name, extra = ARCHITECTURES[arch]
    folder.mkdir(parents=True, exist_ok=True)
    for path in tokenizer_from.iterdir():
        if path.name.startswith("tokenizer") or path.name == "chat_template.jinja":
            shutil.copy(path, folder)
    base = json.loads((tokenizer_from / "config.json").read_text())
    config = getattr(transformers, config_name)(
        vocab_size=base["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"],
        pad_token_id=base["pad_token_id"],
        initializer_range=0.2,
        **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder
