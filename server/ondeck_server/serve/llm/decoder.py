"""The decoder of an onnxruntime-genai artifact, run by onnxruntime directly with a KV
cache of fixed slots: the part of continuous batching that touches the model.

onnxruntime-genai's `Engine` batches statically on CPU and decodes at most 4 sequences a
step (bench/llm/RESULTS.md), and its paged attention needs CUDA or WebGPU. The builder's
CPU model needs neither: its `GroupQueryAttention` reads each row's own length from the
attention mask (`seqlens_k` = the row's sum - 1) and, when a past and a present share one
buffer, writes each row's new keys and values at that row's own position. So one cache of
`slots` rows x `context` positions per layer serves sequences of any mix of lengths:

- a new sequence is prefilled into its own slot (a batch of one, or several new ones in
  adjacent slots right-padded together; a prompt longer than `chunk` in chunks, each chunk
  attending to the ones before through the cache);
- every decoding sequence advances one token per `decode` call, all in one batch over the
  slots `[0, hi)`; a free slot inside that range runs as a one-token dummy row whose
  writes land where the next prefill overwrites them.

A row's result depends only on its own tokens: each row's attention reads only its own
cache row, and every other op here works row by row (pinned by
tests/llm/test_decoder.py: the same tokens alone and in any batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class DecoderError(Exception):
    """The artifact's decoder is not the shape this engine runs."""


@dataclass(frozen=True)
class DecoderSpec:
    """What genai_config.json says about the decoder."""

    filename: str
    layers: int
    kv_heads: int
    head_size: int
    context: int
    vocab: int
    eos: tuple[int, ...]
    input_ids: str
    attention_mask: str
    position_ids: str | None
    past_key: str
    past_value: str
    logits: str
    present_key: str
    present_value: str

    @classmethod
    def read(cls, genai: Path) -> DecoderSpec:
        config = json.loads((genai / "genai_config.json").read_text())
        model = config["model"]
        decoder = model["decoder"]
        inputs = decoder["inputs"]
        outputs = decoder["outputs"]
        eos = model.get("eos_token_id", [])
        return cls(
            filename=decoder["filename"],
            layers=int(decoder["num_hidden_layers"]),
            kv_heads=int(decoder["num_key_value_heads"]),
            head_size=int(decoder["head_size"]),
            context=int(model["context_length"]),
            vocab=int(model["vocab_size"]),
            eos=tuple(int(t) for t in (eos if isinstance(eos, list) else [eos])),
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs.get("position_ids"),
            past_key=inputs["past_key_names"],
            past_value=inputs["past_value_names"],
            logits=outputs["logits"],
            present_key=outputs["present_key_names"],
            present_value=outputs["present_value_names"],
        )


