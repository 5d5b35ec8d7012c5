"""Shadow traffic (`serve --shadow-url --shadow-percent`) between real `ondeck-server serve`
processes on real models: callers get stable's answer, unchanged and never waiting for the
copy; the copies' agreement is counted in `/metrics` (the same model: all agree; a model
trained from another seed: not); a dead or hanging candidate only moves the failed and
dropped counters. The comparison itself is checked on hand-made answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from ondeck_operator.reconcile import analysis
from ondeck_server.serve import shadow

from .conftest import free_port
from .v2client import json_request

Start = Callable[..., object]
ROWS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shadow-models")
    return {
        "a": modelzoo.build_mlp(folder / "a.onnx", seed=0),
        "b": modelzoo.build_mlp(folder / "b.onnx", seed=1),
    }


def _serve(start_server: Start, model: Path, *flags: str) -> str:
    # Stable and candidate serve one name, as both halves of a rollout do.
    server = start_server(model, "--name", "iris", *flags)
    return str(server.wait_ready())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def candidates(start_server: Start, models: dict[str, Path]) -> dict[str, str]:
    """Candidate servers: the stable's own model, and another one."""
    return {"same": _serve(start_server, models["a"]), "other": _serve(start_server, models["b"])}


def body(seed: int) -> bytes:
    return json_request(modelzoo.sample_inputs("mlp", ROWS, seed=seed))


def shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ondeck_shadow_requests_total":
                counts[sample.labels["result"]] = sample.value
            elif sample.name == "ondeck_shadow_dropped_total":
                counts["dropped"] = sample.value
    return counts


