"""Language-model serving benchmark (issue 10, "Benchmark"; a bench, not a test).

One run, one model, 1 intra-op thread everywhere: raw onnxruntime-genai in process (the
limit), ondeck over HTTP (`ondeck-server serve`, streaming /v1/completions) and a naive
transformers + FastAPI server (naive_transformers.py, fp32 PyTorch on the same folder).
Greedy, `--max-tokens` new tokens per request, at concurrency 1, 8 and 16
(`--concurrency`); reports time to first token (p50/p90), inter-token latency (mean gap
between a request's first and last token), aggregate tokens/s, the machine's cores and
load average.

    .venv/bin/python bench/llm/run.py --folder MODEL_FOLDER [--quantize int4] [--out DIR]

MODEL_FOLDER: a Hugging Face causal-LM folder, e.g. examples/tinyllm/model
(examples/tinyllm/make_model.py builds it). Raw onnxruntime-genai at concurrency c runs
one static batch of c copies of the prompt (a Generator with batch_size c).

Optional columns (off by default; without them the run and its output are as before):
`--ct2 DIR` adds CTranslate2 rows ("ct2-int8 c=N", ct2_peer.py: the folder converted
once into DIR, measured like raw onnxruntime-genai; needs `pip install ctranslate2`);
`--bandwidth` measures the machine's single-thread read bandwidth (bandwidth.py) and
reports the share of it raw onnxruntime-genai's c=1 decode step reaches (and the
CTranslate2 c=1 step's, with --ct2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PROMPT = "The for statement is used to iterate over the elements of a sequence"
CONCURRENCY = (1, 8, 16)
SERVERS = ("raw", "ondeck", "naive")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def convert(folder: Path, store: Path, quantize: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "convert", "--source", str(folder),
         "--store", str(store), "--format", "hf-causal-lm", "--quantize", quantize],
        capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["path"])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(ttft: list[float], itl: list[float], tokens: int, wall: float) -> dict[str, Any]:
    return {
        "ttft_p50_ms": round(1000 * _pct(ttft, 0.5), 2),
        "ttft_p90_ms": round(1000 * _pct(ttft, 0.9), 2),
        "itl_ms": round(1000 * statistics.mean(itl), 2) if itl else None,
        "tokens_per_s": round(tokens / wall, 1),
        "tokens": tokens,
    }


def raw_og(artifact: Path, concurrency: int, max_tokens: int, rounds: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    config = og.Config(str(artifact / "genai"))
    config.overlay(
        json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 1}}}})
    )
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(PROMPT)
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    wall = 0.0
    for _ in range(rounds):
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=False, max_length=len(ids) + max_tokens, batch_size=concurrency
        )
        start = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens([list(ids)] * concurrency)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
        wall += stamps[-1] - start
        ttft += [stamps[0] - start] * concurrency
        if len(stamps) > 1:
            itl += [(stamps[-1] - stamps[0]) / (len(stamps) - 1)] * concurrency
        tokens += len(stamps) * concurrency
    return _summary(ttft, itl, tokens, wall)


def http_clients(
    url: str, model: str, concurrency: int, max_tokens: int, rounds: int, count: Any
) -> dict[str, Any]:
    """`concurrency` clients, each sending `rounds` streaming requests back to back.

    The clients only stamp and keep what each read returns; the SSE parsing and token
    counting happen after the clock stops, so the clients' own Python (on the same two
    cores and, within this process, one GIL) costs the servers as little as it can."""
    reads: list[tuple[float, list[tuple[float, bytes]]]] = []
    lock = threading.Lock()
    body = {
        "model": model, "prompt": PROMPT, "max_tokens": max_tokens,
        "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            for _ in range(rounds):
                start = time.perf_counter()
                got: list[tuple[float, bytes]] = []
                with http.stream("POST", url, json=body) as response:
                    response.raise_for_status()
                    for data in response.iter_raw():
                        got.append((time.perf_counter(), data))
                with lock:
                    reads.append((start, got))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - start
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    for began, got in reads:
        first = last = None
        usage: int | None = None
        text = ""
        buffer = b""
        for stamp, data in got:
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                chunk = json.loads(event[6:])
                if chunk.get("usage"):
                    usage = int(chunk["usage"]["completion_tokens"])
                piece = (chunk.get("choices") or [{}])[0].get("text") or ""
                if piece:
                    last = stamp
                    first = first or stamp
                    text += piece
        # the server's own count when it sends one (re-tokenizing the text merges
        # tokens of a random-weight model's output), else the text re-tokenized
        n = usage if usage is not None else count(text)
        if first is not None and last is not None:
            ttft.append(first - began)
            if n > 1:
                itl.append((last - first) / (n - 1))
        tokens += n
    return _summary(ttft, itl, tokens, wall)


def token_counter(folder: Path) -> Callable[[str], int]:
    """Tokens in a streamed text, counted with the model folder's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def serve(argv: list[str], ready: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(ready, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def ct2_rows(args: argparse.Namespace, runs: dict[str, Any], results: dict[str, Any]) -> Path:
    """CTranslate2's rows (ct2_peer.py), after raw onnxruntime-genai's; returns its model."""
    import ctranslate2
    from ct2_peer import convert as ct2_convert
    from ct2_peer import ct2_generate

    quantization = args.ct2_quantization
    model = ct2_convert(args.folder, args.ct2, quantization)
    results["settings"]["ct2"] = {
        "version": ctranslate2.__version__,
        "quantization": quantization,
        "model": str(model),
    }
    for c in args.concurrency:
        name = f"ct2-{quantization} c={c}"
        runs[name] = ct2_generate(
            args.folder, args.ct2, c, args.max_tokens, args.rounds, quantization=quantization
        )
        print(name, runs[name], flush=True)
    return model