class Decoder:
    def __init__(
        self,
        genai: Path,
        *,
        slots: int,
        context: int | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.spec = spec = DecoderSpec.read(genai)
        self.slots = slots
        self.context = min(spec.context, context) if context else spec.context
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(genai / spec.filename), options, providers=["CPUExecutionProvider"]
        )
        self._check(self.session, genai / spec.filename)
        self.kv_dtype = _DTYPES[self._types[spec.past_key % 0]]
        self.logits_dtype = _DTYPES[self._out_types[spec.logits]]
        shape = (slots, spec.kv_heads, self.context, spec.head_size)
        # np.zeros: the pages are mapped lazily, so the memory grows with what is used
        self._cache = [np.zeros(shape, self.kv_dtype) for _ in range(2 * spec.layers)]
        self._in = [spec.past_key % i for i in range(spec.layers)] + [
            spec.past_value % i for i in range(spec.layers)
        ]
        self._out = [spec.present_key % i for i in range(spec.layers)] + [
            spec.present_value % i for i in range(spec.layers)
        ]
        self._views: dict[tuple[int, int], list[Any]] = {}

    @property
    def cache_bytes(self) -> int:
        """2 (K and V) x layers x kv_heads x head_size x bytes x context x slots; the
        pages are touched only as sequences grow into them"""
        return sum(a.nbytes for a in self._cache)

    def _check(self, session: Any, path: Path) -> None:
        spec = self.spec
        self._types = {i.name: i.type for i in session.get_inputs()}
        self._out_types = {o.name: o.type for o in session.get_outputs()}
        want = {spec.input_ids, spec.attention_mask, spec.past_key % 0, spec.past_value % 0}
        if spec.position_ids:
            want.add(spec.position_ids)
        missing = sorted(want - set(self._types))
        unknown = sorted(
            n
            for n in self._types
            if n not in want
            and not n.startswith(spec.past_key.split("%")[0])
            and not n.startswith(spec.past_value.split("%")[0])
        )
        if missing or unknown:
            raise DecoderError(
                f"the decoder's inputs are {sorted(self._types)}; this engine runs "
                "onnxruntime-genai's CPU builder output (input_ids, attention_mask, "
                f"past key/value per layer): missing {missing}, unexpected {unknown}"
            )
        if self._types.get(spec.past_key % 0) not in _DTYPES:
            raise DecoderError(
                f"the KV cache's type {self._types.get(spec.past_key % 0)} "
                "is not float32 or float16"
            )
        if self._out_types.get(spec.logits) not in _DTYPES:
            raise DecoderError(f"the decoder has no float output named {spec.logits!r}")
        ops = _attention_ops(path)
        if ops and "GroupQueryAttention" not in ops:
            raise DecoderError(
                f"the decoder's attention is {sorted(ops)}; this engine needs "
                "GroupQueryAttention (onnxruntime-genai's builder for CPU)"
            )

    def _bound(self, lo: int, hi: int) -> list[Any]:
        """The cache rows [lo, hi) as OrtValues over the same memory (no copy): bound as
        both past and present, so onnxruntime writes the new positions in place."""
        views = self._views.get((lo, hi))
        if views is None:
            from_numpy = self._ort.OrtValue.ortvalue_from_numpy
            views = [from_numpy(a[lo:hi]) for a in self._cache]
            if len(self._views) > 4 * self.slots:
                self._views.clear()
            self._views[(lo, hi)] = views
        return views

    def _run(
        self,
        lo: int,
        hi: int,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        positions: npt.NDArray[np.int64] | None,
    ) -> npt.NDArray[Any]:
        spec = self.spec
        binding = self.session.io_binding()
        binding.bind_cpu_input(spec.input_ids, ids)
        binding.bind_cpu_input(spec.attention_mask, mask)
        if spec.position_ids and positions is not None:
            binding.bind_cpu_input(spec.position_ids, positions)
        logits = np.empty((ids.shape[0], ids.shape[1], spec.vocab), self.logits_dtype)
        binding.bind_output(
            spec.logits, "cpu", 0, self.logits_dtype, list(logits.shape), logits.ctypes.data
        )
        for name_in, name_out, value in zip(self._in, self._out, self._bound(lo, hi), strict=True):
            binding.bind_ortvalue_input(name_in, value)
            binding.bind_ortvalue_output(name_out, value)
        self.session.run_with_iobinding(binding)
        return logits

    def prefill(
        self, lo: int, prompts: list[npt.NDArray[np.int64]], start: int = 0
    ) -> npt.NDArray[Any]:
        """Write `prompts[i][start:]` into slot `lo + i` (the first `start` positions are
        in the cache already: an earlier chunk); the next-token logits of each row.
        Several rows only with start 0 (right-padded: a row's padding lands past its
        length, where its own decoding overwrites it)."""
        n = len(prompts)
        if n > 1 and start:
            raise ValueError("a continued prefill runs one prompt at a time")
        lengths = [p.size for p in prompts]
        width = max(lengths) - start
        ids = np.zeros((n, width), np.int64)
        mask = np.zeros((n, start + width), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : prompt.size - start] = prompt[start:]
            mask[row, : prompt.size] = 1
        positions = None
        if self.spec.position_ids:
            positions = np.tile(np.arange(start, start + width, dtype=np.int64), (n, 1))
        logits = self._run(lo, lo + n, ids, mask, positions)
        return np.stack([logits[row, size - start - 1] for row, size in enumerate(lengths)])

    def decode(
        self, hi: int, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[Any]:
        """One step for slots [0, hi): row r feeds `tokens[r]` at position `lengths[r]`
        (its cache holds that many); a free slot has length 0. The logits per row."""
        width = int(lengths.max()) + 1
        mask = (np.arange(width, dtype=np.int64)[None, :] <= lengths[:, None]).astype(np.int64)
        positions = lengths[:, None] if self.spec.position_ids else None
        return self._run(0, hi, tokens[:, None], mask, positions)[:, 0]


def _attention_ops(path: Path) -> set[str]:
    """The attention op types in the decoder's graph (read without its weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node if "Attention" in node.op_type}
