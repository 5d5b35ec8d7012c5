"""What `ondeck run` says about a manifest's fields before it runs: only those local
mode really ignores are reported as ignored (issue 16: `spec.server.auth` was listed as
"the local server asks for no token", but local mode serves with a token now)."""

from __future__ import annotations

from pathlib import Path

from ondeck_operator import local

ROOT = Path(__file__).resolve().parents[3]


def test_auth_is_used_locally_and_not_reported_as_ignored() -> None:
    loaded = local.load_manifest(ROOT / "examples" / "production" / "modeldeployment.yaml")
    assert loaded.md.spec.server.auth is not None  # the example asks for auth
    assert [n.line() for n in local.notices(loaded.raw)] == [
        "ondeck: spec.model.credentialsSecret (s3-model-reader) is not read locally: the"
        " AWS_* variables of this shell are used instead",
        "ondeck: ignored in local mode: spec.server.replicas (one local server process)",
        "ondeck: ignored in local mode: spec.server.resources (no resource limits locally)",
        "ondeck: ignored in local mode: spec.autoscaling (no HorizontalPodAutoscaler locally)",
        "ondeck: ignored in local mode: spec.ingress (no Ingress locally; use --host and --port)",
    ]
    assert ("server", "auth") in local.USED_LOCALLY
    assert ("server", "auth") not in local.CLUSTER_ONLY
