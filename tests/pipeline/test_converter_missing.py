"""A framework whose converter packages are not installed (the slim server image has
none) fails with one `ConverterMissing` line naming the image and the extra that have
it, never `InternalError ... ModuleNotFoundError`. "Not installed" is made real for the
import system by a `None` entry in sys.modules, which makes `import x` fail and
`importlib.util.find_spec(x)` return None, exactly as for an absent package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.conftest import Sources

_LAUNCH = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['ondeck-server', *sys.argv[2:]]\n"
    "from ondeck_server.cli import main\n"
    "main()\n"
)


def _convert_without(hidden: str, source: Path, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LAUNCH, hidden, "convert", "--source", str(source),
         "--store", str(store)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("source", "hidden", "message"),
    [
        (
            "mlp.pt",
            "torch,onnxscript",
            "ConverterMissing: converting a pytorch model needs torch, onnxscript, which this"
            " image does not have: run the conversion in the ondeck converter image (the"
            " chart's converterImage; Dockerfile.converter) or pip install 'ondeck[pytorch]'",
        ),
        (
            "iris_pipeline.skops",
            "skl2onnx",
            "ConverterMissing: converting a sklearn model needs skl2onnx, which this image does"
            " not have: run the conversion in the ondeck converter image (the chart's"
            " converterImage; Dockerfile.converter) or pip install 'ondeck[sklearn]'",
        ),
    ],
)
def test_missing_converter_names_the_image_and_the_extra(
    sources: Sources, tmp_path: Path, source: str, hidden: str, message: str
) -> None:
    done = _convert_without(hidden, sources[source], tmp_path / "store")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr
