"""Small helpers over onnx_ir shared by capture, passes, calibration and backends."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

PROTOBUF_LIMIT = 2**31 - 1
WEIGHT_STORE = "sparc.weight_store"  # graph.meta key of an out-of-core model's WeightStore


def contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray turns 0-d into 1-d)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def copy_model(model: ir.Model) -> ir.Model:
    """An independent deep copy (nodes, values and tensors) of ``model``; external-data
    tensors stay references to their files."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    folders = {v.name: v.const_value.base_dir for v in model.graph.initializers.values()
               if isinstance(v.const_value, ir.ExternalTensor)}
    for value in copy.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor) and value.name in folders:
            value.const_value = _relocated(value.const_value, folders[value.name])
    return copy


def _relocated(tensor: ir.ExternalTensor, folder) -> ir.ExternalTensor:
    return ir.ExternalTensor(tensor.location, tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape,
                             name=tensor.name, base_dir=folder)


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
    value.const_value = _new_tensor(graph, array, value.name)
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
        const_value=_new_tensor(graph, array, unique),
    )
    graph.register_initializer(value)
    return value


def _new_tensor(graph: ir.Graph, array: np.ndarray, name: str):
    """``array`` as a tensor in memory, or written to the graph's weight store (out of core)."""
    store = weight_store(graph)
    return store.tensor(array, name) if store is not None else ir.tensor(contiguous(array), name=name)


class WeightStore:
    """Where an out-of-core compile keeps the weights it makes: each is appended to one file
    (``weights.bin`` in ``folder``) as it is made and referenced as an external tensor, so
    memory holds none of them. The file's offsets are 64-byte aligned. Without ``folder``, a
    temporary folder (under ``TMPDIR``) that goes when the store does."""

    def __init__(self, folder: Path | None = None):
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="sparc-weights-"))
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        self.path = Path(folder) / "weights.bin"
        self.temporary = True  # the file is the store's own, not yet an export's data
        self._file = open(self.path, "wb")

    def tensor(self, array: np.ndarray, name: str) -> ir.ExternalTensor:
        array = contiguous(np.asarray(array))
        offset = -self._file.tell() % 64
        self._file.write(b"\0" * offset)
        start = self._file.tell()
        self._file.write(array.tobytes())
        self._file.flush()
        return ir.ExternalTensor(self.path.name, start, array.nbytes, ir.DataType.from_numpy(array.dtype),
                                 shape=ir.Shape(array.shape), name=name, base_dir=self.path.parent)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def moved_to(self, path: Path) -> None:
        """The closed store's file now is ``path`` (an export's external data)."""
        self.path, self.temporary = Path(path), False


def weight_store(graph: ir.Graph) -> WeightStore | None:
    """The weight store of an out-of-core model's graph (None: weights live in memory)."""
    return graph.meta.get(WEIGHT_STORE)


def use_weight_store(model: ir.Model, folder: Path | None = None) -> WeightStore:
    """Make the passes write ``model``'s new weights to a store in ``folder`` (out of core)."""
    store = WeightStore(folder)
    model.graph.meta[WEIGHT_STORE] = store
    return store


def values_read(node: ir.Node) -> list[ir.Value]:
    """The values ``node`` reads: its inputs and the outer values its subgraphs capture."""
    values = [v for v in node.inputs if v is not None]
    for attribute in node.attributes.values():
        for graph in _subgraphs(attribute):
            values.extend(_captured(graph))
    return values


def _subgraphs(attribute) -> list[ir.Graph]:
    if attribute.type == ir.AttributeType.GRAPH:
        return [attribute.value]
    if attribute.type == ir.AttributeType.GRAPHS:
        return list(attribute.value)
    return []


def _captured(graph: ir.Graph) -> list[ir.Value]:
    """Values read inside ``graph`` (and its subgraphs) that no node or input of it defines."""
    inner = set(graph.inputs) | set(graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(graph):
        inner.update(node.outputs)
    captured = []
    for node in ir.traversal.RecursiveGraphIterator(graph):
        captured.extend(v for v in node.inputs if v is not None and v not in inner)
    return captured
