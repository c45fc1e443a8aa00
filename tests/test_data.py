"""Calibration data intake (sparc.data): npz files, iterables of dicts or tuples, checks that name the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import MLP, seeded

from sparc.capture import capture
from sparc.data import as_calibration, holdout_size
from sparc.errors import CalibrationError


@pytest.fixture(scope="module")
def mlp():
    module = seeded(MLP)
    return module, capture(module, example_inputs=(torch.randn(2, 16),), dynamic_axes={"x": [0]})


def test_npz_calibration(minilm_ir, minilm_npz):
    data = as_calibration(minilm_npz, minilm_ir, batch_size=3)
    assert [b["input_ids"].shape[0] for b in data] == [3, 3, 3, 3, 3, 1]


def test_tuples_are_matched_to_inputs_in_order(mlp):
    _, model = mlp
    data = as_calibration([(np.ones((2, 16)),)], model)  # float64 cast to float32
    assert data.batches[0]["x"].dtype == np.float32


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"y": np.ones((2, 16), np.float32)}, r"missing inputs \['x'\].*unknown inputs \['y'\]"),
        ({"x": np.ones((2, 15), np.float32)}, r"input 'x' has shape \[2, 15\], the model wants \[x_dim0, 16\]"),
        ({"x": np.ones((16,), np.float32)}, "the model wants rank 2"),
        ({"x": np.ones((2, 16), np.int64)}, "has dtype int64, the model wants float32"),
        ({"x": [[1, 2], [3]]}, "cannot be converted|ragged"),
    ],
)
def test_bad_batches_are_named(mlp, batch, message):
    _, model = mlp
    with pytest.raises(CalibrationError, match=message):
        as_calibration([batch], model)


def test_bad_npz_files(mlp, tmp_path):
    _, model = mlp
    with pytest.raises(CalibrationError, match="no such calibration file"):
        as_calibration(tmp_path / "missing.npz", model)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="not a readable .npz"):
        as_calibration(garbage, model)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, x=np.ones((4, 16), np.float32), z=np.ones((3, 2)))
    with pytest.raises(CalibrationError, match="same number of samples"):
        as_calibration(uneven, model)


def test_holdout_size():
    assert [holdout_size(n) for n in (0, 1, 2, 9, 20, 100)] == [0, 0, 1, 1, 2, 4]
