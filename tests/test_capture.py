"""Capture: torch modules and ONNX sources become IR that runs like the source."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import helper, numpy_helper
from tiny_models import MLP, ResidualCNN, TinyGPT, seeded

from sparc.capture import capture, capture_torch, load_onnx
from sparc.errors import UnsupportedModelError
from sparc.eval import zoo
from sparc.runtime import OrtRunner


def _ort(model, feeds):
    return list(OrtRunner(model, threads=1).run(feeds).values())


def test_mlp_matches_torch():
    module = seeded(MLP)
    x = torch.randn(5, 16)
    model = capture(module, example_inputs=(x,), dynamic_axes={"x": {0: "batch"}})
    x2 = torch.randn(9, 16)
    (got,) = _ort(model, {"x": x2.numpy()})
    np.testing.assert_allclose(got, module(x2).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert str(model.graph.inputs[0].shape[0]) == "batch"


def test_cnn_with_batchnorm_and_residuals_matches_torch():
    module = seeded(ResidualCNN)
    x = torch.randn(2, 3, 12, 12)
    model = capture(module, example_inputs=(x,))
    (got,) = _ort(model, {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    ops = {n.op_type for n in model.graph}
    assert "Conv" in ops and "Add" in ops


def test_pre_layernorm_gpt_with_dynamic_batch_and_sequence():
    module = seeded(TinyGPT)
    ids = torch.randint(0, 97, (2, 8))
    model = capture(
        module, example_inputs=(ids,), dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}
    )
    for shape in [(1, 5), (3, 17)]:
        other = torch.randint(0, 97, shape)
        (got,) = _ort(model, {"input_ids": other.numpy()})
        np.testing.assert_allclose(got, module(other).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_minilm_matches_torch(minilm, minilm_ir, minilm_batches):
    feeds = minilm_batches[1]
    (got,) = _ort(minilm_ir, feeds)
    with torch.no_grad():
        want = minilm.module(**zoo.torch_inputs(feeds)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    longer = minilm.make_inputs(["a much longer sentence " * 20], seq=96)
    (got,) = _ort(minilm_ir, longer)
    with torch.no_grad():
        want = minilm.module(**zoo.torch_inputs(longer)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_layer_names_trace_back_to_modules(minilm_ir):
    from sparc.analysis.linear import find_linear_layers

    names = [layer.name for layer in find_linear_layers(minilm_ir.graph)]
    assert any(name.endswith("model.encoder.layer.0.attention.self.query") for name in names)
    assert len(names) == 6 * 6


def test_capture_never_mutates_the_source_model():
    module = seeded(MLP)
    x = torch.randn(2, 16)
    source = capture(module, example_inputs=(x,))
    before = ir.to_onnx_text(source)
    copy = capture(source)
    copy.graph.remove(list(copy.graph)[-1], safe=False)
    assert ir.to_onnx_text(source) == before
    assert sum(1 for _ in copy.graph) == sum(1 for _ in source.graph) - 1


def test_torch_export_rejection_names_the_module():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x

    with pytest.raises(UnsupportedModelError, match="DataDependent"):
        capture(DataDependent(), example_inputs=(torch.randn(3),))


def test_module_without_example_inputs_is_refused():
    with pytest.raises(UnsupportedModelError, match="example_inputs"):
        capture(seeded(MLP))


def test_dynamic_axes_with_unknown_input_is_refused():
    with pytest.raises(UnsupportedModelError, match="unknown inputs"):
        capture(seeded(MLP), example_inputs=(torch.randn(2, 16),), dynamic_axes={"y": [0]})


# ONNX sources -------------------------------------------------------------------------


def _constant_weight_model() -> onnx.ModelProto:
    """y = x @ W + b with W and b held in Constant nodes (as some exporters write them)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_node_weights_are_lifted_to_initializers():
    proto = _constant_weight_model()
    model = load_onnx(proto)
    assert "Constant" not in {n.op_type for n in model.graph}
    assert {v.shape.dims for v in model.graph.initializers.values()} == {(4, 3), (3,)}
    x = np.ones((2, 4), np.float32)
    (got,) = _ort(model, {"x": x})
    w, b = (numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node[:2])
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-6)