def wait_counted(url: str, total: int, timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        counts = shadow_counts(url)
        done = sum(counts.get(r, 0) for r in ("agree", "disagree", "failed"))
        if done >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def infer_all(url: str, n: int) -> list[bytes]:
    answers = []
    with httpx.Client(timeout=30) as client:
        for seed in range(n):
            reply = client.post(f"{url}/v2/models/iris/infer", content=body(seed))
            assert reply.status_code == 200, reply.text
            answers.append(reply.content)
    return answers


def test_the_same_model_agrees_on_every_copy_and_callers_get_stables_answer(
    start_server: Start, models: dict[str, Path], candidates: dict[str, str]
) -> None:
    plain = _serve(start_server, models["a"])
    stable = _serve(start_server, models["a"], "--shadow-url", candidates["same"])
    answers = infer_all(stable, 25)
    assert answers == infer_all(plain, 25)  # byte for byte what a server without copies says
    counts = wait_counted(stable, 25)
    assert counts == {"agree": 25, "disagree": 0, "failed": 0, "dropped": 0}
    # The candidate really answered the copies (its own request counter).
    text = httpx.get(f"{candidates['same']}/metrics", timeout=10).text
    assert parse_requests(text) >= 25


def parse_requests(text: str) -> float:
    return analysis.parse_sample(text).requests


def test_another_model_disagrees_and_the_operator_reads_the_figures(
    start_server: Start, models: dict[str, Path], candidates: dict[str, str]
) -> None:
    stable = _serve(start_server, models["a"], "--shadow-url", candidates["other"])
    infer_all(stable, 25)
    counts = wait_counted(stable, 25)
    assert counts["failed"] == 0
    assert counts["agree"] + counts["disagree"] == 25
    assert counts["disagree"] > 0
    # What the operator's analysis makes of this page: agreement below 1, a failed verdict.
    page = httpx.get(f"{stable}/metrics", timeout=10).text
    f = analysis.interval_figures(
        stable_before={"s": analysis.PodSample()},
        stable_after={"s": analysis.parse_sample(page)},
        candidate_before={},
        candidate_after={},
    )
    assert f.agreement is not None
    assert f.agreement < 1
    from ondeck_operator.api.rollout import AnalysisSpec

    verdict, reason, _ = analysis.judge(f, AnalysisSpec(min_requests=10), shadow=True, now="t")
    assert verdict == analysis.Verdict.FAIL
    assert reason is not None
    assert reason.value == "AgreementTooLow"


def test_a_dead_candidate_only_counts_failures(
    start_server: Start, models: dict[str, Path], candidates: dict[str, str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    stable = _serve(start_server, models["a"], "--shadow-url", dead)
    answers = infer_all(stable, 10)
    plain = candidates["same"]  # the same model without copies
    assert answers == infer_all(plain, 10)
    counts = wait_counted(stable, 10)
    assert counts == {"agree": 0, "disagree": 0, "failed": 10, "dropped": 0}


@pytest.fixture
def hanging() -> Iterator[str]:
    """A candidate that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_hanging_candidate_never_slows_the_caller_and_excess_copies_are_dropped(
    start_server: Start, models: dict[str, Path], hanging: str
) -> None:
    stable = _serve(start_server, models["a"], "--shadow-url", hanging)
    n = shadow.QUEUE_SIZE + shadow.WORKERS + 30
    started = time.monotonic()
    infer_all(stable, n)
    elapsed = time.monotonic() - started
    # Each copy waits up to TIMEOUT_SECONDS for the candidate; had any caller waited for
    # its copy, these requests would take at least that long.
    assert elapsed < shadow.TIMEOUT_SECONDS, elapsed
    counts = shadow_counts(stable)
    assert counts["dropped"] >= n - shadow.QUEUE_SIZE - shadow.WORKERS
    assert counts["agree"] == 0


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--shadow-url", "ftp://x"], "InvalidSettings: --shadow-url: String should match"),
        (["--shadow-url", "http://x", "--shadow-percent", "0"],
         "InvalidSettings: --shadow-percent: Input should be greater than or equal to 1"),
        (["--shadow-url", "http://x", "--shadow-percent", "101"],
         "InvalidSettings: --shadow-percent: Input should be less than or equal to 100"),
    ],
)  # fmt: skip
def test_bad_shadow_flags_exit_with_one_line(
    start_server: Start, models: dict[str, Path], flags: list[str], words: str
) -> None:
    server = start_server(models["a"], *flags)
    code = server.proc.wait(60)  # type: ignore[attr-defined]
    output = server.output().strip()  # type: ignore[attr-defined]
    assert code != 0
    assert words in output
    assert "Traceback" not in output


# ------------------------------------------------------------------ compare


def v2(name: str, datatype: str, shape: list[int], data: list[object]) -> bytes:
    output = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    return orjson.dumps({"outputs": [output]})


def test_compare_floats_by_cosine_and_top1_and_labels_exactly() -> None:
    a = v2("p", "FP32", [2, 3], [0.1, 0.7, 0.2, 0.6, 0.3, 0.1])
    assert shadow.compare(a, a) == pytest.approx(1.0)
    near = v2("p", "FP32", [2, 3], [0.1, 0.69, 0.2, 0.6, 0.31, 0.1])
    assert shadow.compare(a, near) == pytest.approx(1.0, abs=1e-3)
    swapped = v2("p", "FP32", [2, 3], [0.7, 0.1, 0.2, 0.6, 0.3, 0.1])  # row 0's top-1 moved
    assert shadow.compare(a, swapped) == 0.0
    labels = v2("label", "INT64", [3], [0, 2, 1])
    assert shadow.compare(labels, labels) == 1.0
    assert shadow.compare(labels, v2("label", "INT64", [3], [0, 1, 1])) == 0.0
    assert shadow.compare(labels, v2("other", "INT64", [3], [0, 2, 1])) == 0.0
    assert shadow.compare(labels, b"not json") == 0.0
    assert shadow.compare(b"\x00binary", labels) is None
    v1 = orjson.dumps({"predictions": [[0.2, 0.8], [0.9, 0.1]]})
    assert shadow.compare(v1, v1) == pytest.approx(1.0)
    assert shadow.compare(v1, orjson.dumps({"predictions": [[0.8, 0.2], [0.9, 0.1]]})) == 0.0


def test_the_operator_reads_the_servers_result_names() -> None:
    assert (analysis.SHADOW_AGREE, analysis.SHADOW_DISAGREE, analysis.SHADOW_FAILED) == (
        shadow.AGREE,
        shadow.DISAGREE,
        shadow.FAILED,
    )
