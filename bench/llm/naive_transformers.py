"""The naive baseline: an OpenAI-style streaming completions route written the way a
first FastAPI + transformers tutorial would (`model.generate` with a
TextIteratorStreamer in a thread per request, no batching across requests), fp32
PyTorch on the same Hugging Face folder, 1 intra-op thread like ondeck.

    python naive_transformers.py MODEL_FOLDER PORT
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


class Completion(BaseModel):
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0
    stream: bool = False


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    app = FastAPI()

    @app.post("/v1/completions")
    def complete(body: Completion) -> Any:
        ids = tokenizer(body.prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        kwargs = {**ids, "max_new_tokens": body.max_tokens, "do_sample": False}
        out: list[Any] = []
        thread = threading.Thread(
            target=lambda: out.append(model.generate(**kwargs, streamer=streamer)), daemon=True
        )
        thread.start()

        def events() -> Iterator[str]:
            for text in streamer:
                if text:
                    yield "data: " + json.dumps({"choices": [{"text": text}]}) + "\n\n"
            thread.join()
            # the token count, as an OpenAI server's final usage chunk gives it
            new = int(out[0].shape[1] - ids["input_ids"].shape[1]) if out else 0
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": new}})
            yield "\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
