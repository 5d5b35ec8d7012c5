"""A language model's conversion Job, run on the host: its rendered argv with the claim
mounts made local folders. CI builds the converter image without torch, which the model
builder needs, so the e2e tests of language models run the Job's own command here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def run_the_jobs_command(args: list[str], folder: Path, work: Path, *, store: Path) -> str:
    """Run the Job's `args` with the model folder `folder` as the claim
    `pvc://models/tinyllm/` and `store` as the artifact claim; the termination message
    (the conversion's JSON summary)."""
    root = work / "sources"
    shutil.copytree(folder, root / "models" / "tinyllm")
    local = {"--store": str(store), "--pvc-root": str(root)}
    local["--termination-log"] = str(work / "termination-log")
    argv = [local.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", *argv],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return (work / "termination-log").read_text()