def test_external_data_model(tmp_path):
    module = seeded(MLP, 64, 128, 8)
    model = capture(module, example_inputs=(torch.randn(2, 64),), dynamic_axes={"x": [0]})
    path = tmp_path / "ext.onnx"
    ir.save(model, path, external_data="ext.weights", size_threshold_bytes=0)
    assert (tmp_path / "ext.weights").stat().st_size > 64 * 128 * 4
    loaded = load_onnx(path)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    (got,) = _ort(loaded, {"x": x})
    np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    (tmp_path / "ext.weights").unlink()  # the IR no longer depends on the user's files
    (again,) = _ort(loaded, {"x": x})
    np.testing.assert_array_equal(got, again)


def test_missing_external_data_names_the_tensor(tmp_path):
    model = capture(seeded(MLP, 64, 128, 8), example_inputs=(torch.randn(2, 64),))
    path = tmp_path / "ext.onnx"
    ir.save(model, path, external_data="ext.weights", size_threshold_bytes=0)
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(UnsupportedModelError, match="initializer .fc1.*external data ext.weights.*no such file"):
        load_onnx(path)


def test_model_written_by_the_legacy_exporter(tmp_path):
    module = seeded(ResidualCNN)
    x = torch.randn(1, 3, 8, 8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), buffer, dynamo=False, opset_version=11,
            input_names=["image"], dynamic_axes={"image": {0: "batch"}},
        )
    path = tmp_path / "legacy.onnx"
    path.write_bytes(buffer.getvalue())
    model = load_onnx(path)
    assert model.opset_imports[""] >= 13  # opset 11 was upgraded
    x2 = torch.randn(3, 3, 8, 8)
    (got,) = _ort(model, {"image": x2.numpy()})
    np.testing.assert_allclose(got, module(x2).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_unknown_ops_are_all_listed_at_once():
    graph = helper.make_graph(
        [
            helper.make_node("FancyOp", ["x"], ["a"], name="first", domain="com.example"),
            helper.make_node("Relu", ["a"], ["b"], name="fine"),
            helper.make_node("NotAnOnnxOp", ["b"], ["y"], name="second"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(proto)
    assert len(info.value.problems) == 2
    text = str(info.value)
    assert "com.example::FancyOp (nodes: first)" in text
    assert "ai.onnx::NotAnOnnxOp (nodes: second)" in text


def test_too_new_opset_is_refused():
    proto = _constant_weight_model()
    proto.opset_import[0].version = 99
    with pytest.raises(UnsupportedModelError, match="opset 99"):
        load_onnx(proto)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not an onnx model at all, just some text\n" * 10, "not"),
        (b"", "not an ONNX model"),
    ],
)
def test_non_onnx_bytes(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UnsupportedModelError, match=message) as info:
        load_onnx(path)
    assert str(path) in str(info.value)


def test_truncated_onnx(tmp_path, minilm_path):
    data = minilm_path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")


def test_capture_torch_reuses_the_exporter_metadata(minilm_ir):
    scoped = [n for n in minilm_ir.graph if "pkg.torch.onnx.name_scopes" in n.metadata_props]
    assert len(scoped) > 0.9 * sum(1 for _ in minilm_ir.graph)


def test_capture_torch_accepts_keyword_inputs():
    module = seeded(MLP)
    model = capture_torch(module, {"x": torch.randn(3, 16)}, {"x": [0]})
    (got,) = _ort(model, {"x": np.ones((4, 16), np.float32)})
    assert got.shape == (4, 8)


@pytest.mark.parametrize("size, accepted", [(-1, True), (-2, False)])
def test_minus_one_io_sizes_are_dynamic_other_negatives_refused(size, accepted):
    """paddle2onnx writes -1 for an unknown size; sparc reads it as a dynamic dimension."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size, 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if not accepted:
        with pytest.raises(UnsupportedModelError, match="negative size"):
            load_onnx(model)
        return
    loaded = load_onnx(model)
    assert [str(d) for d in loaded.graph.inputs[0].shape] == ["x_dim0", "4"]
    assert OrtRunner(loaded).run({"x": np.ones((5, 4), np.float32)})["y"].shape == (5, 3)
