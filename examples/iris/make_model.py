"""Train the iris example: a small scikit-learn neural network (MLPClassifier, 4 → 64 →
64 → 3) on the iris data set that ships with scikit-learn, saved with skops (not pickle)
next to this script.

    .venv/bin/python examples/iris/make_model.py [--out examples/iris/model.skops]

A multi-layer perceptron rather than a LogisticRegression, because int8 quantization
works on matrix multiplications: skl2onnx turns a LogisticRegression into a single
`LinearClassifier` operator of the ONNX-ML domain, which int8 leaves as it is.
The committed `model.skops` and `samples.npz` (the gate's samples) were made by this
script; rerun it to check or replace them.
It does not convert or serve anything: `ondeck run -f examples/iris/modeldeployment.yaml`
does that.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def train() -> tuple[Any, float]:
    """A deterministic classifier (4 float features in, one of 3 species out) and its
    accuracy on the training data."""
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    data = load_iris()
    x, y = data.data.astype("float32"), data.target
    model = MLPClassifier(
        hidden_layer_sizes=(64, 64), solver="lbfgs", max_iter=2000, random_state=0
    )
    model.fit(x, y)
    return model, float(model.score(x, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.skops")
    out: Path = parser.parse_args().out

    import skops.io as sio

    model, accuracy = train()
    out.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, out)
    print(f"wrote {out} ({out.stat().st_size} bytes), training accuracy {accuracy:.3f}")
    samples = out.with_name(SAMPLES)
    write_samples(samples)
    print(f"wrote {samples} (the 150 iris measurements, the gate's samples)")


#: Real inputs for the accuracy gate (`spec.optimize.calibration`): the int8 model is
#: compared with the original on iris measurements, not on N(0, 1) noise, where the
#: classes of this network nearly tie and a flipped pick says nothing about accuracy.
SAMPLES = "samples.npz"


def write_samples(path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_iris

    np.savez(path, input=load_iris().data.astype("float32"))


if __name__ == "__main__":
    main()
