"""`ondeck run` end to end, as a user runs it: a real subprocess converts the example
with the real `ondeck-server convert`, serves it with the real `ondeck-server serve` on a
free loopback port, and the curl lines it prints are sent over a socket and must return
predictions. Bad inputs must end with one readable line and a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ondeck_operator.api.spec import Quantize
from ondeck_operator.local.runner import listens_on

from .runner import OndeckRun, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run(
    manifest: Path | None, store: Path, *extra: str, env: dict[str, str] | None = None
) -> OndeckRun:
    args = ["-f", str(manifest)] if manifest is not None else []
    return OndeckRun([*args, "--store", str(store), "--port", str(free_port()), *extra], env=env)


_ERROR_LINE = re.compile(r"^[A-Z][A-Za-z]+: \S")


def _errors(run: OndeckRun) -> list[str]:
    """Lines of stderr of the form `ErrorType: message` (a CamelCase type)."""
    return [line for line in run.err if _ERROR_LINE.match(line)]


def _quickstart_block(heading: str = "```text\nondeck: fetching") -> list[str]:
    text = (ROOT / "docs" / "quickstart.md").read_text()
    start = text.index(heading) + len("```text\n")
    return text[start : text.index("```", start)].splitlines()


def test_iris_example_serves_and_its_curls_predict(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = _run(EXAMPLES / "iris" / "modeldeployment.yaml", store)
    try:
        lines = run.wait_banner()
        assert lines[0].startswith("ondeck: serving iris at http://127.0.0.1:")
        assert any(line.startswith("  inputs:  ") and "FP32 [-1, 4]" in line for line in lines)
        # docs/quickstart.md shows this output for port 8080 and the store
        # ~/.cache/ondeck of /home/you: it must stay exactly what users see.
        port = lines[0].split("http://127.0.0.1:", 1)[1].split("/", 1)[0]
        shown = _quickstart_block()
        said = [line for line in run.err if line.startswith("ondeck: ")]
        for line in said + lines:
            as_documented = (
                line.replace(f":{port}/", ":8080/")
                .replace(str(store), "/home/you/.cache/ondeck")
                .replace(str(ROOT), "/home/you/ondeck")
            )
            assert as_documented in shown, line
        assert len(shown) == len(said) + len(lines)
        v2 = run.send("V2")
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        labels = [o for o in outputs.values() if o["datatype"] == "INT64"]
        assert len(labels) == 1
        assert labels[0]["data"][0] in (0, 1, 2)
        v1 = run.send("V1")
        assert v1.status_code == 200, v1.text
        (answer,) = v1.json()["predictions"]
        doc = (ROOT / "docs" / "quickstart.md").read_text()
        start = doc.index("```json\n", doc.index("The V1 curl answers:")) + len("```json\n")
        (documented,) = json.loads(doc[start : doc.index("```", start)])["predictions"]
        assert answer["label"] == documented["label"]
        assert answer["probabilities"] == pytest.approx(documented["probabilities"], abs=1e-6)
    finally:
        code = run.stop(signal.SIGINT)
    assert code == 0
    assert "ondeck: stopping the server" in run.err


def test_default_run_is_the_iris_example_and_reuses_the_artifact(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _run(None, store)
    try:
        first.wait_banner()
    finally:
        assert first.stop(signal.SIGTERM) == 0
    second = _run(None, store)
    try:
        lines = second.wait_banner()
        assert lines[0].startswith("ondeck: serving iris at ")
        assert any(line.startswith("ondeck: artifact ") and "reused" in line for line in second.err)
        assert second.send("V2").status_code == 200
    finally:
        assert second.stop(signal.SIGTERM) == 0


def test_cnn_example_serves_its_declared_input(tmp_path: Path) -> None:
    run = _run(EXAMPLES / "cnn" / "modeldeployment.yaml", tmp_path / "store")
    try:
        lines = run.wait_banner()
        assert "  inputs:  image FP32 [-1, 1, 8, 8]" in lines
        v2 = run.send("V2")
        assert v2.status_code == 200, v2.text
        (out,) = v2.json()["outputs"]
        assert out["shape"] == [1, 10]
        v1 = run.send("V1")
        assert v1.status_code == 200, v1.text
        assert len(v1.json()["predictions"][0]) == 10
    finally:
        assert run.stop() == 0


def test_cluster_only_fields_are_listed_and_auth_gets_a_local_token(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    text = (EXAMPLES / "iris" / "modeldeployment.yaml").read_text()
    manifest.write_text(
        text.replace("  server:\n", "  server:\n    replicas: 3\n    auth: {secretName: tok}\n")
        + "  ingress: {host: iris.example.com}\n"
    )
    for name in ("model.skops", "samples.npz"):
        shutil.copy(EXAMPLES / "iris" / name, tmp_path / name)
    run = _run(manifest, tmp_path / "store")
    try:
        run.wait_banner()
        url, body, headers = run.curl("V2")
        assert headers["Authorization"].startswith("Bearer ")
        assert run.send("V2").status_code == 200
        without = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert without.status_code == 401
    finally:
        assert run.stop() == 0
    notices = [line for line in run.err if line.startswith("ondeck: ignored in local mode: ")]
    assert notices == [
        "ondeck: ignored in local mode: spec.server.replicas (one local server process)",
        "ondeck: ignored in local mode: spec.ingress (no Ingress locally; use --host and --port)",
    ]
    assert (
        "ondeck: spec.server.auth: the Secret tok exists only in clusters; this run's server "
        "asks for a token made for it (in the curl lines below; choose one with --auth-token)"
    ) in run.err


def test_convert_only_then_auth_token_then_predict_and_ls(tmp_path: Path) -> None:
    store = tmp_path / "store"
    manifest = EXAMPLES / "iris" / "modeldeployment.yaml"
    first = OndeckRun(["-f", str(manifest), "--store", str(store), "--convert-only"])
    assert first.wait_exit() == 0, first.err
    (folder,) = [p for p in store.iterdir() if len(p.name) == 64]
    assert first.out == [
        f"ondeck: iris is converted: {folder} (19.5 KiB → 10.3 KiB, quantize int8); "
        "refs/iris points at it"
    ]
    assert (store / "refs" / "iris").resolve() == folder
    port = free_port()
    run = OndeckRun(
        ["-f", str(manifest), "--store", str(store), "--port", str(port)],
        env={"ONDECK_AUTH_TOKEN": "s3cret"},
    )
    try:
        run.wait_banner()
        assert "ondeck: the server asks for the bearer token given with --auth-token" in run.err
        assert run.curl("V1")[2]["Authorization"] == "Bearer s3cret"
        base = ["-m", "ondeck_operator", "predict", "-f", str(manifest), "--port", str(port)]
        data = ["--data", "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]"]
        refused = subprocess.run(
            [sys.executable, *base, *data], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            f"PredictFailed: GET http://127.0.0.1:{port}/v2/models/iris answered 401: "
        )
        done = subprocess.run(
            [sys.executable, *base, *data, "--auth-token", "s3cret"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        label, probabilities = done.stdout.splitlines()
        assert label == "label INT64 [2]: [0, 2]"
        assert probabilities.startswith("probabilities FP32 [2, 3]: [[")
    finally:
        assert run.stop() == 0
    listed = subprocess.run(
        [sys.executable, "-m", "ondeck_operator", "ls", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.stdout.splitlines()[1].startswith(f"iris  {folder.name[:12]}  sklearn  int8")


# ------------------------------------------------------------------ bad inputs


def test_invalid_manifest_exits_2_with_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(
        (EXAMPLES / "iris" / "modeldeployment.yaml")
        .read_text()
        .replace("quantize: int8", "quantize: int3")
    )
    run = _run(manifest, tmp_path / "store")
    assert run.wait_exit() == 2
    values = [f"'{q.value}'" for q in Quantize]  # the API's enum (it grows: int4)
    assert run.err == [
        f"ManifestError: {manifest}: spec.optimize.quantize: Input should be "
        + ", ".join(values[:-1])
        + f" or {values[-1]}"
    ]
    assert run.out == []


def test_missing_manifest_exits_2(tmp_path: Path) -> None:
    run = _run(tmp_path / "nope.yaml", tmp_path / "store")
    assert run.wait_exit() == 2
    assert run.err == [f"ManifestError: {tmp_path / 'nope.yaml'}: no such file"]


def test_missing_model_file_is_the_converts_own_line(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text((EXAMPLES / "iris" / "modeldeployment.yaml").read_text())
    run = _run(manifest, tmp_path / "store")
    assert run.wait_exit() == 1
    errors = _errors(run)
    assert len(errors) == 1, run.err
    assert run.err[-1] == errors[0]  # the last thing the user reads
    assert errors[0].startswith("FetchFailed: ")
    assert str(tmp_path / "model.skops") in errors[0]
    assert run.out == []
    assert not (tmp_path / "store" / "refs").exists()


def test_failed_accuracy_gate_exits_1_and_serves_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    text = (EXAMPLES / "cnn" / "modeldeployment.yaml").read_text()
    manifest.write_text(
        text.replace(
            "    level: basic\n",
            "    level: basic\n    quantize: int8\n"
            "    validation: {minCosine: 1.0, maxTop1Disagreement: 0.0}\n",
        )
    )
    shutil.copy(EXAMPLES / "cnn" / "model.pt", tmp_path / "model.pt")
    run = _run(manifest, tmp_path / "store")
    assert run.wait_exit() == 1
    errors = _errors(run)
    assert len(errors) == 1, run.err
    assert run.err[-1] == errors[0]  # the last thing the user reads
    # In manifest terms: the fields of md.yaml, not the converter's flags.
    assert re.fullmatch(
        r"ValidationFailed: the final model disagrees with the original \(\w+\) on 64 "
        r"generated samples: cosine [0-9.]+ < spec\.optimize\.validation\.minCosine 1\.0(; "
        r"top-1 disagreement [0-9.]+ > spec\.optimize\.validation\.maxTop1Disagreement "
        r"0\.0)?\. Nothing was published; use a gentler spec\.optimize\.quantize \(int8-static "
        r"with spec\.optimize\.calibration, fp16, none\) or, if this loss is acceptable, relax "
        r"the threshold",
        errors[0],
    ), errors[0]
    assert run.out == []
    assert list((tmp_path / "store").glob(".tmp-*")) == []


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = OndeckRun(
            [
                "-f",
                str(EXAMPLES / "iris" / "modeldeployment.yaml"),
                "--store",
                str(tmp_path),
                "--port",
                str(port),
            ]
        )
        assert run.wait_exit() == 2
    assert run.err == [
        f"PortInUse: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick another with --port"
    ]


def test_a_second_run_on_a_served_port_stops_at_once(tmp_path: Path) -> None:
    port = str(free_port())
    args = ["-f", str(EXAMPLES / "iris" / "modeldeployment.yaml"), "--port", port]
    first = OndeckRun([*args, "--store", str(tmp_path / "a")])
    try:
        first.wait_banner()
        second = OndeckRun([*args, "--store", str(tmp_path / "b")])
        assert second.wait_exit() == 2
        assert second.err == [
            f"PortInUse: cannot listen on 127.0.0.1:{port} (Address already in use); "
            "pick another with --port"
        ]
        assert second.out == []  # never "serving ..."
    finally:
        assert first.stop() == 0


def test_a_store_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    run = _run(EXAMPLES / "iris" / "modeldeployment.yaml", Path("/dev/null/store"))
    assert run.wait_exit() == 1
    assert run.err == [
        "StoreFailed: cannot use /dev/null/store as the artifact store (Not a directory); "
        "pick another with --store"
    ]


def test_listens_on_tells_the_child_from_another_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listens_on(os.getpid(), port) is True
        assert listens_on(os.getppid(), port) is False
    assert listens_on(os.getpid(), port) is False


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def test_ctrl_c_during_conversion_stops_it_and_exits_130(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = _run(EXAMPLES / "cnn" / "modeldeployment.yaml", store)
    deadline = time.monotonic() + 60
    while not any(line.startswith("ondeck: fetching ") for line in run.err):
        assert time.monotonic() < deadline, run.err
        assert run.proc.poll() is None, run.err
        time.sleep(0.05)
    assert _processes_mentioning(f"convert --source {EXAMPLES / 'cnn' / 'model.pt'}")
    # Let it start its work folder in the store before the Ctrl-C.
    while not list(store.glob(".tmp-work-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.stop(signal.SIGINT) == 130
    assert run.err[-1] == "Interrupted: conversion stopped; nothing was written"
    assert run.err.count(run.err[-1]) == 1, run.err
    assert run.out == []
    assert _processes_mentioning(str(store)) == []
    assert not (store / "refs").exists()
    assert list(store.glob(".tmp-*")) == []  # no half-converted work left behind


def test_pinned_sha256_reuses_the_artifact_without_fetching(tmp_path: Path) -> None:
    model = tmp_path / "model.skops"
    shutil.copy(EXAMPLES / "iris" / "model.skops", model)
    shutil.copy(EXAMPLES / "iris" / "samples.npz", tmp_path / "samples.npz")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    manifest = tmp_path / "md.yaml"
    text = (EXAMPLES / "iris" / "modeldeployment.yaml").read_text()
    manifest.write_text(
        text.replace("    format: sklearn\n", f"    format: sklearn\n    sha256: {digest}\n")
    )
    store = tmp_path / "store"
    first = _run(manifest, store)
    try:
        first.wait_banner()
    finally:
        assert first.stop() == 0
    assert any(line.startswith("ondeck: fetching ") for line in first.err)
    model.unlink()  # a second run must not even read the source
    second = _run(manifest, store)
    try:
        second.wait_banner()
        assert second.send("V2").status_code == 200
    finally:
        assert second.stop() == 0
    assert not any(line.startswith("ondeck: fetching ") for line in second.err)
    assert any(line.endswith(" reused (pinned sha256, no fetch)") for line in second.err)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--port", "70000"],
            "BadParameter: Invalid value for '--port': Input should be less than or equal to 65535",
        ),
        (["--bogus"], "NoSuchOption: No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    run = OndeckRun(args)
    assert run.wait_exit() == 2
    assert len(run.err) == 1, run.err
    assert run.err[0].startswith(expected)


def test_unreachable_http_source_is_the_converts_own_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/models/iris.skops"  # nothing listens there
    manifest = tmp_path / "md.yaml"
    text = (EXAMPLES / "iris" / "modeldeployment.yaml").read_text()
    manifest.write_text(text.replace("uri: model.skops", f"uri: {url}"))
    run = _run(manifest, tmp_path / "store")
    assert run.wait_exit() == 1
    errors = _errors(run)
    assert len(errors) == 1, run.err
    assert run.err[-1] == errors[0]  # the last thing the user reads
    assert errors[0].startswith(f"FetchFailed: {url}")
    assert run.out == []
