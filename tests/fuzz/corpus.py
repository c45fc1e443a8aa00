"""The fuzz corpus: broken and hostile variants of the seed models, made deterministically.

A case is a folder's worth of files (the model, sometimes external data files and symlinks)
built from one seed by one mutation kind. ``cases(count, seed)`` yields the same cases for
the same arguments, so a failure found anywhere is reproduced with ``--case``.

Mutation kinds:
- ``byte_flip``: 1 to 8 random bytes flipped, mostly outside tensor payloads.
- ``truncate``: the file cut at a protobuf field boundary of the model or its graph (every
  boundary in turn), or at a random byte.
- ``absurd_dim`` / ``negative_dim``: a huge (2³¹..2⁶²) or negative size in an initializer's
  dims, a graph input's shape, or a shape tensor feeding Reshape/Expand/ConstantOfShape.
- ``wrong_dtype``: an initializer, input or Cast target retyped (to another real type or to
  an undefined enum value).
- ``short_payload``: an initializer's raw bytes cut short of what its dims declare.
- ``dangling_name``: a node input or graph output renamed to a value nothing produces.
- ``cycle``: a node reads the output of a node after it.
- ``duplicate_name``: two nodes write the same value, or two initializers share a name.
- ``missing_opset``: the standard opset import removed, zeroed or set far in the future.
- ``bad_op``: an op renamed to an unknown one, given an unknown domain, or a required
  attribute removed.
- ``external_escape``: an initializer moved to external data whose location escapes the
  model's folder (``..``, absolute, a symlink out), is missing, or holds fewer bytes than
  declared.
- ``odd_values``: NaN, ±Inf, 0, 3e38 or a denormal in one weight or all of a tensor.
- ``hostile_names``: a value or node renamed to a path (``../../escape``), an empty,
  5,000-character, non-ASCII or NUL-holding name, or the name of the export's data file.
- ``strip_shapes``: value_info dropped, each input/output dim made symbolic or unknown.

The last three usually leave a loadable model, so the passes themselves get exercised.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator

import onnx

from tests.fuzz import seeds

HUGE = (2**31, 2**40, 2**62)
EXTERNAL_LOCATIONS = ("../secret.bin", "sub/../../secret.bin", "/etc/hostname", "link.bin")


@dataclasses.dataclass
class Case:
    """One fuzz input: files to place in the model's folder, and symlinks (name → target)."""

    id: str
    seed: str
    kind: str
    detail: str
    files: dict[str, bytes]
    symlinks: dict[str, str] = dataclasses.field(default_factory=dict)


class Skip(Exception):
    """The mutation does not apply to this seed (e.g. no Cast node); try another."""


def _graph_field_offsets(data: bytes, *, sections_only: bool = False) -> list[int]:
    """Byte offsets where a top-level field of the model, or a field of its graph, starts.

    With ``sections_only``, of the graph's fields only those starting a run of another kind
    (the first node, the first initializer, the first input, ...) and the graph's end."""
    offsets = []
    for field, start, payload_start, end in _fields(data, 0, len(data)):
        offsets.append(start)
        if field == 7:  # ModelProto.graph
            previous = None
            for graph_field, graph_start, _, _ in _fields(data, payload_start, end):
                if not sections_only or graph_field != previous:
                    offsets.append(graph_start)
                previous = graph_field
            offsets.append(end)
    return sorted(set(offsets) - {0, len(data)})


def _payload_ranges(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every initializer's raw_data bytes."""
    ranges = []
    for field, _, payload_start, end in _fields(data, 0, len(data)):
        if field != 7:
            continue
        for graph_field, _, tensor_start, tensor_end in _fields(data, payload_start, end):
            if graph_field == 5:  # GraphProto.initializer
                ranges += [
                    (p, e) for f, _, p, e in _fields(data, tensor_start, tensor_end) if f == 9
                ]
    return ranges


def _fields(data: bytes, start: int, end: int):
    """(field number, field start, payload start, field end) of each field in data[start:end]."""
    position = start
    while position < end:
        field_start = position
        tag, position = _varint(data, position)
        wire = tag & 7
        if wire == 0:
            _, position = _varint(data, position)
            payload = position
        elif wire == 1:
            payload, position = position, position + 8
        elif wire == 2:
            length, payload = _varint(data, position)
            position = payload + length
        elif wire == 5:
            payload, position = position, position + 4
        else:
            raise ValueError(f"wire type {wire} at {field_start}")
        yield tag >> 3, field_start, payload, position


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7


# -- mutations: each takes (seed bytes, parsed proto, rng) and returns (detail, files, links) --


def byte_flip(data, proto, rng):
    payload = _payload_ranges(data)
    buffer = bytearray(data)
    flips = []
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data))
        while rng.random() < 0.9 and any(s <= position < e for s, e in payload):
            position = rng.randrange(len(data))
        buffer[position] ^= 1 << rng.randrange(8)
        flips.append(position)
    return f"bytes {sorted(flips)}", {"model.onnx": bytes(buffer)}, {}


