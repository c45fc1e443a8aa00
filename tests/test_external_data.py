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
    with pytest.raises(UnsupportedModelError, match=rf"initializer 'W' \(external data .*{reason}"):
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


def _external_tensor(name, location, values):
    tensor = numpy_helper.from_array(values, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(values.nbytes)}.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _constant_model(folder, location):
    """y = x + c with c held by a Constant node whose tensor lives in external data."""
    values = np.arange(4, dtype=np.float32).reshape(1, 4)
    (folder / "weights.bin").write_bytes(values.tobytes())
    constant = helper.make_node("Constant", [], ["c"], name="const_c",
                                value=_external_tensor("c", location, values))
    graph = helper.make_graph([constant, helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, values


def test_external_tensors_in_constant_attributes_load_into_memory(tmp_path):
    path, values = _constant_model(tmp_path, "weights.bin")
    model = load_onnx(path)
    (tmp_path / "weights.bin").unlink()  # nothing is read from the user's folder later
    (weight,) = [v.const_value for v in model.graph.initializers.values()]
    np.testing.assert_array_equal(weight.numpy(), values)


def test_external_tensors_in_constant_attributes_are_checked(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path, _ = _constant_model(folder, "../secret.bin")
    with pytest.raises(UnsupportedModelError, match="node 'const_c' attribute 'value'.*outside"):
        load_onnx(path)


def test_external_tensors_in_subgraphs_are_checked(tmp_path):
    """An If branch whose initializer points outside the folder is refused, naming it."""
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    values = np.ones((1, 4), np.float32)
    branch = helper.make_graph([helper.make_node("Identity", ["k"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                               [_external_tensor("k", "../secret.bin", values)])
    node = helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="node 'choose' attribute '(then|else)_branch' subgraph: initializer 'k'.*outside"):
        load_onnx(folder / "m.onnx")


def _inline_model(tmp_path, edit):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    edit(weight)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    path = tmp_path / "inline.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _cut_payload(weight):
    weight.raw_data = weight.raw_data[:10]


def _huge_dims(weight):
    weight.dims[0] = 2**40


def _negative_dims(weight):
    weight.dims[0] = -4


def _undefined_type(weight):
    weight.data_type = 99


@pytest.mark.parametrize("edit, message", [
    (_cut_payload, r"initializer 'W': dims \[4, 4\] declare 64 bytes, the file holds 10"),
    (_huge_dims, r"initializer 'W': dims \[1099511627776, 4\] declare 17,592,186,044,416 bytes"),
    (_negative_dims, r"initializer 'W' has negative dims \[-4, 4\]"),
    (_undefined_type, r"initializer 'W' has unsupported data type 99"),
])
def test_inline_tensors_must_hold_what_their_dims_declare(tmp_path, edit, message):
    with pytest.raises(UnsupportedModelError, match=message):
        load_onnx(_inline_model(tmp_path, edit))


def test_a_model_proto_with_external_data_is_refused_without_its_folder(tmp_path):
    proto = onnx.load(_model_with_external(tmp_path), load_external_data=False)
    with pytest.raises(UnsupportedModelError, match="external file; load the model from its path"):
        load_onnx(proto)
