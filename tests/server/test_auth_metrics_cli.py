"""Bearer-token auth on and off, Prometheus counters that move, and the `serve` command
line: `--help` documents every flag and env var, every bad input exits non-zero with
one line."""

# ruff: noqa: E501  (tables of exact user-facing messages read best one case per line)

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import modelzoo
from ondeck_server.serve.settings import FLAGS, ServeSettings
from server.v2client import assert_same, decode_response, json_request

UNAUTHORIZED = {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"}


@pytest.fixture(scope="module")
def auth_url(
    start_server: object, zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> str:
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text("s3cret-token\n")  # a trailing newline, as `echo` writes it
    server = start_server(zoo["mlp"], "--auth-token-file", str(token_file))  # type: ignore[operator]
    return str(server.wait_ready())


def test_auth_required_on_every_model_route(auth_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("mlp", 1)
    body = json_request(feeds)
    routes = [
        ("POST", "/v2/models/mlp/infer", body),
        ("POST", "/v1/models/mlp:predict", b'{"instances": [[0]]}'),
        ("GET", "/v2/models/mlp", None),
        ("GET", "/v2/models/mlp/ready", None),
        ("GET", "/v2", None),
        ("GET", "/v1/models", None),
        ("GET", "/v2/models/mlp/config", None),
        ("GET", "/v2/models/mlp/stats", None),
        ("GET", "/v2/models/stats", None),
        ("POST", "/v2/repository/index", b""),
    ]
    for method, path, content in routes:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-token"},
            {"Authorization": "Bearer"},
        ):
            answer = httpx.request(method, auth_url + path, content=content, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.json() == UNAUTHORIZED
            assert answer.headers["www-authenticate"] == 'Bearer realm="ondeck"'
    good = {"Authorization": "Bearer s3cret-token"}
    answer = httpx.post(f"{auth_url}/v2/models/mlp/infer", content=body, headers=good)
    assert answer.status_code == 200
    assert_same(
        decode_response(answer.content, answer.headers)[1], modelzoo.reference(zoo["mlp"], feeds)
    )
    assert (
        httpx.get(
            f"{auth_url}/v2/models/mlp", headers={"authorization": "bearer s3cret-token"}
        ).status_code
        == 200
    )


def test_health_and_metrics_need_no_token(auth_url: str) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(auth_url + path).status_code == 200, path


def test_auth_off_needs_no_token(mlp_url: str) -> None:
    assert httpx.get(f"{mlp_url}/v2/models/mlp").status_code == 200


def test_everything_from_environment_variables(start_server: object, zoo: dict[str, Path]) -> None:
    env = {
        "ONDECK_MODEL": str(zoo["mlp"]),
        "ONDECK_MODEL_NAME": "renamed",
        "ONDECK_HOST": "127.0.0.1",
        "ONDECK_PORT": "0",
        "ONDECK_AUTH_TOKEN": "from-env",
        "ONDECK_MAX_BATCH_SIZE": "1",
        "ONDECK_THREADS": "1",
    }
    server = start_server(None, env=env)  # type: ignore[operator]
    url = server.wait_ready()
    assert httpx.get(f"{url}/v2/models/renamed").status_code == 401
    meta = httpx.get(f"{url}/v2/models/renamed", headers={"Authorization": "Bearer from-env"})
    assert meta.json()["name"] == "renamed"
    assert "(batching off, onnxruntime threads 1)" in server.output()
    assert server.terminate() == 0


# ------------------------------------------------------------------ metrics
def _samples(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(ondeck_[^ ]+) ([0-9.e+-]+)$", text, re.MULTILINE)
    }


def test_metrics_move(mlp_url: str) -> None:
    before = _samples(mlp_url)
    body = json_request(modelzoo.sample_inputs("mlp", 2))
    for _ in range(3):
        assert httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body).status_code == 200
    assert httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=b"{").status_code == 400
    assert httpx.post(f"{mlp_url}/v2/models/other/infer", content=body).status_code == 404
    assert (
        httpx.post(
            f"{mlp_url}/v1/models/mlp:predict", json={"instances": [[0.0] * 256]}
        ).status_code
        == 200
    )
    after = _samples(mlp_url)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved('ondeck_requests_total{code="200",model="mlp",protocol="v2"}') == 3
    assert moved('ondeck_requests_total{code="400",model="mlp",protocol="v2"}') == 1
    assert moved('ondeck_requests_total{code="404",model="",protocol="v2"}') == 1
    assert moved('ondeck_requests_total{code="200",model="mlp",protocol="v1"}') == 1
    assert moved('ondeck_request_duration_seconds_count{model="mlp",protocol="v2"}') == 4
    assert moved('ondeck_inference_duration_seconds_count{model="mlp"}') >= 1
    assert moved('ondeck_batch_size_sum{model="mlp"}') == 7  # 3 requests of 2 rows + 1 row
    assert after['ondeck_model_load_seconds{model="mlp"}'] > 0
    assert after['ondeck_queue_depth{model="mlp"}'] == 0
    assert after["ondeck_inflight_requests"] == 0
    assert after['ondeck_model_ready{model="mlp"}'] == 1


# ------------------------------------------------------------------ command line
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
    return subprocess.run(
        [sys.executable, "-m", "ondeck_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )


def test_version_prints_the_package_version() -> None:
    from ondeck_server import __version__

    result = cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"ondeck-server {__version__}\n",
        "",
    )


def test_help_lists_every_flag_and_env_var() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    assert set(FLAGS) == set(ServeSettings.model_fields)
    for flag, env in FLAGS.values():
        assert re.search(rf"{flag}\b", result.stdout), flag
        assert f"env var: {env}" in result.stdout, env


def test_bad_command_lines_exit_with_one_line(tmp_path: Path, zoo: dict[str, Path]) -> None:
    model = str(zoo["mlp"])
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    text = tmp_path / "model.txt"
    text.write_text("x")
    cases = [
        (["serve"], 2, "MissingParameter: Missing option '--model' (env var: 'ONDECK_MODEL')."),
        (["serve", "--model", model, "--port", "http"], 2, "BadParameter: Invalid value for '--port' (env var: 'ONDECK_PORT'): Input should be a valid integer, unable to parse string as an integer"),
        (["serve", "--model", model, "--batch", "4"], 2, "NoSuchOption: No such option: --batch (Possible options: --max-batch-size)"),
        (["serve", "--model", str(tmp_path / "missing.onnx")], 1, f"StartupError: model path {tmp_path / 'missing.onnx'} does not exist"),
        (["serve", "--model", str(text)], 1, f"StartupError: {text} is not an .onnx file or an artifact folder"),
        (["serve", "--model", str(tmp_path)], 1, f"StartupError: {tmp_path} has no model.onnx: give a model.onnx or an artifact folder"),
        (["serve", "--model", model, "--max-batch-size", "0"], 1, "InvalidSettings: --max-batch-size: Input should be greater than or equal to 1"),
        (["serve", "--model", model, "--port", "70000"], 1, "InvalidSettings: --port: Input should be less than or equal to 65535"),
        (["serve", "--model", model, "--max-delay-ms", "-1"], 1, "InvalidSettings: --max-delay-ms: Input should be greater than or equal to 0"),
        (["serve", "--model", model, "--name", "a/b"], 1, "InvalidSettings: --name: must start with a letter or digit and hold only letters, digits, '.', '_' or '-' (at most 128)"),
        (["serve", "--model", model, "--auth-token", "x", "--auth-token-file", str(empty)], 1, "InvalidSettings: give --auth-token-file or --auth-token, not both"),
        (["serve", "--model", model, "--auth-token-file", str(empty)], 1, f"StartupError: --auth-token-file {empty} is empty: give a non-empty bearer token or turn auth off"),
        (["serve", "--model", model, "--auth-token-file", str(tmp_path / "nope")], 1, f"StartupError: cannot read --auth-token-file {tmp_path / 'nope'}: No such file or directory"),
        (["serve", "--model", model, "--auth-token", "two words"], 1, "StartupError: --auth-token: the token must be printable ASCII without spaces"),
        (["serve", "--model", model, "--max-queue", "0"], 1, "InvalidSettings: --max-queue: Input should be greater than or equal to 1"),
    ]  # fmt: skip
    for args, code, line in cases:
        result = cli(*args)
        assert (result.returncode, result.stderr.strip()) == (code, line), args
        assert result.stdout == ""


def test_bad_environment_variable_exits_with_one_line(zoo: dict[str, Path]) -> None:
    result = cli("serve", env={"ONDECK_MODEL": str(zoo["mlp"]), "ONDECK_MAX_QUEUE": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "BadParameter: Invalid value for '--max-queue' (env var: 'ONDECK_MAX_QUEUE'):"
        " Input should be a valid integer, unable to parse string as an integer"
    )
