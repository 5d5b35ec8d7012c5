"""The monitoring examples in docs/assets use metrics that exist: every `ondeck_…` name
in the Prometheus alert rules and the Grafana dashboard is exported either by a real
`ondeck-server serve` process (its /metrics, scraped over a socket) or by the operator's
metrics registry, and every label they group or filter by is one of that metric's labels
or one Prometheus adds when scraping Kubernetes pods."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "docs" / "assets"
#: Labels Prometheus' Kubernetes service discovery (and histograms) add to every series.
SCRAPE_LABELS = {"namespace", "pod", "container", "job", "instance", "service", "le"}
_METRIC = re.compile(r"\bondeck_[a-z0-9_]+\b")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((ASSETS / "prometheus-alerts.yaml").read_text())
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def _dashboard() -> dict[str, object]:
    return json.loads((ASSETS / "grafana-dashboard.json").read_text())


def _dashboard_exprs() -> list[str]:
    dash = _dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]  # type: ignore[attr-defined]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]  # type: ignore[index]
    return exprs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tiny_onnx(path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    save(model, str(path))


@pytest.fixture(scope="module")
def server_exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """metric sample name -> label names, from a real server after one inference."""
    pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install -e '.[server]'")
    folder = tmp_path_factory.mktemp("tiny")
    _tiny_onnx(folder / "model.onnx")
    port = free_port()
    cmd = [sys.executable, "-m", "ondeck_server", "serve", "--model", str(folder / "model.onnx")]
    proc = subprocess.Popen(
        [*cmd, "--name", "tiny", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"server not ready: {proc.stderr.read().decode() if proc.stderr else ''}")
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, -1]}]}
        assert httpx.post(f"{base}/v2/models/tiny/infer", json=body).status_code == 200
        text = httpx.get(f"{base}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return _samples(text)


def _samples(text: str) -> dict[str, set[str]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@pytest.fixture(scope="module")
def operator_exported() -> dict[str, set[str]]:
    """The operator's metrics after one of each event it records."""
    pytest.importorskip("aiohttp", reason="needs aiohttp: pip install -e '.[operator]'")
    from ondeck_operator.runtime.metrics import Metrics

    metrics = Metrics()
    metrics.reconciles.labels(result="ok").inc()
    metrics.errors.labels(reason="ApiError").inc()
    metrics.duration.observe(0.01)
    metrics.writes.labels(verb="apply").inc()
    metrics.on_request("get", 200, 0.01)
    metrics.set_phases(["Ready"])
    metrics.queue_depth.set(0)
    metrics.active.set(1)
    return _samples(metrics.render().decode())


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_metric_names_and_labels_exist(
    server_exported: dict[str, set[str]], operator_exported: dict[str, set[str]], source: str
) -> None:
    exported = server_exported | operator_exported
    exprs = _alert_exprs() if source == "alerts" else _dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, expr
        unknown = names - set(exported)
        assert not unknown, f"{unknown} in {expr!r}; exported: {sorted(exported)}"
        allowed = set().union(*(exported[n] for n in names)) | SCRAPE_LABELS
        used = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
        used |= set(_MATCHER.findall(expr))
        used.discard("")
        assert used <= allowed, f"labels {used - allowed} not on {names}: {expr!r}"


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((ASSETS / "prometheus-alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])


def test_dashboard_layout() -> None:
    dash = _dashboard()
    panels = dash["panels"]
    ids = [p["id"] for p in panels]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))
    for panel in panels:  # type: ignore[attr-defined]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
