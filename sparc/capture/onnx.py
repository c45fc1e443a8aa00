"""ONNX frontend: a file, a ``ModelProto`` or an ``onnx_ir.Model`` becomes sparc's IR.

Cases:
1. A path: parsed with its external data (resolved relative to the model's folder).
2. A ``ModelProto``: deserialized into fresh IR objects.
3. An ``onnx_ir.Model``: copied, so the caller's model is never mutated by passes.
Then, for every source: weights held in ``Constant`` nodes and weights listed as graph
inputs become initializers; opsets older than 13 are upgraded; the opset must be at most
23; every op must be known (standard ONNX, ORT's ``com.microsoft``, sparc's ``ai.sparc`` or
a function in the model). Every problem is collected and raised together. A graph input or
output size of -1 (paddle2onnx and some TensorFlow exporters write it for "unknown") becomes a
named dynamic dimension; any other negative size is refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from sparc.errors import UnsupportedModelError
from sparc.ir_utils import check_model, copy_model

MIN_OPSET = 13
MAX_OPSET = 23
UPGRADE_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
RUNTIME_DOMAINS = ("com.microsoft", "ai.sparc")
COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
DTYPE_BITS = {  # bits per element of every numeric ONNX data type
    code: ir.DataType(code).bitwidth
    for code in onnx.TensorProto.DataType.values()
    if code not in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING)
}

def load_onnx(source, *, name: str | None = None, mapped: bool = False) -> ir.Model:
    """Return a normalized, independent IR copy of an ONNX model from any accepted source.

    ``mapped`` (a path only): initializers kept in external data stay memory-mapped from the
    user's files (read, never written) instead of being loaded: for weights larger than memory.
    """
    if isinstance(source, ir.Model):
        label = name or "<onnx_ir.Model>"
        model = _copy_ir(source, label)
    elif isinstance(source, onnx.ModelProto):
        label = name or "<ModelProto>"
        model = _deserialize(source, label)
    elif isinstance(source, (str, os.PathLike)):
        label = str(source)
        model = _read_file(Path(source), mapped=mapped)
    else:
        raise UnsupportedModelError(
            f"cannot capture an object of type {type(source).__name__}: expected an "
            "nn.Module, an ONNX file path, an onnx.ModelProto or an onnx_ir.Model"
        )
    return normalize(model, label)


def _read_file(path: Path, *, mapped: bool = False) -> ir.Model:
    if not path.exists():
        raise UnsupportedModelError(f"{path}: no such file")
    if not path.is_file():
        raise UnsupportedModelError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UnsupportedModelError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})"
        ) from None
    _check_is_model(proto, str(path))
    check_tensors(proto, str(path), path.parent)
    try:
        model = ir.serde.deserialize_model(proto)
        ir.external_data.set_base_dir(model.graph, path.parent)
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: cannot be read as ONNX ({exc})") from None
    _load_external_data(model, path, initializers=not mapped)
    return model


def external_bytes(path: Path) -> int:
    """Bytes of initializer data ``path`` keeps in external files (0 for an unreadable file:
    loading it reports why)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return 0
    return sum(int(entry.value) for tensor in proto.graph.initializer for entry in tensor.external_data
               if entry.key == "length")


def check_tensors(proto: onnx.ModelProto, label: str, folder: Path | None) -> None:
    """Check every tensor (initializers, attributes, subgraphs) before any is read: a defined
    data type, non-negative dims, and exactly the bytes its dims declare, inline or in an
    external file inside ``folder`` (None: external data is refused)."""
    for where, tensor in _proto_tensors(proto.graph):
        where = f"{label}: {where}"
        _check_dtype_and_dims(tensor, where)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            if folder is None:
                raise UnsupportedModelError(
                    f"{where} keeps its data in an external file; load the model from its path"
                )
            _check_external(tensor, where, folder)
        else:
            _check_inline(tensor, where)


def _proto_tensors(graph: onnx.GraphProto, prefix: str = ""):
    """(description, TensorProto) of every tensor in ``graph`` and its subgraphs."""
    for tensor in graph.initializer:
        yield f"{prefix}initializer {tensor.name!r}", tensor
    for sparse in graph.sparse_initializer:
        yield f"{prefix}sparse initializer {sparse.values.name!r}", sparse.values
        yield f"{prefix}sparse initializer {sparse.values.name!r} indices", sparse.indices
    for node in graph.node:
        owner = f"{prefix}node {node.name or node.op_type!r}"
        for attribute in node.attribute:
            here = f"{owner} attribute {attribute.name!r}"
            if attribute.HasField("t"):
                yield f"{here} tensor", attribute.t
            if attribute.HasField("sparse_tensor"):
                yield f"{here} sparse tensor", attribute.sparse_tensor.values
            for index, tensor in enumerate(attribute.tensors):
                yield f"{here} tensor {index}", tensor
            if attribute.HasField("g"):
                yield from _proto_tensors(attribute.g, f"{here} subgraph: ")
            for subgraph in attribute.graphs:
                yield from _proto_tensors(subgraph, f"{here} subgraph: ")


