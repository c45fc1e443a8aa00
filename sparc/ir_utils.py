"""Small helpers over onnx_ir shared by capture, passes, calibration and backends."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

PROTOBUF_LIMIT = 2**31 - 1


def contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray turns 0-d into 1-d)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def copy_model(model: ir.Model) -> ir.Model:
    """An independent deep copy (nodes, values and tensors) of ``model``."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def check_model(model: ir.Model) -> str | None:
    """Run the ONNX checker; return its message on failure, None when the model is valid."""
    try:
        common_passes.CheckerPass()(model)
    except Exception as exc:  # the checker raises ValidationError, shape errors, ...
        cause = exc.__cause__ or exc
        return f"{type(cause).__name__}: {cause}"
    return None


def weight_bytes(model: ir.Model) -> int:
    """Bytes held by the main graph's initializers."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of an initializer or a Constant node's output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def set_initializer(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Replace the data of initializer ``value`` with ``array``, keeping its name and uses."""
    value.const_value = ir.tensor(contiguous(array), name=value.name)
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    if value.name not in graph.initializers:
        graph.register_initializer(value)


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer named ``name`` (made unique) holding ``array``."""
    unique = name
    suffix = 1
    while unique in graph.initializers:
        unique = f"{name}_{suffix}"
        suffix += 1
    value = ir.Value(
        name=unique,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(contiguous(array), name=unique),
    )
    graph.register_initializer(value)
    return value
