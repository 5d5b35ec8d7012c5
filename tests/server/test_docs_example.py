"""docs/server.md's first example, run as written (issue 16: it answered 404 because the
served name came from the source file's name, not from the ref): convert into a store
with `--ref iris`, serve `refs/iris`, and post the curl line's body to the curl line's
path. Only the port changes (a free one) and `./` becomes a temporary folder."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

import modelzoo
from server.conftest import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def _first_bash_block() -> list[str]:
    """The commands of the doc's first ```bash block, continuation lines joined."""
    block = DOC.read_text().split("```bash\n", 1)[1].split("\n```", 1)[0]
    commands: list[str] = []
    for line in block.splitlines():
        if line.startswith("  ") and commands:
            commands[-1] += " " + line.strip()
        else:
            commands.append(line)
    return commands


def test_serve_and_curl_example_answers(start_server: object, tmp_path: Path) -> None:
    convert, serve, curl = _first_bash_block()
    modelzoo.build_sklearn(tmp_path / "model.onnx")
    port = free_port()

    def argv(command: str, program: str) -> list[str]:
        words = shlex.split(command.replace("8080", str(port)))
        assert words[0] == program, command
        return [w.replace("./", f"{tmp_path}/", 1) if w.startswith("./") else w for w in words[1:]]

    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", *argv(convert, "ondeck-server")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    command, *flags = argv(serve, "ondeck-server")
    assert command == "serve"
    server = start_server(None, *flags)  # type: ignore[operator]
    url = server.wait_ready()
    assert url == f"http://127.0.0.1:{port}"
    assert f"serving model 'iris' on {url}" in server.output()

    words = shlex.split(curl)
    assert [words[0], words[1], words[3]] == ["curl", "-s", "-d"], curl
    path = re.sub(r"^localhost:\d+", "", words[2])
    answer = httpx.post(f"{url}{path}", content=words[4], timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "iris"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == [0]  # 5.1, 3.5, 1.4, 0.2 is a setosa
    assert np.isclose(sum(outputs["probabilities"]["data"]), 1.0, atol=1e-5)
    assert server.terminate() == 0
