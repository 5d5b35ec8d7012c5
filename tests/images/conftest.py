"""Fixtures of the image tests: the images built from the repo's Dockerfiles.

`images` (session) builds them with scripts/build-images.sh. Without a usable Docker
engine the tests skip, naming docker; in CI (CI=true) they fail instead, since CI must
prove the images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from images.tools import Images, build_images, docker_problem, in_ci


def require_docker() -> None:
    problem = docker_problem()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but {problem}", pytrace=False)
    pytest.skip(f"needs {problem}")


@pytest.fixture(scope="session")
def images() -> Images:
    require_docker()
    built = build_images()
    print(f"\nimages: {built.report()}")
    return built
