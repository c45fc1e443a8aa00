"""ONNX frontend: a file, a ``ModelProto`` or an ``onnx_ir.Model`` becomes sparc's IR.

Cases:
1. A path: parsed with its external data (resolved relative to the model's folder).
2. A ``ModelProto``: deserialized into fresh IR objects.
3. An ``onnx_ir.Model``: copied, so the caller's model is never mutated by passes.
Then, for every source: weights held in ``Constant`` nodes and weights listed as graph
inputs become initializers; opsets older than 13 are upgraded; the opset must be at most
23; every op must be known (standard ONNX, ORT's ``com.microsoft``, sparc's ``ai.sparc`` or
a function in the model). Every problem is collected and raised together.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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

def load_onnx(source, *, name: str | None = None) -> ir.Model:
    """Return a normalized, independent IR copy of an ONNX model from any accepted source."""
    if isinstance(source, ir.Model):
        label = name or "<onnx_ir.Model>"
        model = _copy_ir(source, label)
    elif isinstance(source, onnx.ModelProto):
        label = name or "<ModelProto>"
        model = _deserialize(source, label)
    elif isinstance(source, (str, os.PathLike)):
        label = str(source)
        model = _read_file(Path(source))
    else:
        raise UnsupportedModelError(
            f"cannot capture an object of type {type(source).__name__}: expected an "
            "nn.Module, an ONNX file path, an onnx.ModelProto or an onnx_ir.Model"
        )
    return normalize(model, label)


def _read_file(path: Path) -> ir.Model:
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
    try:
        model = ir.serde.deserialize_model(proto)
        ir.external_data.set_base_dir(model.graph, path.parent)
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: cannot be read as ONNX ({exc})") from None
    _load_external_data(model, path)
    return model


def _load_external_data(model: ir.Model, path: Path) -> None:
    """Bring external tensors into memory so the IR no longer depends on the user's files."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            _check_external(tensor, value.name, path)
            try:
                value.const_value = ir.Tensor(tensor.numpy(), name=value.name)
            except Exception as exc:
                raise UnsupportedModelError(
                    f"{path}: external data of tensor {value.name!r} "
                    f"({tensor.location}) cannot be read ({exc})"
                ) from None


def _check_external(tensor: ir.ExternalTensor, name: str, path: Path) -> None:
    """Refuse, before reading anything, external data that lies outside the model's folder
    (absolute ``location``, ``..`` escapes, symlinks leading out; CVE-2024-27318 and
    CVE-2024-5187) or that holds fewer bytes than the tensor's declared shape and type need."""
    folder = path.parent.resolve()
    location = Path(tensor.location)
    where = f"{path}: external data of tensor {name!r} ({tensor.location})"
    if location.is_absolute() or not tensor.location:
        raise UnsupportedModelError(f"{where}: the location must be a relative path inside {folder}")
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        raise UnsupportedModelError(f"{where}: the location leads outside the model's folder {folder}")
    if not target.is_file():
        raise UnsupportedModelError(f"{where}: no such file")
    offset = tensor.offset or 0
    available = target.stat().st_size - offset
    declared = math.ceil(math.prod(tensor.shape.numpy()) * tensor.dtype.itemsize)
    length = tensor.length if tensor.length is not None else available
    if offset < 0 or length < declared or available < length:
        raise UnsupportedModelError(
            f"{where}: the tensor needs {declared:,} bytes at offset {offset:,}, the file holds "
            f"{max(available, 0):,} bytes from there (declared length {tensor.length})"
        )


def _deserialize(proto: onnx.ModelProto, label: str) -> ir.Model:
    _check_is_model(proto, label)
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
    problems = unsupported_ops(model)
    if problems:
        raise UnsupportedModelError(f"{label}: the model uses ops sparc cannot run", problems)
    failure = check_model(model)
    if failure:
        raise UnsupportedModelError(f"{label}: the ONNX checker rejects the model: {failure}")
    return model


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