def bandwidth_rows(
    artifact: Path, ct2_model: Path | None, ct2_name: str, runs: dict[str, Any]
) -> dict[str, Any]:
    """The machine's read bandwidth and the share of it each c=1 decode step reaches."""
    from bandwidth import ceiling_fraction, read_bandwidth, weight_bytes

    machine = read_bandwidth()
    got: dict[str, Any] = {"machine": machine}
    steps = {"raw-og c=1": artifact}
    if ct2_model is not None:
        steps[f"{ct2_name} c=1"] = ct2_model
    for name, weights in steps.items():
        if runs.get(name, {}).get("itl_ms"):
            got[name] = ceiling_fraction(
                weight_bytes(weights), runs[name]["itl_ms"], machine["read_gb_s"]
            )
    print("bandwidth", json.dumps(got), flush=True)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--quantize", default="int4")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--max-batch-size", type=int, default=16, help="ondeck's")
    parser.add_argument(
        "--artifact", type=Path, help="an artifact already converted with --quantize"
    )
    parser.add_argument(
        "--ct2", type=Path, metavar="DIR", help="add CTranslate2 rows; converted models go here"
    )
    parser.add_argument("--ct2-quantization", choices=("int8", "none"), default="int8")
    parser.add_argument(
        "--bandwidth", action="store_true", help="the %% of read bandwidth raw og's c=1 reaches"
    )
    args = parser.parse_args()
    if args.bandwidth and ("raw" not in args.servers or 1 not in args.concurrency):
        parser.error("--bandwidth needs raw onnxruntime-genai at concurrency 1 (--servers raw)")
    if args.bandwidth and args.max_tokens < 2:
        parser.error("--bandwidth needs --max-tokens >= 2 (a decode step is between tokens)")
    count = token_counter(args.folder)

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "prompt": PROMPT,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "threads": 1,
            "quantize": args.quantize,
            "folder": str(args.folder),
            "max_batch_size": args.max_batch_size,
        },
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        artifact = args.artifact or convert(args.folder, Path(scratch) / "store", args.quantize)
        results["settings"]["artifact"] = str(artifact)
        runs = results["runs"]
        if "raw" in args.servers:
            for c in args.concurrency:
                runs[f"raw-og c={c}"] = raw_og(artifact, c, args.max_tokens, args.rounds)
                print(f"raw-og c={c}", runs[f"raw-og c={c}"], flush=True)
        ct2_model = ct2_rows(args, runs, results) if args.ct2 is not None else None
        if args.bandwidth:
            results["bandwidth"] = bandwidth_rows(
                artifact, ct2_model, f"ct2-{args.ct2_quantization}", runs
            )
        ondeck = [sys.executable, "-m", "ondeck_server", "serve", "--model", str(artifact),
                  "--threads", "1", "--max-batch-size", str(args.max_batch_size), "--name",
                  "bench", "--host", "127.0.0.1", "--port"]  # fmt: skip
        naive = [sys.executable, str(HERE / "naive_transformers.py"), str(args.folder)]
        for name, argv, ready in (
            ("ondeck", ondeck, "/v2/health/ready"),
            ("naive", naive, "/docs"),
        ):
            if name not in args.servers:
                continue
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            proc = serve([*argv, str(port)], base + ready)
            try:
                for c in args.concurrency:
                    got = http_clients(
                        f"{base}/v1/completions", "bench", c, args.max_tokens, args.rounds, count
                    )
                    runs[f"{name} c={c}"] = got
                    print(f"{name} c={c}", got, flush=True)
            finally:
                _stop(proc)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