def truncate(data, proto, rng, boundary: int | None = None):
    if boundary is None:
        boundary = rng.randrange(len(data))
        return f"random cut at {boundary}", {"model.onnx": data[:boundary]}, {}
    return f"cut at field boundary {boundary}", {"model.onnx": data[:boundary]}, {}


def absurd_dim(data, proto, rng):
    return _bad_dims(proto, rng, rng.choice(HUGE), "huge")


def negative_dim(data, proto, rng):
    return _bad_dims(proto, rng, -rng.choice((1, 2, 7, 2**31)), "negative")


def _bad_dims(proto, rng, size: int, label: str):
    graph = proto.graph
    where = rng.choice(("initializer", "input", "shape tensor"))
    if where == "initializer":
        tensor = rng.choice([t for t in graph.initializer if t.dims])
        tensor.dims[rng.randrange(len(tensor.dims))] = size
        detail = f"{label} dim {size} in initializer {tensor.name}"
    elif where == "input":
        value = rng.choice(list(graph.input))
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise Skip("input without shape")
        dims[rng.randrange(len(dims))].dim_value = size
        detail = f"{label} dim {size} in input {value.name}"
    else:
        detail = _bad_shape_tensor(graph, rng, size, label)
    return detail, {"model.onnx": proto.SerializeToString()}, {}


def _bad_shape_tensor(graph, rng, size: int, label: str) -> str:
    """Replace a constant shape fed to Reshape/Expand/ConstantOfShape by one holding ``size``."""
    import numpy as np
    from onnx import numpy_helper

    shape_inputs = {
        node.input[1] if node.op_type != "ConstantOfShape" else node.input[0]
        for node in graph.node
        if node.op_type in ("Reshape", "Expand", "ConstantOfShape") and node.input
    }
    constants = [t for t in graph.initializer if t.name in shape_inputs and t.data_type == onnx.TensorProto.INT64]
    if not constants:
        # No constant shape: insert ConstantOfShape of the bad size feeding an Add.
        target = rng.choice([n for n in graph.node if n.output])
        bomb = onnx.helper.make_node(
            "ConstantOfShape",
            [target.output[0] + "__shape"],
            [target.output[0] + "__bomb"],
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        )
        graph.initializer.append(numpy_helper.from_array(np.array([size, size], np.int64), target.output[0] + "__shape"))
        graph.node.append(bomb)
        graph.output.append(onnx.helper.make_tensor_value_info(bomb.output[0], onnx.TensorProto.FLOAT, None))
        return f"{label} ConstantOfShape [{size}, {size}] added after {target.name}"
    tensor = rng.choice(constants)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[rng.randrange(max(values.size, 1))] = size
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return f"{label} size {size} in shape tensor {tensor.name}"


def wrong_dtype(data, proto, rng):
    graph = proto.graph
    choices = [int(t) for t in onnx.TensorProto.DataType.values() if t not in (0,)] + [99, 1000]
    new = rng.choice(choices)
    where = rng.choice(("initializer", "input", "cast"))
    if where == "initializer":
        tensor = rng.choice(list(graph.initializer))
        old, tensor.data_type = tensor.data_type, new
        detail = f"initializer {tensor.name} dtype {old} -> {new}"
    elif where == "input":
        value = rng.choice(list(graph.input))
        old, value.type.tensor_type.elem_type = value.type.tensor_type.elem_type, new
        detail = f"input {value.name} dtype {old} -> {new}"
    else:
        casts = [n for n in graph.node if n.op_type == "Cast"]
        if not casts:
            raise Skip("no Cast")
        node = rng.choice(casts)
        for attribute in node.attribute:
            if attribute.name == "to":
                attribute.i = new
        detail = f"Cast {node.name} to {new}"
    return detail, {"model.onnx": proto.SerializeToString()}, {}


def short_payload(data, proto, rng):
    tensors = [t for t in proto.graph.initializer if len(t.raw_data) > 4]
    tensor = rng.choice(tensors)
    keep = rng.randrange(len(tensor.raw_data))
    tensor.raw_data = tensor.raw_data[:keep]
    return f"initializer {tensor.name} raw_data cut to {keep} bytes", {"model.onnx": proto.SerializeToString()}, {}


def dangling_name(data, proto, rng):
    graph = proto.graph
    if rng.random() < 0.7:
        node = rng.choice([n for n in graph.node if n.input])
        slot = rng.randrange(len(node.input))
        node.input[slot] = "nowhere_" + str(rng.randrange(1000))
        detail = f"node {node.name} input {slot} -> {node.input[slot]}"
    else:
        output = rng.choice(list(graph.output))
        output.name = "nowhere_out"
        detail = "graph output renamed to nowhere_out"
    return detail, {"model.onnx": proto.SerializeToString()}, {}


def cycle(data, proto, rng):
    nodes = list(proto.graph.node)
    first = rng.randrange(len(nodes) - 1)
    while not nodes[first].input:
        first = rng.randrange(len(nodes) - 1)
    later = nodes[rng.randrange(first + 1, len(nodes))]
    if not later.output:
        raise Skip("no output")
    nodes[first].input[0] = later.output[0]
    return f"node {nodes[first].name} reads {later.output[0]} (a later node's output)", {
        "model.onnx": proto.SerializeToString()
    }, {}


def duplicate_name(data, proto, rng):
    graph = proto.graph
    if rng.random() < 0.6:
        a, b = rng.sample(range(len(graph.node)), 2)
        graph.node[b].output[0] = graph.node[a].output[0]
        detail = f"nodes {graph.node[a].name} and {graph.node[b].name} both write {graph.node[a].output[0]}"
    else:
        a, b = rng.sample(range(len(graph.initializer)), 2)
        graph.initializer[b].name = graph.initializer[a].name
        detail = f"two initializers named {graph.initializer[a].name}"
    return detail, {"model.onnx": proto.SerializeToString()}, {}


def missing_opset(data, proto, rng):
    standard = [o for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    how = rng.choice(("removed", "zero", "future", "all removed"))
    if how == "removed":
        for opset in standard:
            proto.opset_import.remove(opset)
    elif how == "all removed":
        del proto.opset_import[:]
    else:
        for opset in standard:
            opset.version = 0 if how == "zero" else 99
    return f"standard opset import {how}", {"model.onnx": proto.SerializeToString()}, {}


def bad_op(data, proto, rng):
    node = rng.choice(list(proto.graph.node))
    how = rng.choice(("op", "domain", "attribute"))
    if how == "op":
        node.op_type = "NoSuchOp"
    elif how == "domain":
        node.domain = "com.nowhere"
    else:
        if not node.attribute:
            raise Skip("no attribute")
        del node.attribute[rng.randrange(len(node.attribute))]
    return f"node {node.name}: bad {how}", {"model.onnx": proto.SerializeToString()}, {}


def external_escape(data, proto, rng):
    tensors = [t for t in proto.graph.initializer if len(t.raw_data) >= 64]
    tensor = rng.choice(tensors)
    payload = tensor.raw_data
    location = rng.choice(EXTERNAL_LOCATIONS + ("weights.bin", "missing.bin"))
    files, links = {}, {}
    offset, length = 0, len(payload)
    if location == "link.bin":
        links["link.bin"] = "../secret.bin"
    elif location == "weights.bin":  # inside the folder, but lying about its size
        files["weights.bin"] = payload[: len(payload) // 2]
        if rng.random() < 0.5:
            offset = len(payload) * 4
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(length)}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    files["model.onnx"] = proto.SerializeToString()
    return f"initializer {tensor.name} at {location} (offset {offset})", files, links


def odd_values(data, proto, rng):
    import numpy as np
    from onnx import numpy_helper

    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims]
    tensor = rng.choice(floats)
    values = numpy_helper.to_array(tensor).copy()
    value = rng.choice((np.nan, np.inf, -np.inf, 0.0, 3e38, 1e-45))
    how = rng.choice(("all", "one"))
    if how == "all":
        values[...] = value
    else:
        values.flat[rng.randrange(values.size)] = value
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return f"{how} of {tensor.name} set to {value}", {"model.onnx": proto.SerializeToString()}, {}


HOSTILE_NAMES = ("../../escape", "/etc/passwd", "a/b\\c", "ünïcødé ✓", "x" * 5000, "", "model.onnx.data", "\x00nul")


