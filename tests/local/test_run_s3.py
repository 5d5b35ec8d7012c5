"""examples/s3 in local mode against a real S3-compatible server (moto in server mode on
127.0.0.1): the AWS_* variables of the shell stand in for the manifest's
credentialsSecret, and missing credentials end with the conversion's one error line."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .runner import OndeckRun, free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples" / "s3" / "modeldeployment.yaml"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    boto3 = pytest.importorskip("boto3", reason="needs boto3: pip install -e '.[server]'")
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="ondeck-test",
            aws_secret_access_key="ondeck-test-secret",
        )
        client.create_bucket(Bucket="ondeck-examples")
        for name in ("model.skops", "samples.npz"):
            client.put_object(
                Bucket="ondeck-examples",
                Key=f"iris/{name}",
                Body=(ROOT / "examples" / "iris" / name).read_bytes(),
            )
        yield endpoint
    finally:
        server.stop()


def _env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    # No ~/.aws files: only what is given here counts.
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_s3_example_with_shell_credentials(s3_endpoint: str, tmp_path: Path) -> None:
    env = _env(s3_endpoint, tmp_path) | {
        "AWS_ACCESS_KEY_ID": "ondeck-test",
        "AWS_SECRET_ACCESS_KEY": "ondeck-test-secret",
    }
    args = ["-f", str(MANIFEST), "--store", str(tmp_path / "store"), "--port", str(free_port())]
    run = OndeckRun(args, env=env, unset=AWS_VARS)
    try:
        lines = run.wait_banner()
        assert lines[0].startswith("ondeck: serving iris-s3 at http://127.0.0.1:")
        response = run.send("V2")
        assert response.status_code == 200, response.text
        labels = [o for o in response.json()["outputs"] if o["name"] == "label"]
        assert labels[0]["data"][0] in (0, 1, 2)
    finally:
        assert run.stop(signal.SIGTERM) == 0
    assert run.err[0] == (
        "ondeck: spec.model.credentialsSecret (s3-model-reader) is not read locally: "
        "the AWS_* variables of this shell are used instead"
    )


def test_s3_example_without_credentials_fails_with_one_line(
    s3_endpoint: str, tmp_path: Path
) -> None:
    args = ["-f", str(MANIFEST), "--store", str(tmp_path / "store"), "--port", str(free_port())]
    run = OndeckRun(args, env=_env(s3_endpoint, tmp_path), unset=AWS_VARS)
    assert run.wait_exit() == 1
    errors = [line for line in run.err if line.startswith("FetchFailed: ")]
    assert len(errors) == 1, run.err
    assert errors[0].startswith(
        "FetchFailed: s3://ondeck-examples/iris/model.skops: no S3 credentials"
    )
    assert run.out == []
