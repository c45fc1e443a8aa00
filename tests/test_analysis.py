"""Pure graph analyses (sparc.analysis) on small graphs with a known answer and on the real MiniLM."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from sparc.analysis.blocks import find_blocks
from sparc.analysis.channels import find_channel_groups
from sparc.analysis.ffn import find_ffn_units
from sparc.analysis.linear import find_linear_layers
from sparc.analysis.norms import find_norms
from sparc.analysis.transformer import find_transformer
from sparc.errors import StructureError
from sparc.measure.cost import observed_shapes

GEMM_AND_TRANSPOSED_MATMUL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[4, 8] x) => (float[4, 2] y) {
    w1 = Constant <value = float[8, 6] {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
                                        0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}> ()
    b1 = Constant <value = float[6] {1,1,1,1,1,1}> ()
    w2 = Constant <value = float[2, 6] {0,0,0,0,0,0,0,0,0,0,0,0}> ()
    h = MatMul(x, w1)
    hb = Add(h, b1)
    a = Relu(hb)
    y = Gemm <transB = 1> (a, w2)
}
"""


def _lifted(text: str) -> ir.Model:
    from sparc.capture import load_onnx

    return load_onnx(ir.from_onnx_text(text))  # Constant weights become initializers, as for any input


def test_linear_layers_plain_with_bias_and_transposed():
    layers = find_linear_layers(_lifted(GEMM_AND_TRANSPOSED_MATMUL).graph)
    assert [(l.node.op_type, l.transposed, l.in_features, l.out_features) for l in layers] == [
        ("MatMul", False, 8, 6), ("Gemm", True, 6, 2)]
    assert layers[0].bias_node is not None and layers[0].output.name == "hb"


def test_an_mlp_unit_is_found_from_up_projection_to_down_projection():
    units = find_ffn_units(_lifted(GEMM_AND_TRANSPOSED_MATMUL).graph)
    assert len(units) == 1 and units[0].channels == 6 and units[0].hidden.name == "a"


def test_minilm_analyses(minilm_ir, minilm_batches):
    assert len(find_linear_layers(minilm_ir.graph)) == 36  # 6 blocks × (q, k, v, out, up, down)
    assert len(find_ffn_units(minilm_ir.graph)) == 6
    assert len(find_norms(minilm_ir)) == 13  # embeddings + 2 per block
    blocks = find_blocks(minilm_ir)
    assert [b.index for b in blocks] == list(range(6)) and blocks[0].output is blocks[1].input
    with pytest.raises(StructureError, match="post-norm|stream"):
        find_transformer(minilm_ir)  # MiniLM is post-norm: no residual stream to rotate
    feeds = {k: v[:1] for k, v in minilm_batches[0].items()}
    groups = find_channel_groups(minilm_ir, observed_shapes(minilm_ir, list(minilm_ir.graph), feeds))
    assert sum(g.prunable for g in groups) == 12  # heads and FFN units of each block
    assert all(any("normalizes over the channels" in r for r in g.blocked) for g in groups if g.blocked)


def test_a_graph_without_attention_has_no_blocks():
    with pytest.raises(StructureError, match="no attention Softmax"):
        find_blocks(_lifted(GEMM_AND_TRANSPOSED_MATMUL))


def test_a_classifiers_output_softmax_is_not_attention():
    """A CNN ending in Softmax (open_nsfw, mtcnn, PaddleOCR's classifier) splits into stages; a
    Softmax counts as attention only when a MatMul reads its probabilities."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from sparc.analysis.blocks import find_segments
    from sparc.capture import load_onnx

    weights = [numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in (("w1", (8, 8)), ("w2", (8, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["joined"]), helper.make_node("MatMul", ["joined", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"])]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["b", 4])], weights)
    model = load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [s.output.name for s in find_segments(model)] == ["joined", "probabilities"]


def test_observed_shapes_skip_omitted_optional_outputs():
    """An LSTM whose Y output is omitted (name ''), as exporters write it: the shapes of the
    named values are measured, the nameless one is not asked for."""
    import numpy as np
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("W", (1, 32, 4)), ("R", (1, 32, 8)))]
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], hidden_size=8)
    relu = helper.make_node("Relu", ["h"], ["y"])
    graph = helper.make_graph([lstm, relu], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    shapes = observed_shapes(model, list(model.graph), {"x": np.zeros((5, 2, 4), np.float32)})
    assert shapes["h"] == (1, 2, 8) and "" not in shapes
