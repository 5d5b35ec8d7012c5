"""A small typed client for an ondeck endpoint (any V2 Open Inference Protocol server,
JSON encoding), local (`ondeck run`) or in a cluster; `ondeck predict` uses it.

    from ondeck_operator.local.client import Client

    with Client("http://127.0.0.1:8080", token=None) as client:
        outputs = client.infer("iris", [[5.1, 3.5, 1.4, 0.2]])
        outputs["probabilities"]          # a numpy array

Inputs are given as one array (a single-input model) or a mapping of input names to
arrays; each is cast to the datatype the model's metadata declares, and a row given
without its batch dimension gets one. Errors are `ClientError`s carrying the server's own
message (`{"error": "…"}`) and the HTTP status. Needs httpx.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import httpx

#: V2 datatypes and the numpy types they travel as.
V2_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NUMPY.items()}


class ClientError(Exception):
    """A request failed: the endpoint could not be reached, or answered an error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TensorMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int]

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {self.shape}"


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}`."""

    model_config = ConfigDict(extra="ignore")

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str = ""
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Tensor(BaseModel):
    """One tensor of a V2 JSON request or response."""

    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    def array(self) -> np.ndarray[Any, Any]:
        dtype = V2_TO_NUMPY.get(self.datatype, "object")
        return np.asarray(self.data, dtype=dtype).reshape(self.shape)

    @classmethod
    def of(cls, name: str, value: Any, meta: TensorMetadata | None = None) -> Tensor:
        """A request tensor from array-like `value`, cast to `meta`'s datatype, with a
        batch dimension added when `value` is one row of a batched input."""
        array = np.asarray(value)
        if meta is not None:
            if array.ndim == len(meta.shape) - 1 and meta.shape and meta.shape[0] == -1:
                array = array[np.newaxis, ...]
            dtype = V2_TO_NUMPY.get(meta.datatype)
            if dtype is not None and dtype != "object":
                array = array.astype(dtype)
            datatype = meta.datatype
        else:
            datatype = NUMPY_TO_V2.get(str(array.dtype), "BYTES")
        data = array.reshape(-1).tolist()
        if datatype == "BYTES":
            data = [d.decode() if isinstance(d, bytes) else str(d) for d in data]
        return cls(name=name, datatype=datatype, shape=list(array.shape), data=data)


class Client:
    """A V2 JSON client for one endpoint (`base_url`: `http://host:port`, or the prefix
    an Ingress serves it under)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError:  # pragma: no cover - the server extra brings it
            raise ClientError(
                "the ondeck client needs httpx: pip install httpx (or ondeck[server])"
            ) from None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._httpx = httpx
        self._metadata: dict[str, ModelMetadata] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except self._httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base_url}{path}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error") or response.text)
            except ValueError:
                message = response.text.strip() or response.reason_phrase
            raise ClientError(
                f"{method} {self.base_url}{path} answered {response.status_code}: {message}",
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{method} {self.base_url}{path} did not answer JSON: {response.text[:200]!r}",
                status=response.status_code,
            ) from None

    def ready(self) -> bool:
        """Whether the server is ready (`GET /v2/health/ready` answers 200)."""
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except self._httpx.HTTPError:
            return False

    def metadata(self, model: str) -> ModelMetadata:
        if model not in self._metadata:
            self._metadata[model] = ModelMetadata.model_validate(
                self._request("GET", f"/v2/models/{model}")
            )
        return self._metadata[model]

    def infer_raw(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a V2 JSON request as it is; the response as parsed JSON."""
        answer = self._request("POST", f"/v2/models/{model}/infer", body)
        if not isinstance(answer, dict):
            raise ClientError(f"/v2/models/{model}/infer answered {type(answer).__name__}")
        return answer

    def request_body(self, model: str, inputs: Mapping[str, Any] | Any) -> dict[str, Any]:
        """The V2 request for `inputs`: one array for a single-input model, or a mapping
        from input names to arrays."""
        meta = self.metadata(model)
        by_name = {t.name: t for t in meta.inputs}
        if not isinstance(inputs, Mapping):
            if len(meta.inputs) != 1:
                names = ", ".join(by_name)
                raise ClientError(
                    f"model {model} has {len(meta.inputs)} inputs ({names}): give a mapping "
                    "from input name to data"
                )
            inputs = {meta.inputs[0].name: inputs}
        unknown = sorted(set(inputs) - set(by_name))
        if unknown:
            raise ClientError(
                f"model {model} has no input {', '.join(unknown)}; its inputs: "
                + ", ".join(t.describe() for t in meta.inputs)
            )
        tensors = [Tensor.of(n, v, by_name[n]) for n, v in inputs.items()]
        return {"inputs": [t.model_dump() for t in tensors]}

    def infer_tensors(self, model: str, inputs: Mapping[str, Any] | Any) -> list[Tensor]:
        answer = self.infer_raw(model, self.request_body(model, inputs))
        return [Tensor.model_validate(t) for t in answer.get("outputs") or []]

    def infer(self, model: str, inputs: Mapping[str, Any] | Any) -> dict[str, Any]:
        """Run the model; its outputs by name, as numpy arrays."""
        return {t.name: t.array() for t in self.infer_tensors(model, inputs)}


__all__ = [
    "Client",
    "ClientError",
    "ModelMetadata",
    "Tensor",
    "TensorMetadata",
]
