"""The torch executor against ONNX Runtime: every supported op on its own, the real models,
gradients, and a clear error for an op it lacks."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from sparc.capture import capture_torch
from sparc.errors import UnsupportedModelError
from sparc.eval import datasets, zoo
from sparc.runtime import OrtRunner
from sparc.torch_runtime import OPS, TorchGraph, TorchRunner

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
F = RNG.standard_normal((2, 3, 4)).astype(np.float32)
POS = (np.abs(F) + 0.5).astype(np.float32)
IMG = RNG.standard_normal((2, 4, 7, 7)).astype(np.float32)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731

# (op, inputs, attributes, outputs); an input of None is an omitted optional input
CASES = [
    *[(name, [F], {}, 1) for name in ("Neg", "Abs", "Exp", "Tanh", "Erf", "Sigmoid", "Relu", "Cos", "Sin",
                                       "Floor", "Ceil", "Sign", "Identity", "Round", "Softplus")],
    *[(name, [POS], {}, 1) for name in ("Sqrt", "Reciprocal", "Log")],
    ("IsNaN", [F], {}, 1),
    ("Not", [F > 0], {}, 1),
    *[(name, [F, F[:1] + 0.1], {}, 1) for name in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual",
                                                 "Greater", "GreaterOrEqual", "Max", "Min")],
    ("Max", [F, F * 2, -F], {}, 1),
    ("Pow", [POS, np.float32(2.0)], {}, 1),
    ("Div", [I64(7, -7, 8), I64(2, 2, -3)], {}, 1),
    ("Mod", [I64(7, -7, 8), I64(3, 3, -3)], {}, 1),
    ("Mod", [F, np.float32(0.7)], {"fmod": 1}, 1),
    *[(name, [F > 0, F < 0.5], {}, 1) for name in ("And", "Or", "Xor")],
    ("MatMul", [F, RNG.standard_normal((4, 5)).astype(np.float32)], {}, 1),
    ("Where", [F > 0, F, -F], {}, 1),
    ("Cast", [F], {"to": TensorProto.INT64}, 1),
    ("CastLike", [I64(1, 2), F], {}, 1),
    ("Clip", [F, np.float32(-0.5), np.float32(0.5)], {}, 1),
    ("Clip", [F, None, np.float32(0.1)], {}, 1),
    ("Gelu", [F], {}, 1),
    ("Gelu", [F], {"approximate": "tanh"}, 1),
    ("LeakyRelu", [F], {"alpha": 0.2}, 1),
    ("PRelu", [F, RNG.standard_normal(4).astype(np.float32)], {}, 1),
    ("HardSigmoid", [F], {}, 1),
    ("HardSwish", [F], {}, 1),
    ("Elu", [F], {}, 1),
    ("Softmax", [F], {"axis": 1}, 1),
    ("LogSoftmax", [F], {}, 1),
    ("Shape", [F], {}, 1),
    ("Shape", [F], {"start": 1, "end": -1}, 1),
    ("Size", [F], {}, 1),
    ("Reshape", [F, I64(0, -1)], {}, 1),
    ("Flatten", [IMG], {"axis": 2}, 1),
    ("Transpose", [F], {"perm": [2, 0, 1]}, 1),
    ("Transpose", [F], {}, 1),
    ("Squeeze", [F[:, :1], I64(1)], {}, 1),
    ("Unsqueeze", [F, I64(0, -1)], {}, 1),
    ("Concat", [F, F * 2], {"axis": -1}, 1),
    ("Split", [F, I64(1, 3)], {"axis": 2}, 2),
    ("Split", [F], {"axis": 1, "num_outputs": 3}, 3),
    ("Slice", [F, I64(0, 1), I64(2, 100), I64(0, 2), I64(1, 2)], {}, 1),
    ("Slice", [F, I64(-1), I64(-100), I64(1), I64(-1)], {}, 1),
    ("Gather", [F, I64(2, -1, 0)], {"axis": 1}, 1),
    ("Gather", [F, np.array(1, np.int64)], {"axis": 2}, 1),
    ("Gather", [I64(5, 7, 9), np.array(-1, np.int64)], {}, 1),  # the legacy exporter's Gather(Shape(x), i)
    ("GatherElements", [F, RNG.integers(0, 3, (2, 3, 4)).astype(np.int64)], {"axis": 1}, 1),
    ("GatherND", [F, np.array([[0, 1], [1, 2]], np.int64)], {}, 1),
    ("GatherND", [F, np.array([[1], [2]], np.int64)], {"batch_dims": 1}, 1),
    ("Expand", [F[:, :1], I64(2, 3, 4)], {}, 1),
    ("Expand", [F, I64(3, 1, 1, 1)], {}, 1),
    ("Tile", [F, I64(1, 2, 1)], {}, 1),
    ("Range", [np.int64(1), np.int64(9), np.int64(3)], {}, 1),
    ("ConstantOfShape", [I64(2, 3)], {"value": helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])}, 1),
    ("Trilu", [F[0], np.int64(1)], {"upper": 0}, 1),
    ("Pad", [F, I64(0, 1, 2, 0, 0, 1), np.float32(0.5)], {}, 1),
    ("Pad", [IMG, I64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "reflect"}, 1),
    ("Pad", [IMG, I64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "edge"}, 1),
    *[(name, [F, I64(1)], {}, 1) for name in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2",
                                              "ReduceProd", "ReduceSumSquare")],
    ("ReduceMean", [F, I64(-1, 0)], {"keepdims": 0}, 1),
    ("ReduceSum", [F], {}, 1),
    ("Gemm", [F[0], RNG.standard_normal((5, 4)).astype(np.float32), np.ones(5, np.float32)],
     {"transB": 1, "alpha": 0.5, "beta": 2.0}, 1),
    ("Einsum", [F, F], {"equation": "bij,bkj->bik"}, 1),
    ("LayerNormalization", [F, POS[0, 0], F[0, 0]], {"epsilon": 1e-3}, 1),
    ("LayerNormalization", [F, POS[0]], {"axis": 1}, 1),
    ("BatchNormalization", [IMG, POS[0, 0], F[0, 0], F[1, 0], POS[1, 0]], {}, 1),
    ("Conv", [IMG, RNG.standard_normal((6, 4, 3, 3)).astype(np.float32), np.ones(6, np.float32)],
     {"pads": [1, 0, 2, 1], "strides": [2, 1]}, 1),
    ("Conv", [IMG, RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)], {"group": 4, "auto_pad": "SAME_UPPER"}, 1),
    ("Conv", [IMG, RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)], {"dilations": [2, 2]}, 1),
    ("MaxPool", [IMG], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 1),
    ("MaxPool", [IMG], {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]}, 1),
    ("AveragePool", [IMG], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 1),
    ("AveragePool", [IMG], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, 1),
    ("GlobalAveragePool", [IMG], {}, 1),
    ("GlobalMaxPool", [IMG], {}, 1),
    ("Dropout", [F], {}, 1),
]


def _single_node_model(op_type: str, inputs: list, attributes: dict, outputs: int, opset: int = 21) -> ir.Model:
    names, graph_inputs, initializers = [], [], []
    for i, array in enumerate(inputs):
        if array is None:
            names.append("")
            continue
        array = np.asarray(array)
        name = f"in{i}"
        names.append(name)
        if i == 0:
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
        else:
            initializers.append(onnx.numpy_helper.from_array(array, name))
    out_names = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op_type, names, out_names, **attributes)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_value_info(n, onnx.TypeProto()) for n in out_names],
                              initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ir.serde.deserialize_model(proto)


def _case_id(case) -> str:
    return f"{case[0]}-{sorted(case[2])}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_op_matches_onnxruntime(case):
    op_type, inputs, attributes, outputs = case
    model = _single_node_model(op_type, inputs, attributes, outputs)
    feeds = {"in0": np.asarray(inputs[0])}
    want = OrtRunner(model).run(feeds)
    got = TorchRunner(model).run(feeds)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=f"{op_type} {name}")


def test_every_registered_op_has_a_case():
    assert sorted(OPS) == sorted({case[0] for case in CASES} | {"Constant"})


def test_constant_and_legacy_softmax():
    """Constant nodes of each attribute kind; Softmax before opset 13 flattens from ``axis``."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0, 4.0]),
        helper.make_node("Add", ["x", "c"], ["y"]),
        helper.make_node("Softmax", ["y"], ["z"], axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_value_info("z", onnx.TypeProto())])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]))
    want = OrtRunner(model).run({"x": F})["z"]
    np.testing.assert_allclose(TorchRunner(model).run({"x": F})["z"], want, rtol=1e-5, atol=1e-6)