def _check_dtype_and_dims(tensor: onnx.TensorProto, where: str) -> None:
    if tensor.data_type not in DTYPE_BITS and tensor.data_type != onnx.TensorProto.STRING:
        name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in onnx.TensorProto.DataType.values() else tensor.data_type
        raise UnsupportedModelError(f"{where} has unsupported data type {name}")
    negative = [d for d in tensor.dims if d < 0]
    if negative:
        raise UnsupportedModelError(f"{where} has negative dims {list(tensor.dims)}")


def _declared_bytes(tensor: onnx.TensorProto) -> int:
    return math.ceil(math.prod(tensor.dims) * DTYPE_BITS[tensor.data_type] / 8)


def _declared_elements(tensor: onnx.TensorProto) -> int:
    """Entries the typed field must hold: one per element, two per complex element, and
    sub-byte types packed into one entry per byte."""
    count = math.prod(tensor.dims)
    bits = DTYPE_BITS[tensor.data_type]
    if tensor.data_type in COMPLEX:
        return 2 * count
    return math.ceil(count * bits / 8) if bits < 8 else count


def _check_inline(tensor: onnx.TensorProto, where: str) -> None:
    """raw_data must hold exactly the declared bytes; typed fields exactly the declared count."""
    if tensor.data_type == onnx.TensorProto.STRING:
        present, declared = len(tensor.string_data), math.prod(tensor.dims)
    elif tensor.HasField("raw_data"):
        present, declared = len(tensor.raw_data), _declared_bytes(tensor)
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        present = len(getattr(tensor, field))
        declared = _declared_elements(tensor)
    if present != declared:
        raise UnsupportedModelError(
            f"{where}: dims {list(tensor.dims)} declare {declared:,} "
            f"{'bytes' if tensor.HasField('raw_data') else 'elements'}, the file holds {present:,}"
        )


def _check_external(tensor: onnx.TensorProto, where: str, folder: Path) -> None:
    """Refuse external data that lies outside the model's folder (absolute ``location``,
    ``..`` escapes, symlinks leading out; CVE-2024-27318 and CVE-2024-5187) or that holds
    fewer bytes than the tensor's declared shape and type need."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    text = entries.get("location", "")
    folder = folder.resolve()
    where = f"{where} (external data {text})"
    if not text or Path(text).is_absolute():
        raise UnsupportedModelError(f"{where}: the location must be a relative path inside {folder}")
    target = (folder / text).resolve()
    if not target.is_relative_to(folder):
        raise UnsupportedModelError(f"{where}: the location leads outside the model's folder {folder}")
    if not target.is_file():
        raise UnsupportedModelError(f"{where}: no such file")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise UnsupportedModelError(f"{where}: offset and length must be integers") from None
    available = target.stat().st_size - offset
    declared = _declared_bytes(tensor)
    usable = length if length is not None else available
    if offset < 0 or usable < declared or available < usable:
        raise UnsupportedModelError(
            f"{where}: the tensor needs {declared:,} bytes at offset {offset:,}, the file holds "
            f"{max(available, 0):,} bytes from there (declared length {length})"
        )


def _load_external_data(model: ir.Model, path: Path, *, initializers: bool = True) -> None:
    """Bring external tensors (initializers unless not ``initializers``, and attributes,
    subgraphs included) into memory, so the IR no longer depends on the user's files."""
    for graph in _graphs(model.graph) if initializers else ():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = _in_memory(value.const_value, value.name, path)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for name, attribute in list(node.attributes.items()):
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.TENSOR and isinstance(attribute.value, ir.ExternalTensor):
                node.attributes[name] = ir.AttrTensor(name, _in_memory(attribute.value, name, path))
            elif attribute.type == ir.AttributeType.TENSORS and any(
                isinstance(t, ir.ExternalTensor) for t in attribute.value
            ):
                tensors = [_in_memory(t, name, path) for t in attribute.value]
                node.attributes[name] = ir.AttrTensors(name, tensors)


def _graphs(graph: ir.Graph):
    """``graph`` and every subgraph under it."""
    yield graph
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attribute in node.attributes.values():
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.GRAPH:
                yield attribute.value
            elif attribute.type == ir.AttributeType.GRAPHS:
                yield from attribute.value


