"""IR edits the passes share: replacing a linear layer's weight or bias, fixing shapes.

Every edit respects sharing: an initializer read by other nodes (the torch exporter
deduplicates identical tensors; a tied head reads the embedding table) is never changed in
place; the edited layer gets its own copy.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparc.analysis.linear import LinearLayer
from sparc.ir_utils import add_initializer, constant_array, contiguous, set_initializer


def only_reader(value: ir.Value, node: ir.Node) -> bool:
    """True when ``node`` is the only node reading ``value`` and it is no graph output."""
    return all(use.node is node for use in value.uses()) and not value.is_graph_output()


def replace_initializer_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> ir.Value:
    """Make input ``index`` of ``node`` hold ``array``: in place when unshared, else a copy.

    A float array takes the dtype of the value it replaces (float64 math, float32 model).
    """
    value = node.inputs[index]
    if value is not None and value.dtype is not None and np.asarray(array).dtype.kind == "f":
        array = np.asarray(array).astype(value.dtype.numpy())
    if value is not None and value.is_initializer() and only_reader(value, node):
        set_initializer(graph, value, array)
        return value
    fresh = add_initializer(graph, name, array)
    node.replace_input_with(index, fresh)
    return fresh


def set_weight(graph: ir.Graph, layer: LinearLayer, weight_kn: np.ndarray) -> None:
    """Give ``layer`` the weight ``weight_kn`` ([K, N]: y = x·W), in the layer's orientation.

    A MatMul that read its weight through ``Transpose(W)`` gets its own [K, N] initializer.
    """
    weight_kn = contiguous(np.asarray(weight_kn, dtype=np.float32))
    if layer.transpose_node is not None:
        fresh = add_initializer(graph, f"{layer.name}.weight_kn", weight_kn)
        layer.node.replace_input_with(1, fresh)
        layer.weight, layer.transpose_node, layer.transposed = fresh, None, False
        return
    array = weight_kn.T if layer.transposed else weight_kn
    layer.weight = replace_initializer_input(graph, layer.node, 1, array, f"{layer.name}.weight")


def set_shared_weight(graph: ir.Graph, layers: list[LinearLayer], weight_kn: np.ndarray) -> None:
    """Give ``layers``, which read one stored weight in one orientation, the weight ``weight_kn``.

    In place when nothing else reads the stored weight; else one copy for the layers reading it
    directly and one [K, N] copy for those reading it through ``Transpose``.
    """
    if len(layers) == 1:
        return set_weight(graph, layers[0], weight_kn)
    stored = layers[0].weight
    weight_kn = contiguous(np.asarray(weight_kn, dtype=np.float32))
    array = weight_kn.T if layers[0].transposed else weight_kn
    readers = {layer.transpose_node or layer.node for layer in layers}
    nodes = {layer.node for layer in layers}
    only_ours = all(use.node in readers for use in stored.uses()) and all(
        use.node in nodes for layer in layers if layer.transpose_node for use in layer.transpose_node.outputs[0].uses())
    if stored.is_initializer() and only_ours:
        set_initializer(graph, stored, contiguous(array.astype(stored.dtype.numpy())))
        return
    direct = [layer for layer in layers if layer.transpose_node is None]
    if direct:
        fresh = add_initializer(graph, f"{direct[0].name}.weight", array)
        for layer in direct:
            layer.node.replace_input_with(1, fresh)
            layer.weight = fresh
    through_transpose = [layer for layer in layers if layer.transpose_node is not None]
    if through_transpose:
        fresh_kn = add_initializer(graph, f"{through_transpose[0].name}.weight_kn", weight_kn)
        for layer in through_transpose:
            layer.node.replace_input_with(1, fresh_kn)
            layer.weight, layer.transpose_node, layer.transposed = fresh_kn, None, False


def bias_of(layer: LinearLayer) -> np.ndarray | None:
    """The layer's bias as an array, or None."""
    return constant_array(layer.bias) if layer.bias is not None else None


def set_bias(graph: ir.Graph, layer: LinearLayer, bias: np.ndarray) -> None:
    """Give ``layer`` the bias ``bias`` (length N), adding an Add (or Gemm's C) if it has none
    (a graph output keeps its name: the Add writes it)."""
    bias = contiguous(np.asarray(bias, dtype=np.float32))
    if layer.bias is not None:
        node = layer.bias_node or layer.node
        index = 2 if layer.bias_node is None else list(node.inputs).index(layer.bias)
        layer.bias = replace_initializer_input(graph, node, index, bias, f"{layer.name}.bias")
        return
    value = add_initializer(graph, f"{layer.name}.bias", bias)
    if layer.node.op_type == "Gemm":
        layer.node.resize_inputs(3)
        layer.node.replace_input_with(2, value)
        layer.bias = value
        return
    out = layer.node.outputs[0]
    add = ir.node("Add", [out, value], name=f"{layer.node.name}_bias")
    is_output, name = out.is_graph_output(), out.name
    out.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
    add.replace_input_with(0, out)
    graph.insert_after(layer.node, add)
    add.outputs[0].shape = out.shape
    add.outputs[0].type = out.type
    if is_output:  # the graph output keeps its name: callers feed on it
        out.name = f"{name}_before_bias"
        add.outputs[0].name = name
    layer.bias, layer.bias_node = value, add


def set_last_dim(value: ir.Value, size: int) -> None:
    """Record that ``value``'s last axis now has ``size`` elements (other dims unchanged)."""
    if value.shape is not None and len(value.shape) > 0:
        value.shape = ir.Shape([*list(value.shape)[:-1], size])


def constant(graph: ir.Graph, name: str, array) -> ir.Value:
    """A new initializer holding ``array`` (float32 unless it is already an int array)."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    return add_initializer(graph, name, array)
