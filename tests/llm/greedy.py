"""onnxruntime-genai's own batch-1 greedy search over an artifact's `genai` folder: the
text the server must give for a greedy request, computed without the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def og_greedy(genai: Path, prompt: str, new_tokens: int) -> tuple[str, int]:
    """The greedy text for `prompt` (end tokens dropped) and the prompt's length in
    tokens."""
    import onnxruntime_genai as og

    model = og.Model(og.Config(str(genai)))
    tokenizer = og.Tokenizer(model)
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[None, :])
    # decoded token by token, as the server streams it (decoding the whole list at once
    # differs where a character spans tokens)
    stream, eos, text = tokenizer.create_stream(), set(tokenizer.eos_token_ids), ""
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token not in eos:
            text += stream.decode(token)
    return text, len(ids)
