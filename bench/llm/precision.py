"""int4 against fp32 decode (issue 10, "Benchmark"; a bench, not a test): raw
onnxruntime-genai on two artifacts of one model (`ondeck-server convert --quantize int4`
and `--quantize none`), measured in alternating turns so both see the same load.

    .venv/bin/python bench/llm/precision.py --artifact int4=DIR --artifact fp32=DIR \\
        [--turns 3] [--concurrency 1 8] [--out FILE]
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

from run import raw_og  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "precision.json")
    args = parser.parse_args()
    artifacts = dict(a.split("=", 1) for a in args.artifact)
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in artifacts}
    started = [round(x, 2) for x in os.getloadavg()]
    for _ in range(args.turns):
        for name, folder in artifacts.items():
            got = {
                f"c={c}": raw_og(Path(folder), c, args.max_tokens, args.rounds)
                for c in args.concurrency
            }
            turns[name].append(got)
            print(name, json.dumps(got), flush=True)
    medians = {
        name: {
            c: {k: statistics.median(t[c][k] for t in runs) for k in ("itl_ms", "tokens_per_s")}
            for c in runs[0]
        }
        for name, runs in turns.items()
    }
    result = {
        "load_average_start": started,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {"rounds": args.rounds, "turns": args.turns, "max_tokens": args.max_tokens},
        "artifacts": artifacts,
        "medians": medians,
        "turns": turns,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
