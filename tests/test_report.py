"""The compile report (sparc.report): per-pass table, per-output table, latency, TVM, JSON."""

from __future__ import annotations

import json

import numpy as np

from sparc.backends.tvm import TvmBuild
from sparc.measure.cost import ModelStats
from sparc.measure.latency import Latency
from sparc.measure.outputs import OutputError
from sparc.passes.pipeline import PassEntry
from sparc.report import Report


def _report() -> Report:
    ids = np.arange(6).reshape(2, 3)
    embedding = np.full((2, 4), 0.5, np.float32)
    error = OutputError.between([[ids, embedding * 0.9]], [[ids, embedding]], ["ids", "embedding"])
    entry = PassEntry("ChannelCrop", {"ratio": 0.25}, True, 12.5, ModelStats(75, 75, 300, 900), error,
                      {"pruned": ["fc1: 32 -> 24"]}, peak_rss=300 * 2**20, calibration_seconds=4.0,
                      verify_seconds=1.5)
    agreement = OutputError.between([[ids, embedding]], [[ids, embedding]], ["ids", "embedding"])
    return Report("model.onnx", "tvm", "cpu", ModelStats(100, 100, 400, 1200), [entry], "1 held-out batch",
                  latency=Latency(10.0, 8.0, 0.8, 1, 20, "x[1, 16]"),
                  tvm=TvmBuild("x[1, 16]", 3.2, [], ["fused_add"], agreement))


def test_markdown_gives_each_pass_its_time_and_each_output_its_own_error():
    text = _report().to_markdown()
    assert "| ChannelCrop | 75 | 75 | 900 | 300 | 0.1 | ids: identical; embedding: cos 1.0000 (min 1.0000) | " \
           "12.50 | 4.00 | 1.50 | 300 |" in text
    assert "| ids | int64 | [2, 3] | exact | exact | exact | exact | identical |" in text
    assert "| embedding | float32 | [2, 4] | cosine | 0.05 | 0.1 | 0.1 | cos 1.0000 (min 1.0000) |" in text
    assert "total vs original: params 0.750x" in text and "MACs 0.750x" in text
    assert "ratio 0.800 (1.25x)" in text
    assert "- TVM compile for x[1, 16]: 3.2 s" in text and "- TVM functions left unscheduled (serial): fused_add" in text


def test_json_has_the_worst_output_and_every_output():
    data = json.loads(_report().to_json())
    error = data["passes"][0]["error"]
    assert error["max_rel"] == data["error"]["max_rel"] > 0.099
    assert [o["name"] for o in error["outputs"]] == ["ids", "embedding"] and error["outputs"][0]["mismatched"] == 0
    assert data["passes"][0]["calibration_seconds"] == 4.0 and data["final"]["params"] == 75
    assert data["tvm"]["unscheduled"] == ["fused_add"] and data["latency"]["ratio"] == 0.8


def test_parameters_count_int8_weights_and_weights_in_constant_nodes():
    """An int8 weight dequantized in the graph (Cast × scale) and a float weight held by a
    Constant node (as paddle2onnx writes them) are parameters; shape tensors are not."""
    from onnx import TensorProto, helper, numpy_helper

    from sparc.capture import load_onnx
    from sparc.measure.cost import count_params

    rng = np.random.default_rng(0)
    q = numpy_helper.from_array(rng.integers(-127, 127, (16, 32)).astype(np.int8), "q")
    scale = numpy_helper.from_array(np.float32(0.01), "scale")
    shape = numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")
    dense = numpy_helper.from_array(np.ones((32, 8), np.float32), "w2")
    nodes = [helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["qf", "scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Constant", [], ["w2c"], value=dense),
             helper.make_node("MatMul", ["h", "w2c"], ["h2"]), helper.make_node("Reshape", ["h2", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [q, scale, shape])
    model = load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    total, _ = count_params(model.graph)
    assert total == 16 * 32 + 1 + 32 * 8
