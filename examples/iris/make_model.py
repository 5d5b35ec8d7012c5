"""Train the iris example: a scikit-learn LogisticRegression on the iris data set that
ships with scikit-learn, saved with skops (not pickle) next to this script.

    .venv/bin/python examples/iris/make_model.py [--out examples/iris/model.skops]

The committed `model.skops` was made by this script; rerun it to check or replace it.
It does not convert or serve anything: `ondeck run -f examples/iris/modeldeployment.yaml`
does that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train() -> object:
    """A deterministic classifier: 4 float features in, one of 3 species out."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    model = LogisticRegression(max_iter=1000)
    model.fit(data.data.astype("float32"), data.target)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.skops")
    out: Path = parser.parse_args().out

    import skops.io as sio

    model = train()
    out.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
