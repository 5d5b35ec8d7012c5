"""Two builds of ondeck's language-model server, measured in turns on the same machine
(issue 10, "Benchmark"; a bench, not a test): for a before/after comparison on a loaded
machine, where two runs minutes apart see different loads.

Each turn starts one build's `ondeck-server serve` (its PYTHONPATH given by `--tree`),
drives it with run.py's streaming clients at each concurrency, and reads the server
process's CPU time from /proc: CPU microseconds per streamed token depend far less on
the machine's load than wall-clock rates do.

    .venv/bin/python bench/llm/paired.py --artifact ARTIFACT_DIR --folder MODEL_FOLDER \\
        --tree before=/path/to/old/server --tree after=server
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _free_port, _stop, http_clients, raw_og, serve, token_counter  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def turn(
    tree: Path,
    artifact: Path,
    concurrency: list[int],
    rounds: int,
    count: Any,
    *,
    max_tokens: int = 64,
    max_batch: int = 8,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "ondeck_server", "serve", "--model", str(artifact),
            "--threads", "1", "--max-batch-size", str(max_batch), "--name", "bench",
            "--host", "127.0.0.1", "--port", str(port), *(extra or [])]  # fmt: skip
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree.resolve())
    try:
        proc = serve(argv, base + "/v2/health/ready")
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    out: dict[str, Any] = {}
    try:
        for c in concurrency:
            before = _cpu_s(proc.pid)
            got = http_clients(f"{base}/v1/completions", "bench", c, max_tokens, rounds, count)
            got["server_cpu_us_per_token"] = round(
                1e6 * (_cpu_s(proc.pid) - before) / got["tokens"], 1
            )
            got["load_average"] = round(os.getloadavg()[0], 2)
            out[f"c={c}"] = got
    finally:
        _stop(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="for the tokenizer")
    parser.add_argument("--tree", action="append", required=True, help="NAME=SERVER_DIR")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "paired.json")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--raw", action="store_true", help="raw onnxruntime-genai turns too")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="NAME=ARG: an extra serve argument"
    )
    args = parser.parse_args()
    count = token_counter(args.folder)

    trees = dict(t.split("=", 1) for t in args.tree)
    extra: dict[str, list[str]] = {}
    for item in args.serve_arg:
        name, arg = item.split("=", 1)
        extra.setdefault(name, []).append(arg)
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    if args.raw:
        turns["raw-og"] = []
    started = [round(x, 2) for x in os.getloadavg()]
    for _ in range(args.turns):
        if args.raw:
            raw: dict[str, Any] = {}
            for c in args.concurrency:
                raw[f"c={c}"] = raw_og(args.artifact, c, args.max_tokens, args.rounds)
                raw[f"c={c}"]["server_cpu_us_per_token"] = None
                raw[f"c={c}"]["load_average"] = round(os.getloadavg()[0], 2)
            turns["raw-og"].append(raw)
            print("raw-og", json.dumps(raw), flush=True)
        for name, tree in trees.items():
            turns[name].append(
                turn(
                    Path(tree),
                    args.artifact,
                    args.concurrency,
                    args.rounds,
                    count,
                    max_tokens=args.max_tokens,
                    max_batch=args.max_batch_size,
                    extra=extra.get(name),
                )
            )
            print(name, json.dumps(turns[name][-1]), flush=True)
    medians = {
        name: {
            c: {
                key: statistics.median(t[c][key] for t in runs)
                if runs[0][c][key] is not None
                else None
                for key in ("ttft_p50_ms", "itl_ms", "tokens_per_s", "server_cpu_us_per_token")
            }
            for c in runs[0]
        }
        for name, runs in turns.items()
    }
    result = {
        "load_average_start": started,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "rounds": args.rounds,
            "turns": args.turns,
            "max_tokens": args.max_tokens,
            "max_batch_size": args.max_batch_size,
            "serve_args": extra,
            "artifact": str(args.artifact),
        },
        "medians": medians,
        "turns": turns,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
