"""The server process's life: readiness only after warm-up, overload answered with 503
+ Retry-After, SIGTERM drains requests in flight and exits 0, a model that cannot load
exits 1 with one line. All with real processes, a slow real model, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import modelzoo
from server.conftest import ServerProcess, free_port
from server.v2client import assert_same, binary_request, decode_response, json_request


def _metric(url: str, name: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_ready_only_after_warm_up(start_server: object, zoo: dict[str, Path]) -> None:
    # Warm-up runs a full batch of 256 rows through a model of 512 chained layers: slow.
    # The server prints its address only once ready: listen on a port chosen here.
    port = free_port()
    server = start_server(zoo["slow_heavy"], "--max-batch-size", "256", "--port", str(port))  # type: ignore[operator]
    url = server.url = f"http://127.0.0.1:{port}"
    _wait_live(server)
    seen_loading = False
    feeds = modelzoo.sample_inputs("slow", 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/v2/health/ready", timeout=10)
        if ready.status_code == 200:
            break
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        assert httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200
        answer = httpx.post(f"{url}/v2/models/slow_heavy/infer", content=json_request(feeds))
        if answer.status_code == 503:
            assert answer.json() == {
                "error": "model 'slow_heavy' is still loading; retry when /v2/health/ready"
                " answers 200"
            }
            seen_loading = True
        time.sleep(0.01)
    assert seen_loading, "the server never reported loading: warm-up too fast to observe?"
    assert httpx.get(f"{url}/v2/models/slow_heavy/ready").json() == {
        "name": "slow_heavy",
        "ready": True,
    }
    assert (_metric(url, 'ondeck_model_load_seconds{model="slow_heavy"}') or 0) > 0
    assert _metric(url, 'ondeck_model_ready{model="slow_heavy"}') == 1
    assert "model 'slow_heavy' ready in" in server.output()
    server.wait_listening()  # the serving line follows readiness
    assert server.terminate() == 0


def _wait_live(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200:
                return
        assert server.proc.poll() is None, server.output()
        time.sleep(0.02)
    raise AssertionError(f"server not live in {timeout} s:\n{server.output()}")


async def _post_all(url: str, bodies: list[bytes]) -> list[httpx.Response | Exception]:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)
    ) as client:

        async def one(body: bytes) -> httpx.Response | Exception:
            try:
                return await client.post("/v2/models/slow_heavy/infer", content=body)
            except httpx.TransportError as exc:
                return exc

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_overload_gets_503_with_retry_after(start_server: object, zoo: dict[str, Path]) -> None:
    server = start_server(zoo["slow_heavy"], "--max-batch-size", "1", "--max-queue", "2")  # type: ignore[operator]
    url = server.wait_ready()
    long = modelzoo.sample_inputs("slow", 150, seed=1)
    short = [modelzoo.sample_inputs("slow", 1, seed=2 + i) for i in range(6)]
    bodies = [binary_request(long)[0]] + [json_request(f) for f in short]
    headers = binary_request(long)[1]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=16)
        ) as client:
            first = asyncio.create_task(
                client.post("/v2/models/slow_heavy/infer", content=bodies[0], headers=headers)
            )
            deadline = time.monotonic() + 30
            # Wait until the long request runs (in flight, not queued).
            while not (
                _metric(url, "ondeck_inflight_requests") == 1
                and _metric(url, 'ondeck_queue_depth{model="slow_heavy"}') == 0
            ):
                assert time.monotonic() < deadline, "the long request never started"
                await asyncio.sleep(0.01)
            rest = await asyncio.gather(
                *(client.post("/v2/models/slow_heavy/infer", content=b) for b in bodies[1:])
            )
            return [await first, *rest]

    answers = asyncio.run(go())
    refused = [a for a in answers if a.status_code == 503]
    assert len(refused) >= 3, [a.status_code for a in answers]
    for answer in refused:
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {
            "error": "the server is at capacity (2 requests queued); retry after 1 s"
        }
    assert_same(
        decode_response(answers[0].content, answers[0].headers)[1],
        modelzoo.reference(zoo["slow_heavy"], long),
    )
    for answer, feeds in zip(answers[1:], short, strict=True):
        if answer.status_code != 503:
            assert answer.status_code == 200
            assert_same(
                decode_response(answer.content, answer.headers)[1],
                modelzoo.reference(zoo["slow_heavy"], feeds),
            )
    # Still serving, and the refusals were counted.
    again = httpx.post(f"{url}/v2/models/slow_heavy/infer", content=json_request(short[0]))
    assert again.status_code == 200
    assert _metric(
        url, 'ondeck_requests_total{code="503",model="slow_heavy",protocol="v2"}'
    ) == len(refused)
    assert server.terminate() == 0


def test_sigterm_drains_requests_in_flight(start_server: object, zoo: dict[str, Path]) -> None:
    server = start_server(zoo["slow_heavy"], "--max-batch-size", "1", "--drain-timeout", "60")  # type: ignore[operator]
    url = server.wait_ready()
    # Four requests that each take a noticeable time, one after the other.
    feeds = [modelzoo.sample_inputs("slow", 150, seed=10 + i) for i in range(4)]

    async def go() -> tuple[list[httpx.Response | Exception], dict[str, object]]:
        task = asyncio.create_task(_post_all(url, [json_request(f) for f in feeds]))
        deadline = time.monotonic() + 30
        while _metric(url, "ondeck_inflight_requests") != 4:
            assert time.monotonic() < deadline, "requests never got in flight"
            await asyncio.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        # Not ready at once, while the in-flight requests still run; still alive.
        async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
            ready = await probe.get("/v2/health/ready")
            live = await probe.get("/v2/health/live")
        observed = {"ready": (ready.status_code, ready.json()), "live": live.status_code}
        return await task, observed

    answers, observed = asyncio.run(go())
    assert observed == {"ready": (503, {"ready": False}), "live": 200}
    for answer, f in zip(answers, feeds, strict=True):
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200
        assert_same(
            decode_response(answer.content, answer.headers)[1],
            modelzoo.reference(zoo["slow_heavy"], f),
        )
    assert server.proc.wait(30) == 0
    assert "draining: finishing requests in flight" in server.output()


def test_drain_timeout_bounds_the_shutdown(start_server: object, zoo: dict[str, Path]) -> None:
    server = start_server(zoo["slow_heavy"], "--max-batch-size", "1", "--drain-timeout", "0.5")  # type: ignore[operator]
    url = server.wait_ready()
    # 4000 rows through 512 layers of 512x512: seconds per request even on an idle core.
    body, headers = binary_request(modelzoo.sample_inputs("slow", 4000))

    async def go() -> tuple[float, list[object]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            tasks = [
                asyncio.create_task(
                    client.post("/v2/models/slow_heavy/infer", content=body, headers=headers)
                )
                for _ in range(6)
            ]
            deadline = time.monotonic() + 30
            while _metric(url, "ondeck_inflight_requests") != 6:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.proc.wait, 60)
            stopped = time.monotonic() - sent
            return stopped, list(await asyncio.gather(*tasks, return_exceptions=True))

    stopped, answers = asyncio.run(go())
    # Six such requests run one after the other for many seconds; the drain gives them
    # 0.5 s (plus up to 1 s for answers being written).
    assert server.proc.returncode == 0
    completed = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    assert len(completed) <= 1, answers
    assert stopped < 5.0, server.output()


SHUTTING_DOWN = {"error": "the server is shutting down; retry, another replica will answer"}


def test_requests_left_at_the_drain_deadline_get_503_not_500(
    start_server: object, zoo: dict[str, Path]
) -> None:
    """Item 9 of issue 15: requests still queued when the drain ended, and requests sent
    after SIGTERM, got uvicorn's `500 text/plain` with a traceback each."""
    server = start_server(zoo["slow_heavy"], "--max-batch-size", "1", "--drain-timeout", "2")  # type: ignore[operator]
    url = server.wait_ready()
    # 1000 rows: about 1 s a request on 2 cores, so a 2 s drain finishes only a few of them
    feeds = [modelzoo.sample_inputs("slow", 1000, seed=i) for i in range(16)]
    requests = [binary_request(f) for f in feeds]

    async def post(client: httpx.AsyncClient, i: int) -> httpx.Response | Exception:
        body, headers = requests[i]
        try:
            return await client.post("/v2/models/slow_heavy/infer", content=body, headers=headers)
        except httpx.TransportError as exc:
            return exc

    async def go() -> tuple[list[httpx.Response | Exception], list[httpx.Response | Exception]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            before = [asyncio.create_task(post(client, i)) for i in range(12)]
            deadline = time.monotonic() + 30
            while (_metric(url, "ondeck_inflight_requests") or 0) < 12:
                assert time.monotonic() < deadline, "requests never got in flight"
                await asyncio.sleep(0.01)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            # Sent during the drain, on new connections: answered or 503, never 500.
            async with httpx.AsyncClient(base_url=url, timeout=60) as late:
                after = await asyncio.gather(*(post(late, i) for i in range(12, 16)))
            return list(await asyncio.gather(*before)), list(after)

    before, after = asyncio.run(go())
    assert server.proc.wait(30) == 0
    refused = 0
    for i, answer in enumerate([*before, *after]):
        if i >= len(before) and isinstance(answer, httpx.ConnectError):
            continue  # sent after the listener closed (a loaded machine): never reached it
        assert isinstance(answer, httpx.Response), (i, answer)
        if answer.status_code == 200:
            assert_same(
                decode_response(answer.content, answer.headers)[1],
                modelzoo.reference(zoo["slow_heavy"], feeds[i]),
            )
            continue
        assert answer.status_code == 503, (i, answer.status_code, answer.text[:200])
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == SHUTTING_DOWN
        refused += 1
    assert refused >= 8, "the drain was long enough for most requests: make them slower"
    output = server.output()
    assert "Exception in ASGI application" not in output
    assert "Traceback" not in output


def test_model_that_cannot_load_exits_1_with_one_line(start_server: object, tmp_path: Path) -> None:
    """Not "serving model …" first, nor the error twice: the error line is all it says."""
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    server = start_server(bad)  # type: ignore[operator]
    assert server.proc.wait(60) == 1
    lines = server.output().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"StartupError: onnxruntime cannot load {bad}: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"
    )


