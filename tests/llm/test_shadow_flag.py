"""`serve --shadow-url` on a language model: refused with one line (its server copies no
requests; docs/rollout.md), never silently ignored."""

from __future__ import annotations

import pytest

from ondeck_server.convert.run import Outcome
from server.conftest import ServerProcess


def test_shadow_url_is_refused_for_a_language_model(
    fp32_artifact: Outcome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("llm-shadow")
    proc = ServerProcess(
        ["--model", str(fp32_artifact.path), "--host", "127.0.0.1", "--port", "0",
         "--shadow-url", "http://127.0.0.1:9"],
        log=logs / "server.log",
    )  # fmt: skip
    code = proc.proc.wait(120)
    output = proc.output().strip()
    proc.terminate()
    assert code != 0
    assert output.splitlines()[-1] == (
        "InvalidSettings: --shadow-url: a language model's server copies no requests"
    )
