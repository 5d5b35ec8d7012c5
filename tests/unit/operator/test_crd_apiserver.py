"""The generated CRD in a real kube-apiserver: it installs (structural schema, CEL rules
within the cost budget), valid manifests pass a server-side dry run with their defaults
filled in, and every bad manifest of the table is refused at the field the table names —
with the very message of the types for the cross-field (CEL) rules. Skipped, naming what
is missing, when the control-plane binaries are not built (scripts/build-control-plane.sh).
"""

from __future__ import annotations

import copy
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.cli.render_cmd import check_manifest
from ondeck_operator.codegen.crd import crd

from .bad_manifests import BAD, Bad
from .specs import FULL_SPEC, manifest
from .strategies import manifests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

E2E = Path(__file__).resolve().parents[2] / "e2e"
NAMESPACE = "default"
MD_PATH = f"/apis/ondeck.io/v1alpha1/namespaces/{NAMESPACE}/modeldeployments"
# The URL, not the body, picks the version: a wrong apiVersion is kubectl's to refuse.
SERVER_SIDE = [b for b in BAD if b.id != "wrong-api-version"]


class Api:
    def __init__(self, server: str, context: ssl.SSLContext) -> None:
        self.server, self.context = server, context

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.server + path, data=data, method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as rsp:
                return rsp.status, json.loads(rsp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    sys.path.insert(0, str(E2E))
    try:
        from controlplane import (  # type: ignore[import-not-found]
            MissingBinaryError,
            control_plane_binaries,
            start_control_plane,
        )
    finally:
        sys.path.remove(str(E2E))
    try:
        binaries = control_plane_binaries(build=False)
    except MissingBinaryError as exc:
        pytest.skip(f"needs {exc}")
    plane = start_control_plane(tmp_path_factory.mktemp("apiserver"), binaries=binaries)
    try:
        client = Api(plane.server, plane.ssl_context())
        status, body = client.call(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd()
        )
        assert status == 201, body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, got = client.call(
                "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                "modeldeployments.ondeck.io",
            )  # fmt: skip
            found = (got.get("status") or {}).get("conditions") or []
            conditions = {c["type"]: c["status"] for c in found}
            if conditions.get("Established") == "True":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"CRD not established: {got.get('status')}")
        # Discovery of a new CRD lags its Established condition a little.
        for _ in range(100):
            if client.call("GET", MD_PATH)[0] == 200:
                break
            time.sleep(0.2)
        yield client
    finally:
        plane.stop()


def dry_run(api: Api, doc: dict[str, Any]) -> tuple[int, Any]:
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": NAMESPACE}}
    doc["metadata"].pop("uid", None)
    return api.call("POST", MD_PATH + "?dryRun=All&fieldValidation=Strict", doc)


@pytest.mark.parametrize("doc", [manifest(), manifest(FULL_SPEC)], ids=["minimal", "full"])
def test_valid_manifests_are_accepted_with_the_types_defaults(
    api: Api, doc: dict[str, Any]
) -> None:
    status, body = dry_run(api, doc)
    assert status == 201, body
    # The API server fills in the same defaults as the types, and what it stores means
    # the same to the types (quantities may stay integers there).
    ours = ModelDeployment.from_manifest(doc)
    stored = ModelDeployment.from_manifest({**doc, "spec": body["spec"]})
    assert _paths(body["spec"]) == _paths(ours.to_manifest()["spec"])
    assert stored.spec == ours.spec


def _paths(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        out = set()
        for key, value in node.items():
            out |= {f"{prefix}.{key}"} | _paths(value, f"{prefix}.{key}")
        return out
    return set()


@pytest.mark.parametrize("bad", SERVER_SIDE, ids=[b.id for b in SERVER_SIDE])
def test_bad_manifests_are_refused_at_the_field(api: Api, bad: Bad) -> None:
    status, body = dry_run(api, bad.manifest())
    assert status in (400, 422), body
    causes = body.get("details", {}).get("causes", [])
    text = body.get("message", "")
    fields = [c.get("field", "") for c in causes]
    assert any(f in (bad.field, f".{bad.field}") for f in fields) or bad.field in text, body
    if bad.rule:
        assert any(bad.words in c.get("message", "") for c in causes), causes


@settings(
    max_examples=int(os.environ.get("ONDECK_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(doc=manifests())
def test_any_valid_manifest_is_accepted_by_the_api_server(api: Api, doc: dict[str, Any]) -> None:
    """No CEL rule or schema constraint refuses what the types accept."""
    status, body = dry_run(api, doc)
    assert status == 201, body.get("message", body)
    stored = ModelDeployment.from_manifest({**doc, "spec": body["spec"]})
    assert stored.spec == ModelDeployment.from_manifest(doc).spec


def _paths_of(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += _paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.append((*prefix, index))
            out += _paths_of(value, (*prefix, index))
    return out


FUZZ_BASE = manifest(FULL_SPEC)
FUZZ_PATHS = [p for p in _paths_of(FUZZ_BASE["spec"])]
ODD_VALUES = [None, -1, 0, 1, 3, 2.5, 70000, "", "x", "Bad Value", "1Gi", "500m", True,
              [], {}, ["x"], {"a": "b"}, "ReadWriteMany", "Exists", "s3://b/k"]  # fmt: skip


@settings(
    max_examples=int(os.environ.get("ONDECK_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(FUZZ_PATHS), st.sampled_from(["delete", *range(len(ODD_VALUES))])
        ),
        min_size=1,
        max_size=2,
    )
)
def test_ondeck_validate_and_the_api_server_agree(api: Api, edits: list[Any]) -> None:
    """Damage a valid manifest at random: `ondeck validate` refuses it exactly when the
    API server does."""
    doc = copy.deepcopy(FUZZ_BASE)
    for path, edit in edits:
        parent: Any = doc["spec"]
        try:
            for part in path[:-1]:
                parent = parent[part]
            if edit == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(ODD_VALUES[edit])
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    status, body = dry_run(api, doc)
    problems = check_manifest(doc)
    event("accepted" if status == 201 else "refused")
    if status == 201:
        assert problems == [], f"ondeck validate refuses what the API server accepts: {problems}"
    else:
        assert status in (400, 422), body
        assert problems, f"ondeck validate accepts what the API server refuses: {body['message']}"
