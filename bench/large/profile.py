"""Where a conversion's memory goes (issue 11): run the pipeline in this process on a
model with external data and sample the process's RSS every 50 ms, attributing each
sample to the innermost step running (the pipeline's stages and the library calls inside
quantization, wrapped here for the measurement only). Prints the peak RSS of each step,
in GiB and as a multiple of the weights.

    .venv/bin/python bench/large/profile.py --gib 0.5 --mode int8 [--work DIR]

tracemalloc is no use here: the weights live in protobuf's C++ strings and numpy
buffers, which it does not see; RSS does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from run import GIB

_stack: list[str] = ["start"]
_peaks: dict[str, int] = {}
_order: list[str] = []


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _sample(stop: threading.Event) -> None:
    while not stop.is_set():
        label = " > ".join(_stack)
        rss = _rss()
        if label not in _peaks:
            _order.append(label)
        _peaks[label] = max(_peaks.get(label, 0), rss)
        time.sleep(0.05)


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    _stack.append(name)
    try:
        yield
    finally:
        _stack.pop()


def _wrap(module: str, attr: str) -> None:
    """Label calls of `module.attr` (a function or a method `Class.name`)."""
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def labelled(*args: Any, **kwargs: Any) -> Any:
        with _step(attr):
            return original(*args, **kwargs)

    setattr(owner, name, labelled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=0.5)
    parser.add_argument("--mode", default="int8")
    parser.add_argument("--work", type=Path)
    parser.add_argument(
        "--quantize-only",
        action="store_true",
        help="run only the quantize step, on the built model (external data at any size; "
        "the pipeline keeps external data only past 1.8 GB)",
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ondeck-profile-"))
    source = work / "src" / "large.onnx"
    source.parent.mkdir(parents=True, exist_ok=True)
    if not source.exists():  # in a child process: its memory is not this one's baseline
        here = str(Path(__file__).parent)
        code = (
            f"import sys; sys.path.insert(0, {here!r}); from pathlib import Path; "
            f"from run import build; build(Path({str(source)!r}), {args.gib})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    weights = sum(p.stat().st_size for p in source.parent.iterdir())

    from ondeck_server.convert import run
    from ondeck_server.convert.quantize import Quantize
    from ondeck_server.convert.validate import Thresholds

    q = "ondeck_server.convert.quantize"
    for module, attr in [
        ("ondeck_server.convert.convert_onnx", "convert_onnx"),
        ("ondeck_server.convert.run", "optimize"),
        ("ondeck_server.convert.run", "fetch"),
        ("ondeck_server.convert.run", "_fetch_external_data"),
        ("ondeck_server.convert.bounds", "check_tensor_sizes"),
        ("ondeck_server.convert.run", "_check_loads"),
        ("ondeck_server.convert.batch_check", "check"),
        ("ondeck_server.convert.store", "finish_files"),
        ("ondeck_server.convert.store", "clean_stale"),
        ("ondeck_server.convert.run", "quantize"),
        ("ondeck_server.convert.run", "_Gate.prepare"),
        ("ondeck_server.convert.run", "_Gate.judge"),
        ("ondeck_server.convert.run", "_manifest"),
        (q, "_pre_process"),
        (q, "_with_onnx_domain"),
        (q, "_int8_dynamic"),
        (q, "_int4"),
        ("onnxruntime.quantization.shape_inference", "quant_pre_process"),
        ("onnxruntime.quantization", "quantize_dynamic"),
        ("onnxruntime.quantization.quantize", "load_model_with_shape_infer"),
        ("onnxruntime.quantization.onnx_quantizer", "ONNXQuantizer.__init__"),
        ("onnxruntime.quantization.onnx_quantizer", "ONNXQuantizer.quantize_model"),
        ("onnxruntime.quantization.onnx_model", "ONNXModel.save_model_to_file"),
        ("onnxruntime.quantization.matmul_nbits_quantizer", "MatMulNBitsQuantizer.process"),
        ("ondeck_server.convert.onnx_tools", "save"),
    ]:
        with contextlib.suppress(ImportError, AttributeError):
            _wrap(module, attr)

    baseline = _rss()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop,), daemon=True)
    sampler.start()
    t = time.perf_counter()
    if args.quantize_only:
        from ondeck_server.convert.quantize import quantize

        out = work / f"q-{args.mode}" / "model.onnx"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        try:
            with _step("quantize"):
                # work next to the source, as the pipeline works next to optimized.onnx
                quantize(source, mode=Quantize(args.mode), out=out, work=source.parent)
        finally:
            stop.set()
            sampler.join()
        size = sum(p.stat().st_size for p in out.parent.glob("model.onnx*"))
        _report(f"{args.mode} (quantize only)", weights, time.perf_counter() - t, size, baseline)
        return 0
    shutil.rmtree(work / f"store-{args.mode}", ignore_errors=True)
    try:
        outcome = run.convert(
            run.ConvertRequest(
                source=str(source),
                store=work / f"store-{args.mode}",
                quantize=Quantize(args.mode),
                thresholds=Thresholds(samples=16, max_top1_disagreement=1.0),
            )
        )
    finally:
        stop.set()
        sampler.join()
    _report(args.mode, weights, time.perf_counter() - t, outcome.manifest.size_bytes, baseline)
    return 0


def _report(what: str, weights: int, wall: float, size: int, baseline: int) -> None:
    print(f"{what}: {weights / GIB:.2f} GiB of weights, {wall:.0f} s, artifact "
          f"{size / GIB:.2f} GiB; RSS before converting {baseline / GIB:.2f} GiB")  # fmt: skip
    print("| step | peak RSS GiB | / weights |")
    print("|---|---|---|")
    for label in _order:
        print(f"| {label} | {_peaks[label] / GIB:.2f} | {_peaks[label] / weights:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
