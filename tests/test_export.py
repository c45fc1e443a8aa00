"""Exports are checker-valid and atomic: a failure never touches an existing file."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from tiny_models import MLP, seeded

import sparc.backends.onnxruntime as ort_backend
from sparc.backends.onnxruntime import export_onnx
from sparc.capture import capture, load_onnx
from sparc.errors import BackendError
from sparc.runtime import OrtRunner


@pytest.fixture()
def model():
    return capture(seeded(MLP), example_inputs=(torch.randn(2, 16),))


def test_export_writes_a_checker_valid_file(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failed_export_leaves_the_existing_file_untouched(model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"precious user data")
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.attributes["bogus"] = ir.AttrInt64("bogus", 1)  # the checker rejects this model
    with pytest.raises(BackendError, match="checker rejects"):
        export_onnx(model, path)
    assert path.read_bytes() == b"precious user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_interrupted_while_writing_leaves_no_trace(model, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ort_backend.ir, "save", broken_save)
    with pytest.raises(BackendError, match="disk full"):
        export_onnx(model, path)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_large_models_use_external_data(model, tmp_path, monkeypatch):
    monkeypatch.setattr(ort_backend, "PROTOBUF_LIMIT", 2**26 + 1000)  # every model is "large"
    path = export_onnx(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= (16 * 32 + 32 * 8) * 4
    x = np.ones((2, 16), np.float32)
    got = OrtRunner(load_onnx(path)).run({"x": x})
    want = OrtRunner(model).run({"x": x})
    np.testing.assert_allclose(list(got.values())[0], list(want.values())[0])


def test_export_into_a_missing_folder_or_onto_a_folder(model, tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        export_onnx(model, tmp_path / "nope" / "m.onnx")
    with pytest.raises(BackendError, match="is a folder"):
        export_onnx(model, tmp_path)