def test_busy_port_exits_1_with_one_port_in_use_line(zoo: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ondeck_server", "serve", "--model", str(zoo["mlp"]),
             "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"PortInUse: port {port} on 127.0.0.1 is in use; stop the process that listens there"
        " or pick another port with --port (--port 0 picks a free one)\n",
    )


def test_model_with_non_tensor_outputs_exits_1(start_server: object, tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    onx = to_onnx(LogisticRegression(max_iter=300).fit(x, y), x[:1].astype("float32"))  # ZipMap on
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(onx.SerializeToString())
    server = start_server(path)  # type: ignore[operator]
    assert server.proc.wait(60) == 1
    assert server.output().strip().splitlines()[-1] == (
        "StartupError: model output 'output_probability' is a seq(map(int64,tensor(float))),"
        " which the V2 protocol cannot carry; convert the model with plain tensor outputs"
        " (for scikit-learn: zipmap off)"
    )


def test_artifact_folder_and_ref(
    start_server: object, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """`--model` accepts an artifact folder (name and version from its manifest)."""
    import hashlib
    import shutil

    from ondeck_server import artifact

    store = tmp_path / "store"
    digest = hashlib.sha256(zoo["mlp"].read_bytes()).hexdigest()
    staging = artifact.staging_dir(store, digest)
    shutil.copy(zoo["mlp"], staging / artifact.MODEL_FILE)
    size = zoo["mlp"].stat().st_size
    manifest = artifact.Manifest(
        digest=digest,
        name="classifier",
        source=artifact.SourceInfo(
            uri="file:///mlp.onnx", sha256=digest, format="onnx", sizeBytes=size
        ),
        inputs=[artifact.TensorInfo(name="input", datatype="FP32", shape=[-1, 256])],
        outputs=[artifact.TensorInfo(name="logits", datatype="FP32", shape=[-1, 10])],
        originalSizeBytes=size,
        sizeBytes=size,
    )
    (staging / artifact.MANIFEST_FILE).write_text(manifest.to_json())
    artifact.publish(staging, store, digest)
    link = artifact.point_ref(store, "classifier", digest)
    server = start_server(link)  # type: ignore[operator]
    url = server.wait_ready()
    meta = httpx.get(f"{url}/v2/models/classifier").json()
    assert meta["versions"] == [digest[:12]]
    feeds = modelzoo.sample_inputs("mlp", 2)
    answer = httpx.post(
        f"{url}/v2/models/classifier/versions/{digest[:12]}/infer", content=json_request(feeds)
    )
    assert_same(
        decode_response(answer.content, answer.headers)[1], modelzoo.reference(zoo["mlp"], feeds)
    )
    assert server.terminate() == 0