def _in_memory(tensor, name: str, path: Path) -> ir.Tensor:
    if not isinstance(tensor, ir.ExternalTensor):
        return tensor
    try:
        return ir.Tensor(np.array(tensor.numpy(), copy=True), name=tensor.name)  # not a map of the file
    except Exception as exc:
        raise UnsupportedModelError(
            f"{path}: external data of tensor {name!r} ({tensor.location}) cannot be read ({exc})"
        ) from None


def _deserialize(proto: onnx.ModelProto, label: str) -> ir.Model:
    _check_is_model(proto, label)
    check_tensors(proto, label, None)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise UnsupportedModelError(f"{label}: cannot be read as ONNX ({exc})") from None


def _copy_ir(model: ir.Model, label: str) -> ir.Model:
    try:
        return copy_model(model)
    except Exception as exc:
        raise UnsupportedModelError(f"{label}: cannot copy the IR ({exc})") from None


def _check_is_model(proto: onnx.ModelProto, label: str) -> None:
    """Protobuf parses many byte strings without error; an ONNX model has a graph and opsets."""
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise UnsupportedModelError(f"{label}: not an ONNX model (no graph)")
    if not proto.opset_import:
        raise UnsupportedModelError(f"{label}: not a valid ONNX model (no opset_import)")


def normalize(model: ir.Model, label: str) -> ir.Model:
    """Lift weights to initializers, upgrade old opsets, and refuse unknown ops (all listed)."""
    model = _upgrade_opset(model, label)
    common_passes.RemoveInitializersFromInputsPass()(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
    _check_io_shapes(model, label)
    problems = unsupported_ops(model)
    if problems:
        raise UnsupportedModelError(f"{label}: the model uses ops sparc cannot run", problems)
    failure = check_model(model)
    if failure:
        raise UnsupportedModelError(f"{label}: the ONNX checker rejects the model: {failure}")
    return model


def _check_io_shapes(model: ir.Model, label: str) -> None:
    """Graph input and output sizes of -1 become dynamic; other negative sizes are refused."""
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.shape is None:
                continue
            if any(isinstance(d, int) and d < -1 for d in value.shape):
                raise UnsupportedModelError(
                    f"{label}: graph {kind} {value.name!r} declares a negative size {list(value.shape)}"
                )
            if any(isinstance(d, int) and d == -1 for d in value.shape):
                value.shape = ir.Shape([f"{value.name}_dim{axis}" if isinstance(d, int) and d == -1 else d
                                        for axis, d in enumerate(value.shape)])


def default_opset(model: ir.Model) -> int:
    """The model's version of the standard ONNX domain."""
    for domain in STANDARD_DOMAINS:
        if domain in model.opset_imports:
            return model.opset_imports[domain]
    return 0


def _upgrade_opset(model: ir.Model, label: str) -> ir.Model:
    version = default_opset(model)
    if version == 0:
        raise UnsupportedModelError(f"{label}: the model imports no standard ONNX opset")
    if version > MAX_OPSET:
        raise UnsupportedModelError(
            f"{label}: opset {version} is newer than the newest supported ({MAX_OPSET})"
        )
    if version >= MIN_OPSET:
        return model
    try:
        proto = ir.serde.serialize_model(model)
        upgraded = onnx.version_converter.convert_version(proto, UPGRADE_OPSET)
        return ir.serde.deserialize_model(upgraded)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{label}: opset {version} is older than {MIN_OPSET} and could not be upgraded "
            f"to {UPGRADE_OPSET} ({exc})"
        ) from None


def unsupported_ops(model: ir.Model) -> list[str]:
    """Describe every op no runtime sparc targets can run: '<domain>::<op> (nodes: a, b)'."""
    functions = {(f.domain, f.name) for f in model.functions.values()}
    offenders: dict[str, list[str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not _is_known_op(node, model.opset_imports, functions):
            key = f"{node.domain or 'ai.onnx'}::{node.op_type}"
            offenders.setdefault(key, []).append(node.name or "<unnamed>")
    return [
        f"{op} (nodes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        for op, names in sorted(offenders.items())
    ]


def _is_known_op(node: ir.Node, opsets: dict[str, int], functions: set) -> bool:
    if (node.domain, node.op_type) in functions:
        return True
    if node.domain in RUNTIME_DOMAINS:
        return True
    if node.domain not in STANDARD_DOMAINS:
        return False
    version = opsets.get(node.domain, opsets.get("", opsets.get("ai.onnx", 0)))
    try:
        onnx.defs.get_schema(node.op_type, version, "")
    except onnx.defs.SchemaError:
        return False
    return True