def hostile_names(data, proto, rng):
    """Rename a value everywhere (or a node) to a path-like, empty, huge or odd name."""
    graph = proto.graph
    name = rng.choice(HOSTILE_NAMES)
    if rng.random() < 0.3:
        node = rng.choice(list(graph.node))
        node.name = name
        return f"node renamed {name[:20]!r}", {"model.onnx": proto.SerializeToString()}, {}
    candidates = [t.name for t in graph.initializer] + [n.output[0] for n in graph.node if n.output]
    old = rng.choice(candidates)
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = name
    for node in graph.node:
        node.input[:] = [name if x == old else x for x in node.input]
        node.output[:] = [name if x == old else x for x in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = name
    return f"value {old} renamed {name[:20]!r}", {"model.onnx": proto.SerializeToString()}, {}


def strip_shapes(data, proto, rng):
    """Drop value_info, and make each input/output dim symbolic or unknown."""
    graph = proto.graph
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if rng.random() < 0.5:
                dim.dim_param = f"d{index}"
            else:
                dim.ClearField("dim_value")
                dim.ClearField("dim_param")
    return "shapes stripped", {"model.onnx": proto.SerializeToString()}, {}


MUTATIONS: dict[str, Callable] = {
    "byte_flip": byte_flip,
    "truncate": truncate,
    "absurd_dim": absurd_dim,
    "negative_dim": negative_dim,
    "wrong_dtype": wrong_dtype,
    "short_payload": short_payload,
    "dangling_name": dangling_name,
    "cycle": cycle,
    "duplicate_name": duplicate_name,
    "missing_opset": missing_opset,
    "bad_op": bad_op,
    "external_escape": external_escape,
    "odd_values": odd_values,
    "hostile_names": hostile_names,
    "strip_shapes": strip_shapes,
}


def cases(count: int, seed: int = 0) -> Iterator[Case]:
    """``count`` cases: kinds and seed models in rotation; truncations walk the field
    boundaries of each seed in order before cutting at random bytes."""
    names = seeds.seed_names()
    sources = {name: seeds.seed_files(name)[0].read_bytes() for name in names}
    boundaries = {name: _graph_field_offsets(data) for name, data in sources.items()}
    kinds = list(MUTATIONS)
    made = 0
    index = 0
    while made < count:
        kind = kinds[index % len(kinds)]
        name = names[(index // len(kinds)) % len(names)]
        rng = random.Random(f"{seed}:{index}")
        index += 1
        case = _make(kind, name, sources[name], boundaries[name], rng, index - 1, seed)
        if case is not None:
            made += 1
            yield case


def _make(kind, name, data, boundaries, rng, index, seed) -> Case | None:
    proto = onnx.load_from_string(data)
    options = {}
    if kind == "truncate":
        walk = index // (len(MUTATIONS) * len(seeds.seed_names()))
        if walk < len(boundaries):
            options["boundary"] = boundaries[walk]
    try:
        detail, files, links = MUTATIONS[kind](data, proto, rng, **options)
    except Skip:
        return None
    return Case(f"{seed}-{index}", name, kind, detail, files, links)


def truncations(seed_name: str, *, sections_only: bool = False) -> Iterator[Case]:
    """The seed cut at every field boundary of the model and of its graph (or only where a
    section starts or ends: see :func:`_graph_field_offsets`), in order."""
    data = seeds.seed_files(seed_name)[0].read_bytes()
    for boundary in _graph_field_offsets(data, sections_only=sections_only):
        yield Case(f"cut-{seed_name}-{boundary}", seed_name, "truncate",
                   f"cut at field boundary {boundary}", {"model.onnx": data[:boundary]})


def case_by_id(case_id: str) -> Case:
    """Rebuild the case ``SEED-INDEX`` or ``cut-SEEDNAME-OFFSET`` (as printed by the harness)."""
    if case_id.startswith("cut-"):
        _, name, offset = case_id.split("-")
        return next(c for c in truncations(name) if c.id == case_id)
    seed, index = (int(part) for part in case_id.split("-"))
    names = seeds.seed_names()
    kinds = list(MUTATIONS)
    kind = kinds[index % len(kinds)]
    name = names[(index // len(kinds)) % len(names)]
    data = seeds.seed_files(name)[0].read_bytes()
    case = _make(kind, name, data, _graph_field_offsets(data), random.Random(f"{seed}:{index}"), index, seed)
    if case is None:
        raise ValueError(f"case {case_id} does not exist (its mutation does not apply)")
    return case
