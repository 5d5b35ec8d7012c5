"""Cross-request batching never mixes callers (issue 15, item 7): the conversion records
in the manifest whether rows are independent, the server batches across callers only
models known to be, checks a bare model.onnx itself at load, and says so in its log and
in `ondeck_batching_enabled{model,reason}`.

The proof is two real clients against a real server: one sends an ordinary iris row
again and again while the other sends outliers; the first caller's answer never moves.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ondeck_server import artifact
from ondeck_server.convert import ConvertRequest, Quantize, convert
from pipeline.conftest import ServeProcesses, Sources

ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "examples" / "iris" / "model.skops"
#: The iris measurements the example's gate uses (int8 on N(0, 1) noise flips a near tie
#: on CPUs without VNNI; see docs/conversion.md).
IRIS_SAMPLES = ROOT / "examples" / "iris" / "samples.npz"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServeProcesses]:
    processes = ServeProcesses(tmp_path)
    yield processes
    processes.stop_all()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}


def _convert_cli(*args: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    return Path(json.loads(done.stdout)["path"])


def _body(name: str, row: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP32", "data": row}]}


async def _two_clients(
    url: str, model: str, name: str, mine: list[float], theirs: list[float], n: int
) -> list[object]:
    """`n` requests of `mine` and `n` of `theirs`, four of each in flight at a time;
    returns my answers' outputs."""
    endpoint = f"{url}/v2/models/{model}/infer"
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def send(row: list[float], count: int, out: list[object]) -> None:
            for _ in range(count):
                answer = await client.post(endpoint, json=_body(name, row))
                assert answer.status_code == 200, answer.text
                out.append(answer.json()["outputs"])

        mine_out: list[object] = []
        sink: list[object] = []
        jobs = [send(mine, n // 4, mine_out) for _ in range(4)]
        jobs += [send(theirs, n // 4, sink) for _ in range(4)]
        await asyncio.gather(*jobs)
    return mine_out


def _alone(url: str, model: str, name: str, row: list[float]) -> object:
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=_body(name, row), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"]


def _batching_metric(url: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return re.findall(r"^ondeck_batching_enabled\{.*$", text, re.MULTILINE)


SERVE_FLAGS = ["--max-batch-size", "16", "--max-delay-ms", "20"]


def test_iris_int8_quickstart_answers_do_not_depend_on_other_callers(
    servers: ServeProcesses, tmp_path: Path
) -> None:
    """The quickstart's own model (dynamic int8): a row's label flipped in 27 of 40
    requests while another client sent [50, 50, 50, 50]."""
    folder = _convert_cli(
        "--source", str(IRIS), "--store", str(tmp_path / "store"), "--quantize", "int8",
        "--calibration", str(IRIS_SAMPLES),
    )  # fmt: skip
    url = servers.start(["--model", str(folder), "--name", "iris", *SERVE_FLAGS], env=_env())
    mine = [5.9, 3.0, 5.1, 1.8]  # an iris row near the versicolor/virginica border
    solo = _alone(url, "iris", "input", mine)
    answers = asyncio.run(_two_clients(url, "iris", "input", mine, [50.0] * 4, 80))
    moved = [a for a in answers if a != solo]
    assert len(moved) == 0, f"{len(moved)} of {len(answers)} answers moved, e.g. {moved[0]}"
    assert _batching_metric(url) == [
        'ondeck_batching_enabled{model="iris",reason="dynamic-quantization"} 0.0'
    ]
    log = (tmp_path / "serve-0.log").read_text()
    assert (
        "batching across requests off: the artifact's manifest: DynamicQuantizeLinear "
        "(dynamic int8) computes one scale per batch" in log
    ), log


def test_a_bare_model_that_reduces_over_the_batch_is_checked_at_load(
    servers: ServeProcesses, sources: Sources, tmp_path: Path
) -> None:
    """`y = x - mean(x, axis=0)` as a bare model.onnx (no manifest): 258 of 300 answers
    carried other callers' inputs. The server's load-time check turns batching off."""
    model = sources["center/model.onnx"]
    url = servers.start(["--model", str(model), "--name", "center", *SERVE_FLAGS], env=_env())
    mine = [1.0, 2.0, 3.0, 4.0]
    solo = _alone(url, "center", "x", mine)
    assert solo[0]["data"] == [0.0, 0.0, 0.0, 0.0]
    answers = asyncio.run(_two_clients(url, "center", "x", mine, [50.0] * 4, 80))
    moved = [a for a in answers if a != solo]
    assert len(moved) == 0, f"{len(moved)} of {len(answers)} answers moved, e.g. {moved[0]}"
    assert _batching_metric(url) == [
        'ondeck_batching_enabled{model="center",reason="rows-depend-on-batch"} 0.0'
    ]
    log = (tmp_path / "serve-0.log").read_text()
    assert "batching across requests off: no recorded verdict, checked at load: row 0 of " in log


def test_an_independent_model_is_still_batched(
    servers: ServeProcesses, sources: Sources, tmp_path: Path
) -> None:
    folder = _convert_cli("--source", str(sources["mlp.onnx"]), "--store", str(tmp_path / "s"))
    manifest = artifact.read_manifest(folder)
    assert manifest.batching is not None
    assert manifest.batching.independent
    assert manifest.batching.checked_rows == 8
    url = servers.start(["--model", str(folder), "--name", "mlp", *SERVE_FLAGS], env=_env())
    assert _batching_metric(url) == [
        'ondeck_batching_enabled{model="mlp",reason="independent"} 1.0'
    ]


def test_the_manifest_records_why_rows_are_not_independent(sources: Sources, store: Path) -> None:
    int8 = convert(
        ConvertRequest(
            source=str(IRIS), store=store, quantize=Quantize.INT8, calibration=str(IRIS_SAMPLES)
        )
    )
    batching = int8.manifest.batching
    assert batching is not None
    assert not batching.independent
    assert batching.findings[0].model_dump(mode="json") == {
        "reason": "dynamic-quantization",
        "detail": "DynamicQuantizeLinear (dynamic int8) computes one scale per batch",
    }
    center = convert(ConvertRequest(source=str(sources["center/model.onnx"]), store=store))
    assert center.manifest.batching is not None
    assert [f.reason.value for f in center.manifest.batching.findings] == [
        "reduces-over-batch",
        "rows-depend-on-batch",
    ]
    assert center.manifest.batching.findings[0].detail == (
        "ReduceMean reduces or normalizes over the batch axis (dim 0)"
    )
    fp32 = convert(ConvertRequest(source=str(IRIS), store=store))
    assert fp32.manifest.batching is not None
    assert fp32.manifest.batching.independent
    assert fp32.manifest.batching.findings == []
    # The record is in manifest.json as the server reads it.
    raw = json.loads((int8.path / artifact.MANIFEST_FILE).read_text())
    assert raw["batching"]["independent"] is False
    assert raw["batching"]["checkedRows"] == 8
    np.testing.assert_equal(raw["batching"]["findings"][0]["reason"], "dynamic-quantization")
