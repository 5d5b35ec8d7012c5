"""Profile ondeck's language-model server under streaming load (issue 10, "Benchmark").

Starts `ondeck-server serve` on a converted artifact, runs py-spy (`record`, all threads,
native frames off) on it while `run.py`'s streaming clients drive it at each concurrency,
and writes one collapsed-stack file per concurrency plus a summary of the hottest
functions (self time and inclusive time, per thread).

    .venv/bin/python bench/llm/profile_server.py --artifact ARTIFACT_DIR --folder MODEL_FOLDER
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _free_port, _stop, http_clients, serve, token_counter  # noqa: E402


def _summarise(collapsed: Path, top: int) -> dict[str, object]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    return {
        "samples": total,
        "threads": dict(threads.most_common()),
        "self": [[f, n] for f, n in own.most_common(top)],
        "inclusive": [[f, n] for f, n in inclusive.most_common(top)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="for the tokenizer")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profile")
    args = parser.parse_args()
    count = token_counter(args.folder)

    args.out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "ondeck_server", "serve", "--model", str(args.artifact),
            "--threads", "1", "--max-batch-size", "8", "--name", "bench", "--host",
            "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = serve(argv, base + "/v2/health/ready")
    py_spy = Path(sys.executable).parent / "py-spy"
    summary: dict[str, object] = {}
    try:
        for c in args.concurrency:
            collapsed = args.out / f"c{c}.collapsed"
            spy = subprocess.Popen(
                [str(py_spy), "record", "--pid", str(proc.pid), "--format", "raw", "--threads",
                 "--rate", "250", "--output", str(collapsed), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            got = http_clients(
                f"{base}/v1/completions", "bench", c, args.max_tokens, args.rounds, count
            )
            spy.send_signal(2)
            spy.wait(timeout=60)
            summary[f"c={c}"] = {"run": got, "profile": _summarise(collapsed, 25)}
            print(f"c={c}", got, flush=True)
    finally:
        _stop(proc)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
