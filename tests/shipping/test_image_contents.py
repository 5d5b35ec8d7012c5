"""What each image installs is enough for what it runs.

The images install ondeck's wheel with one extra each (operator: `[operator]`; server:
`[server]`, see the Dockerfiles). Without building the images (tests/images builds and
runs them where Docker runs), the tests rebuild each image's Python environment from this
one: the distributions the image gets are the transitive closure of ondeck's base
requirements plus that extra (read from pyproject.toml and the installed metadata); a
site folder linking exactly their files is the only site-packages of a `python -S`
subprocess, which then runs the image's programs. A module the image lacks fails there
with ModuleNotFoundError, as it would in the container. The server image converts a real
ONNX model with int8 quantization, without the converters (and serves a language model:
tests/llm/test_server_image.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

# Runs in a Python started with -S (no site-packages): only the image's distributions, put
# on the path as a site folder of their own, and ondeck's sources are importable.
SANDBOX = r"""
import json, os, runpy, site, sys

site.addsitedir(os.environ["IMAGE_SITE"])
sys.path[:0] = json.loads(os.environ["IMAGE_SOURCES"])
for module in json.loads(os.environ["IMAGE_IMPORTS"]):
    __import__(module)
if os.environ.get("IMAGE_MAIN"):
    sys.argv = [os.environ["IMAGE_MAIN"], *json.loads(os.environ["IMAGE_ARGV"])]
    runpy.run_module(os.environ["IMAGE_MAIN_MODULE"], run_name="__main__")
"""


def _closure(requirements: list[str]) -> set[str]:
    """Normalized names of every distribution `requirements` pull in, transitively."""
    seen: set[str] = set()
    stack = [(Requirement(r), frozenset(Requirement(r).extras)) for r in requirements]
    while stack:
        requirement, wanted = stack.pop()
        name = requirement.name.lower().replace("_", "-")
        if name == "ondeck":  # ondeck[sklearn,pytorch] style self-references
            for extra in requirement.extras:
                stack += [(Requirement(r), frozenset()) for r in _extra(extra)]
            continue
        key = f"{name}[{','.join(sorted(wanted))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            child = Requirement(line)
            marker = child.marker
            extras_on = ["", *sorted(wanted)]
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras_on):
                stack.append((child, frozenset(child.extras)))
    return {k.partition("[")[0] for k in seen}


@cache
def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extra(name: str) -> list[str]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return list(project["optional-dependencies"][name])


def image_distributions(extra: str) -> set[str]:
    """Normalized names of the distributions the image built with `extra` holds."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return _closure([*project["dependencies"], *_extra(extra)]) | {"ondeck"}


def image_modules(extra: str) -> set[str]:
    """Top-level import names the image built with `extra` can import."""
    dists = image_distributions(extra)
    return {
        module
        for module, owners in metadata.packages_distributions().items()
        if any(o.lower().replace("_", "-") in dists for o in owners)
    }


@cache
def _image_site(extra: str, root: Path) -> Path:
    """A site folder holding links to exactly the image's installed files."""
    folder = root / f"site-{extra}"
    folder.mkdir()
    for name in sorted(image_distributions(extra)):
        dist = metadata.distribution(name)
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops - {".."}):
            target = base / top
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    return folder


def image_env(
    extra: str,
    *,
    root: Path,
    imports: list[str],
    main: tuple[str, str, list[str]] | None = None,
    cwd: Path | None = None,
) -> dict[str, str]:
    """The whole environment of `python -S -c SANDBOX` running as the image built with
    `extra`: import `imports`, then run `main` (program name, module, argv) if given."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(cwd or root),
        "IMAGE_SITE": str(_image_site(extra, root)),
        "IMAGE_SOURCES": json.dumps([str(ROOT / "operator"), str(ROOT / "server")]),
        "IMAGE_IMPORTS": json.dumps(imports),
    }
    if main:
        program, module, argv = main
        env |= {"IMAGE_MAIN": program, "IMAGE_MAIN_MODULE": module, "IMAGE_ARGV": json.dumps(argv)}
    return env


def _run_in_image(
    extra: str,
    *,
    root: Path,
    imports: list[str],
    main: tuple[str, str, list[str]] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = image_env(extra, root=root, imports=imports, main=main, cwd=cwd)
    return subprocess.run(
        [sys.executable, "-S", "-c", SANDBOX],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-sites")


def test_the_sandbox_lacks_what_the_image_lacks(sites: Path) -> None:
    done = _run_in_image("operator", root=sites, imports=["onnxruntime"])
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'onnxruntime'" in done.stderr


def test_operator_image_runs_the_operator(sites: Path) -> None:
    done = _run_in_image(
        "operator",
        root=sites,
        imports=["ondeck_operator.runtime.handlers", "ondeck_operator.cli.operator_cmd"],
        main=("ondeck", "ondeck_operator", ["operator", "--help"]),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--health-port" in done.stdout


def test_operator_image_holds_no_model_stack() -> None:
    modules = image_modules("operator")
    assert not modules & {"onnxruntime", "onnx", "torch", "sklearn", "fastapi"}


def test_server_image_serves_and_converts_onnx_without_the_converters(
    sites: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])],
        "image-check",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, tmp_path / "model.onnx")

    modules = image_modules("server")
    assert "onnxruntime" in modules
    assert not modules & {"torch", "sklearn", "skl2onnx", "kopf", "kubernetes"}
    done = _run_in_image(
        "server",
        root=sites,
        imports=["ondeck_server.serve.app", "ondeck_server.serve.cli", "ondeck_server.convert.cli"],
        main=(
            "ondeck-server",
            "ondeck_server",
            [
                *("convert", "--source", str(tmp_path / "model.onnx")),
                *("--store", str(tmp_path / "store"), "--quantize", "int8"),
            ],
        ),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "store" / summary["digest"] / "model.onnx").is_file()
