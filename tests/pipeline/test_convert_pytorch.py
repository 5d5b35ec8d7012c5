"""PyTorch sources: TorchScript files with declared inputs, torch.export programs that
carry their own, and the files ondeck refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ConversionFailed,
    ConvertRequest,
    InvalidSettings,
    UnsupportedFormat,
    convert,
    parse_inputs,
)
from pipeline import models
from pipeline.conftest import Sources, assert_nothing_published, onnx_answers


def torch_answers(path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(path)) if path.suffix == ".pt" else torch.export.load(str(path))
    if path.suffix == ".pt2":
        module = module.module()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("name", "inputs", "shape"),
    [
        ("mlp.pt", models.MLP_INPUTS, (5, 64)),
        ("cnn.pt", models.CNN_INPUTS, (3, 3, 32, 32)),
        ("mlp.pt2", None, (7, 64)),
    ],
)
def test_torch_models_give_the_same_answers(
    sources: Sources, store: Path, name: str, inputs: str | None, shape: tuple[int, ...]
) -> None:
    source = sources[name]
    outcome = convert(
        ConvertRequest(
            source=str(source),
            store=store,
            inputs=parse_inputs(inputs) if inputs else None,
        )
    )
    manifest = outcome.manifest
    assert manifest.source.format == "pytorch"
    # TorchScript: the declared name; torch.export: the forward() argument's name.
    input_name = "x" if name.endswith(".pt2") else "input"
    assert manifest.inputs[0].name == input_name
    assert manifest.inputs[0].shape[0] == -1, "the batch dimension is dynamic"
    assert manifest.validation["passed"] is True
    assert manifest.validation["reference"] in ("torchscript", "torch-export")
    # A batch size the exporter never saw: the dynamic batch really is dynamic.
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    (got,) = onnx_answers(outcome.path / artifact.MODEL_FILE, {input_name: x})
    np.testing.assert_allclose(got, torch_answers(source, x), atol=1e-4, rtol=1e-4)


def test_torchscript_without_an_input_spec(sources: Sources, store: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        convert(ConvertRequest(source=str(sources["mlp.pt"]), store=store))
    assert info.value.message == (
        "mlp.pt is a TorchScript model, which does not record its input shapes; give --inputs "
        "(spec.model.inputs), e.g. input:float32:[-1,3,32,32]"
    )
    assert_nothing_published(store)


def test_inputs_that_do_not_fit_the_model(sources: Sources, store: Path) -> None:
    with pytest.raises(ConversionFailed) as info:
        convert(
            ConvertRequest(
                source=str(sources["mlp.pt"]),
                store=store,
                inputs=parse_inputs("input:float32:[-1,3]"),
            )
        )
    # torch's own line, with the shapes, from the end of its TorchScript traceback.
    assert info.value.message == (
        "mlp.pt fails on inputs shaped like --inputs (input:float32:[-1,3]): mat1 and mat2 "
        "shapes cannot be multiplied (2x3 and 64x256); check the names, dtypes and shapes"
    )
    assert_nothing_published(store)


@pytest.mark.parametrize(
    ("name", "inputs", "why"),
    [
        (
            "eigh.pt",
            "x:float32:[-1,8,8]",
            "Exporting the operator 'aten::linalg_eigh' to ONNX opset version 17 is not supported",
        ),
        (
            "eigh.pt2",
            None,
            "No ONNX function found for aten._linalg_eigh. Failure message: No "
            "decompositions registered for the real-valued input",
        ),
    ],
)
def test_an_operator_onnx_cannot_express_is_named(
    sources: Sources, store: Path, name: str, inputs: str | None, why: str
) -> None:
    """Both exporters bury the operator: the TorchScript one after a graph dump, the
    dynamo one under a page of advice; the one line keeps it (and no colour codes)."""
    with pytest.raises(ConversionFailed) as info:
        convert(
            ConvertRequest(
                source=str(sources[name]),
                store=store,
                inputs=parse_inputs(inputs) if inputs else None,
            )
        )
    assert info.value.one_line() == (
        f"ConversionFailed: torch.onnx could not export {name}: {why}; the model may use an "
        "operator ONNX cannot express"
    )
    assert_nothing_published(store)


def test_plain_torch_save_pickle_is_refused(sources: Sources, store: Path) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        convert(
            ConvertRequest(
                source=str(sources["eager.pt"]),
                store=store,
                inputs=parse_inputs("x:float32:[-1,4]"),
            )
        )
    assert info.value.message == (
        "eager.pt is a torch.save pickle of a whole Python module, which needs its source "
        "code to load (and runs code when loaded); save the model with "
        "torch.export.save(torch.export.export(model, example_args), 'model.pt2') or "
        "torch.jit.save(torch.jit.script(model), 'model.pt')"
    )
    assert_nothing_published(store)


def test_a_state_dict_is_called_one(sources: Sources, store: Path) -> None:
    """`torch.save(model.state_dict())`, the most common way to save torch weights: told
    apart from a pickled module by the names in its pickle (never unpickled)."""
    with pytest.raises(UnsupportedFormat) as info:
        convert(ConvertRequest(source=str(sources["state_dict.pt"]), store=store))
    assert info.value.message == (
        "state_dict.pt is a torch.save of a state_dict: weights only, without the model's "
        "architecture, so there is nothing to run; load it into your model "
        "(model.load_state_dict(...)) and save the whole model with "
        "torch.export.save(torch.export.export(model, example_args), 'model.pt2') or "
        "torch.jit.save(torch.jit.script(model), 'model.pt')"
    )
    assert_nothing_published(store)