def test_unknown_op_names_the_node():
    model = _single_node_model("Hardmax", [F], {}, 1)
    with pytest.raises(UnsupportedModelError, match=r"node .*Hardmax.* not supported"):
        TorchRunner(model).run({"in0": F})


def test_custom_domain_op_is_refused():
    node = helper.make_node("SparseLinear", ["x"], ["y"], domain="ai.sparc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_value_info("y", onnx.TypeProto())])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.sparc", 1)])
    with pytest.raises(UnsupportedModelError, match="ai.sparc::SparseLinear"):
        TorchRunner(ir.serde.deserialize_model(proto)).run({"x": np.ones(2, np.float32)})


def test_gradients_reach_the_parameters():
    """A parameter given in place of an initializer receives the gradient torch computes."""
    weight = RNG.standard_normal((4, 5)).astype(np.float32)
    model = _single_node_model("MatMul", [F, weight], {}, 1)
    w_value = model.graph.initializers["in1"]
    parameter = torch.nn.Parameter(torch.from_numpy(weight))
    graph = TorchGraph(model.graph, parameters={w_value: parameter})
    (y,) = graph.evaluate([model.graph.outputs[0]], {model.graph.inputs[0]: F})
    y.sum().backward()
    np.testing.assert_allclose(parameter.grad.numpy(), F.reshape(-1, 4).sum(0)[:, None].repeat(5, 1), rtol=1e-5)


