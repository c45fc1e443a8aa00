"""External data of untrusted models: locations must stay inside the model's folder and hold
the bytes the tensor declares, checked before anything is read or allocated."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparc.capture import load_onnx
from sparc.errors import UnsupportedModelError


def _model_with_external(folder, location="weights.bin", *, dims=(4, 4), data_bytes=64, length=None):
    """y = x @ W with W stored externally at ``location`` (relative to ``folder``)."""
    weight = numpy_helper.from_array(np.zeros((4, 4), np.float32), "W")
    weight.ClearField("raw_data")
    del weight.dims[:]
    weight.dims.extend(dims)
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0"} | ({"length": str(length)} if length is not None else {})
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    (folder / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes()[:data_bytes])
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    model = load_onnx(_model_with_external(tmp_path))
    np.testing.assert_array_equal(model.graph.initializers["W"].const_value.numpy().ravel(), np.arange(16))


@pytest.mark.parametrize("location, reason", [
    ("../../etc/passwd", "outside the model's folder"),
    ("/etc/passwd", "relative path inside"),
    ("sub/../../secret.bin", "outside the model's folder"),
    ("missing.bin", "no such file"),
])
def test_locations_that_escape_or_do_not_exist_are_refused(tmp_path, location, reason):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    with pytest.raises(UnsupportedModelError, match=f"tensor 'W'.*{reason}"):
        load_onnx(_model_with_external(folder, location))


def test_a_symlink_leading_out_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    with pytest.raises(UnsupportedModelError, match="outside the model's folder"):
        load_onnx(_model_with_external(folder, "link.bin"))


def test_a_tiny_file_claiming_a_huge_tensor_fails_fast(tmp_path):
    """10 bytes on disk, 100 GB declared: refused from the sizes, nothing allocated."""
    path = _model_with_external(tmp_path, dims=(5_000_000, 5_000), data_bytes=10)
    with pytest.raises(UnsupportedModelError, match="needs 100,000,000,000 bytes"):
        load_onnx(path)


def test_a_declared_length_shorter_than_the_tensor_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="declared length 32"):
        load_onnx(_model_with_external(tmp_path, length=32))
