"""The naive baseline: the V2 infer route written the way a FastAPI tutorial would,
with pydantic request/response models and a sync endpoint (run in FastAPI's thread
pool). Same onnxruntime session settings as ondeck (1 intra-op thread).

    python baseline_fastapi.py MODEL.onnx NAME PORT
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestInput]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[ResponseOutput]


def build(model: str, name: str) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    def infer(model_name: str, request: InferenceRequest) -> InferenceResponse:
        feeds = {
            i.name: np.asarray(i.data, dtype=np.float32).reshape(i.shape) for i in request.inputs
        }
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        return InferenceResponse(
            model_name=name,
            id=request.id,
            outputs=[
                ResponseOutput(
                    name=n, shape=list(r.shape), datatype="FP32", data=r.reshape(-1).tolist()
                )
                for n, r in zip(names, results, strict=True)
            ],
        )

    return app


if __name__ == "__main__":
    model_path, model_name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvicorn.run(build(model_path, model_name), host="127.0.0.1", port=port, log_level="warning")