def test_evaluates_a_part_given_an_intermediate_value():
    """Given a value in the middle, only the nodes after it run (the one before is never needed)."""
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Exp", ["a"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_value_info("b", onnx.TypeProto())])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    a = model.graph.node(0).outputs[0]
    runner = TorchGraph(model.graph)
    assert [n.op_type for n in runner.plan([model.graph.outputs[0]], [a])] == ["Exp"]
    (b,) = runner.evaluate([model.graph.outputs[0]], {a: np.zeros(3, np.float32)})
    np.testing.assert_array_equal(b.numpy(), np.ones(3, np.float32))


def _real_model(name: str, minilm_ir, minilm_batches):
    if name == "minilm":
        return minilm_ir, minilm_batches[0]
    net = zoo.mnist_cnn() if name == "mnist" else zoo.efficientnet_lite0()
    feeds = net.make_inputs(datasets.mnist_digits()[0][:4] if name == "mnist" else datasets.cifar_photos()[:2])
    return capture_torch(net.module, zoo.torch_inputs(feeds), net.dynamic_axes), feeds


@pytest.mark.parametrize("name", ["minilm", "mnist", "efficientnet"])
def test_real_models_match_onnxruntime(name, minilm_ir, minilm_batches):
    model, feeds = _real_model(name, minilm_ir, minilm_batches)
    want = OrtRunner(model).run(feeds)
    got = TorchRunner(model).run(feeds)
    for key, array in want.items():
        scale = float(np.abs(array).max())
        np.testing.assert_allclose(got[key], array, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
