"""Which optional packages each source framework needs, and the error that names the
fix when one is missing. The slim server image (Dockerfile.server) has none of them: a
PyTorch or scikit-learn model is converted in the converter image (Dockerfile.converter,
the chart's `converterImage`), or locally after `pip install 'ondeck[pytorch]'` /
`'ondeck[sklearn]'`. Checked with `importlib.util.find_spec`, so nothing heavy is imported
to find out."""

from __future__ import annotations

import importlib.util

from ondeck_server.convert.errors import ConverterMissing
from ondeck_server.convert.formats import Format

#: framework -> (the pip extra that has its converter, the modules it needs)
NEEDS: dict[Format, tuple[str, tuple[str, ...]]] = {
    Format.PYTORCH: ("pytorch", ("torch", "onnxscript")),
    Format.SKLEARN: ("sklearn", ("sklearn", "skl2onnx", "skops", "joblib")),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_converter(framework: Format) -> None:
    """Raise `ConverterMissing` naming the image and the extra when `framework`'s
    converter packages are not installed here."""
    if framework not in NEEDS:
        return
    extra, modules = NEEDS[framework]
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise ConverterMissing(
            f"converting a {framework.value} model needs {', '.join(missing)}, which this"
            f" image does not have: run the conversion in the ondeck converter image (the"
            f" chart's converterImage; Dockerfile.converter) or pip install 'ondeck[{extra}]'"
        )
