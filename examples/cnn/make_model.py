"""Train the CNN example: a small PyTorch convolutional network on the 8x8 handwritten
digits that ship with scikit-learn, saved as TorchScript next to this script.

    .venv/bin/python examples/cnn/make_model.py [--out examples/cnn/model.pt]

TorchScript files carry no input names or shapes, which is why the example's manifest
declares them (`spec.model.inputs`). The committed `model.pt` was made by this script.
It does not convert or serve anything: `ondeck run -f examples/cnn/modeldeployment.yaml`
does that.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EPOCHS = 40
SEED = 0


def build() -> Any:
    """Conv(1→8) → ReLU → Conv(8→16) → ReLU → MaxPool → Linear(256→10): about 6 k weights."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def train() -> tuple[Any, float]:
    """Train on the digits set (pixels scaled to [0, 1]); returns the model in eval mode
    and its accuracy on the training data."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(SEED)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N,1,8,8
    y = torch.tensor(digits.target, dtype=torch.long)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    return model, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.pt")
    out: Path = parser.parse_args().out

    import torch

    model, accuracy = train()
    scripted = torch.jit.script(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(out))
    print(f"wrote {out} ({out.stat().st_size} bytes), training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
