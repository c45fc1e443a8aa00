"""Running onnx_ir graphs with torch: the differentiable executor recovery passes train with.

:class:`TorchGraph` evaluates the nodes of an IR graph that some target values need, given
values already known (the graph inputs, or a block's input hidden state), with torch
operators, so gradients flow into the weight tensors it is given. Ops of the default ONNX
domain listed in ``OPS`` are supported (float math, shapes, indexing, normalization,
convolution and pooling, with the semantics of opset 13 and later; Softmax before 13 too);
any other op raises :class:`UnsupportedModelError` naming the node. :class:`TorchRunner` runs
a whole model on feed dicts, as ``OrtRunner`` does. CPU by default; a CUDA device when torch
sees one. torch is an optional dependency: it is imported when a graph is first built.

Maintained ONNX→PyTorch converters were tried first: onnx2torch 1.5.15 has no converter for
opset-19 ``Shape`` and onnx2pytorch 0.6 needs torchvision; neither keeps the link from a torch
parameter back to the IR initializer that a recovery pass must write to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparc.errors import SparcError, UnsupportedModelError
from sparc.runtime import Executable

OPS: dict[str, Callable] = {}


def torch_module():
    """torch, or a SparcError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise SparcError("recovery passes run the graph in torch: pip install 'sparc[torch]'") from None
    return torch


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    return "cuda" if torch_module().cuda.is_available() else "cpu"


def op(*names: str):
    """Register the decorated ``fn(node, args) -> tensor | tuple`` for the ONNX ops ``names``."""

    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn

    return register


class TorchGraph:
    """Evaluates parts of ``graph`` in torch (module docstring).

    ``parameters`` maps initializer values to tensors used in their place (the weights being
    trained); other initializers become constant tensors on ``device`` once, when first read.
    """

    def __init__(self, graph: ir.Graph, *, parameters: Mapping[ir.Value, object] | None = None, device=None):
        self.torch = torch_module()
        self.graph = graph
        self.device = device or "cpu"
        self.parameters = dict(parameters or {})
        self._constants: dict[ir.Value, object] = {}
        self._order = {node: i for i, node in enumerate(graph)}
        self._plans: dict[tuple, list[ir.Node]] = {}

    def evaluate(self, targets: Sequence[ir.Value], known: Mapping[ir.Value, object]) -> list:
        """The tensors of ``targets`` computed from ``known`` values (tensors or arrays)."""
        env = {value: self.tensor(array) for value, array in known.items()}
        plan = self.plan(targets, env.keys())
        last_read = last_reads(plan, targets)
        for index, node in enumerate(plan):
            self.step(node, env)
            for value in last_read.get(index, ()):
                env.pop(value, None)
        return [self._read(value, env) for value in targets]

    def step(self, node: ir.Node, env: dict) -> None:
        """Run ``node`` on the values in ``env`` (and the graph's constants); store its outputs there."""
        args = [None if v is None else self._read(v, env) for v in node.inputs]
        for value, result in zip(node.outputs, _run_node(node, args)):
            env[value] = result

    def forget(self, value: ir.Value) -> None:
        """Drop the cached tensor of an initializer whose data was replaced."""
        self._constants.pop(value, None)

    def plan(self, targets: Sequence[ir.Value], known: Iterable[ir.Value]) -> list[ir.Node]:
        """The nodes ``targets`` need beyond ``known``, in graph order."""
        known = set(known)
        key = (tuple(map(id, targets)), frozenset(map(id, known)))
        if key not in self._plans:
            self._plans[key] = self._needed(targets, known)
        return self._plans[key]

    def _needed(self, targets, known) -> list[ir.Node]:
        needed: set[ir.Node] = set()
        stack = [v for v in targets if v not in known]
        while stack:
            value = stack.pop()
            node = value.producer()
            if node is None:
                if value.const_value is None and value not in self.parameters:
                    raise UnsupportedModelError(f"value {value.name!r} is needed but neither given nor computed")
                continue
            if node in needed:
                continue
            needed.add(node)
            stack.extend(v for v in node.inputs if v is not None and v not in known)
        return sorted(needed, key=self._order.__getitem__)

    def _read(self, value: ir.Value, env):
        if value in env:
            return env[value]
        if value in self.parameters:
            return self.parameters[value]
        if value not in self._constants:
            self._constants[value] = self.tensor(value.const_value.numpy())
        return self._constants[value]

    def tensor(self, array):
        """``array`` as a tensor on this graph's device (tensors pass through)."""
        if isinstance(array, self.torch.Tensor):
            return array.to(self.device)
        return self.torch.from_numpy(np.array(array, copy=True)).to(self.device)


class TorchRunner(Executable):
    """A whole IR model run in torch on feed dicts (for checks against ONNX Runtime)."""

    def __init__(self, model: ir.Model, *, device=None):
        self.model = model
        self.graph = TorchGraph(model.graph, device=device)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {v: feeds[v.name] for v in self.model.graph.inputs if v.name in feeds}
        with self.graph.torch.no_grad():
            outputs = self.graph.evaluate(list(self.model.graph.outputs), inputs)
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, outputs)}


def last_reads(plan: list[ir.Node], targets) -> dict[int, list[ir.Value]]:
    """For each step, the values no later step reads (freed after it); targets are kept."""
    last: dict[ir.Value, int] = {}
    for step, node in enumerate(plan):
        for value in node.inputs:
            if value is not None:
                last[value] = step
    keep = set(targets)
    by_step: dict[int, list[ir.Value]] = {}
    for value, step in last.items():
        if value not in keep:
            by_step.setdefault(step, []).append(value)
    return by_step


def _run_node(node: ir.Node, args: list) -> tuple:
    fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fn is None:
        raise UnsupportedModelError(
            f"node {node.name!r}: op {node.domain or 'ai.onnx'}::{node.op_type} is not supported by "
            f"sparc's torch executor (supported: {', '.join(sorted(OPS))})"
        )
    try:
        result = fn(node, args)
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"node {node.name!r} ({node.op_type}) failed in torch: {exc}") from None
    return result if isinstance(result, tuple) else (result,)


# --------------------------------------------------------------------------- helpers


def _int(node, name, default):
    return node.attributes.get_int(name, default)


def _ints(node, name, default=None):
    value = node.attributes.get_ints(name, None)
    return default if value is None else list(value)


def _listed(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _dtype(onnx_type: int):
    torch = torch_module()
    data_type = ir.DataType(onnx_type)
    if data_type == ir.DataType.BFLOAT16:
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, data_type.numpy())).dtype


def _opset(node: ir.Node) -> int:
    graph = node.graph
    return graph.opset_imports.get("", 21) if graph is not None else 21


def _unsupported(node, why: str):
    raise UnsupportedModelError(f"node {node.name!r} ({node.op_type}): {why} is not supported by sparc's torch executor")


# --------------------------------------------------------------------------- elementwise


_UNARY = {
    "Neg": "neg", "Abs": "abs", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Exp": "exp", "Log": "log",
    "Tanh": "tanh", "Erf": "erf", "Sigmoid": "sigmoid", "Relu": "relu", "Cos": "cos", "Sin": "sin",
    "Floor": "floor", "Ceil": "ceil", "Sign": "sign", "IsNaN": "isnan", "Not": "logical_not",
    "Round": "round", "Identity": "clone",
}
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "And": "logical_and", "Or": "logical_or",
    "Xor": "logical_xor", "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
    "GreaterOrEqual": "ge", "MatMul": "matmul",
}


@op(*_UNARY)
def _unary(node, args):
    return getattr(torch_module(), _UNARY[node.op_type])(args[0])


@op(*_BINARY)
def _binary(node, args):
    return getattr(torch_module(), _BINARY[node.op_type])(args[0], args[1])


@op("Div")
def _div(node, args):
    a, b = args
    if a.dtype.is_floating_point:
        return a / b
    return torch_module().div(a, b, rounding_mode="trunc")


@op("Mod")
def _mod(node, args):
    torch = torch_module()
    return (torch.fmod if _int(node, "fmod", 0) else torch.remainder)(args[0], args[1])


@op("Max", "Min")
def _extremum(node, args):
    torch = torch_module()
    combine = torch.maximum if node.op_type == "Max" else torch.minimum
    result = args[0]
    for other in args[1:]:
        result = combine(result, other)
    return result


@op("Where")
def _where(node, args):
    return torch_module().where(args[0], args[1], args[2])


@op("Cast")
def _cast(node, args):
    return args[0].to(_dtype(_int(node, "to", 1)))


@op("CastLike")
def _cast_like(node, args):
    return args[0].to(args[1].dtype)


@op("Clip")
def _clip(node, args):
    x = args[0]
    low = args[1] if len(args) > 1 else None
    high = args[2] if len(args) > 2 else None
    if _opset(node) < 11:
        low, high = node.attributes.get_float("min", None), node.attributes.get_float("max", None)
    return torch_module().clamp(x, min=low, max=high)


@op("Gelu")
def _gelu(node, args):
    approximate = node.attributes.get_string("approximate", "none")
    return torch_module().nn.functional.gelu(args[0], approximate=approximate)


@op("PRelu")
def _prelu(node, args):
    x, slope = args
    return torch_module().where(x < 0, x * slope, x)


@op("LeakyRelu")
def _leaky_relu(node, args):
    return torch_module().nn.functional.leaky_relu(args[0], node.attributes.get_float("alpha", 0.01))


@op("HardSigmoid")
def _hard_sigmoid(node, args):
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    return torch_module().clamp(alpha * args[0] + beta, 0.0, 1.0)


@op("HardSwish")
def _hard_swish(node, args):
    return torch_module().nn.functional.hardswish(args[0])


@op("Softplus")
def _softplus(node, args):
    return torch_module().nn.functional.softplus(args[0])


@op("Elu")
def _elu(node, args):
    return torch_module().nn.functional.elu(args[0], node.attributes.get_float("alpha", 1.0))


@op("Softmax", "LogSoftmax")
def _softmax(node, args):
    """opset ≥ 13 along ``axis`` (default -1); before 13 over the flattened dims from ``axis`` (default 1)."""
    torch = torch_module()
    x = args[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if _opset(node) >= 13:
        return fn(x, _int(node, "axis", -1))
    axis = _axis(_int(node, "axis", 1), x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, -1).reshape(x.shape)


# --------------------------------------------------------------------------- shapes and indexing


@op("Shape")
def _shape(node, args):
    shape = list(args[0].shape)
    start, end = _int(node, "start", 0), node.attributes.get_int("end", None)
    return torch_module().tensor(shape[start:end], dtype=torch_module().int64, device=args[0].device)


@op("Size")
def _size(node, args):
    return torch_module().tensor(args[0].numel(), dtype=torch_module().int64, device=args[0].device)


@op("Reshape")
def _reshape(node, args):
    x, shape = args[0], _listed(args[1])
    if not _int(node, "allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(node, args):
    x = args[0]
    axis = _axis(_int(node, "axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def _transpose(node, args):
    x = args[0]
    perm = _ints(node, "perm", list(reversed(range(x.dim()))))
    return x.permute(perm)


def _axes_of(node, args, index: int) -> list[int] | None:
    """Axes from input ``index`` (opset 13+/18+) or from the ``axes`` attribute."""
    if len(args) > index and args[index] is not None:
        return _listed(args[index])
    return _ints(node, "axes")


@op("Squeeze")
def _squeeze(node, args):
    x, axes = args[0], _axes_of(node, args, 1)
    if axes is None:
        return x.squeeze()
    axes = sorted((_axis(a, x.dim()) for a in axes), reverse=True)
    for axis in axes:
        x = x.squeeze(axis)
    return x


@op("Unsqueeze")
def _unsqueeze(node, args):
    x, axes = args[0], _axes_of(node, args, 1)
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@op("Concat")
def _concat(node, args):
    return torch_module().cat([a for a in args if a is not None], dim=_int(node, "axis", 0))


@op("Split")
def _split(node, args):
    x, axis = args[0], _int(node, "axis", 0)
    sizes = _listed(args[1]) if len(args) > 1 and args[1] is not None else _ints(node, "split")
    if sizes is None:
        parts = len(node.outputs)
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return tuple(torch_module().split(x, sizes, dim=axis))


@op("Slice")
def _slice(node, args):
    """ONNX Slice: starts/ends clamped per axis; negative steps through an index select."""
    torch = torch_module()
    x = args[0]
    starts, ends = _listed(args[1]), _listed(args[2])
    axes = _listed(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _listed(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        size = x.shape[axis]
        start, end = _clamp_range(start, end, step, size)
        if step > 0:
            index = [slice(None)] * axis + [slice(start, end, step)]
            x = x[tuple(index)]
        else:
            positions = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, positions)
    return x


def _clamp_range(start: int, end: int, step: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        return min(max(start, 0), size), min(max(end, 0), size)
    return min(max(start, 0), size - 1), min(max(end, -1), size - 1)


@op("Gather")
def _gather(node, args):
    x, indices = args
    axis = _axis(_int(node, "axis", 0), x.dim())
    indices = torch_module().where(indices < 0, indices + x.shape[axis], indices)
    picked = x.index_select(axis, indices.reshape(-1))
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))  # () for a scalar pick


@op("GatherElements")
def _gather_elements(node, args):
    x, indices = args
    axis = _axis(_int(node, "axis", 0), x.dim())
    indices = torch_module().where(indices < 0, indices + x.shape[axis], indices)
    return torch_module().gather(x, axis, indices)


@op("GatherND")
def _gather_nd(node, args):
    """out[b..., i...] = data[b..., idx[b..., i..., :]...] with ``batch_dims`` leading b dims."""
    torch = torch_module()
    data, indices = args
    batch = _int(node, "batch_dims", 0)
    batch_shape = list(data.shape[:batch])
    depth = indices.shape[-1]
    flat_data = data.reshape(math.prod(batch_shape), *data.shape[batch:])
    flat_indices = indices.reshape(math.prod(batch_shape), -1, depth)
    rows = torch.arange(flat_data.shape[0], device=data.device)[:, None].expand(flat_indices.shape[:2])
    picks = [flat_indices[..., k] for k in range(depth)]
    picks = [torch.where(p < 0, p + flat_data.shape[k + 1], p) for k, p in enumerate(picks)]
    gathered = flat_data[(rows, *picks)]
    return gathered.reshape(*batch_shape, *indices.shape[batch:-1], *data.shape[batch + depth :])


@op("Expand")
def _expand(node, args):
    x, shape = args[0], _listed(args[1])
    return x.expand(torch_module().broadcast_shapes(tuple(x.shape), tuple(shape)))


@op("Tile")
def _tile(node, args):
    return args[0].repeat(_listed(args[1]))


@op("Range")
def _range(node, args):
    start, limit, delta = (a.item() for a in args)
    return torch_module().arange(start, limit, delta, dtype=args[0].dtype, device=args[0].device)


@op("Constant")
def _constant(node, args):
    torch = torch_module()
    attribute = next(iter(node.attributes.values()))
    if attribute.type == ir.AttributeType.TENSOR:
        return torch.from_numpy(np.array(attribute.value.numpy(), copy=True))
    if attribute.name in ("value_float", "value_floats"):
        return torch.tensor(attribute.value, dtype=torch.float32)
    if attribute.name in ("value_int", "value_ints"):
        return torch.tensor(attribute.value, dtype=torch.int64)
    _unsupported(node, f"Constant attribute {attribute.name!r}")


@op("ConstantOfShape")
def _constant_of_shape(node, args):
    torch = torch_module()
    shape = _listed(args[0])
    value = node.attributes.get_tensor("value", None)
    fill = torch.from_numpy(np.array(value.numpy(), copy=True)).reshape(()) if value is not None else torch.tensor(0.0)
    return fill.to(args[0].device).expand(shape).clone()


@op("Trilu")
def _trilu(node, args):
    torch = torch_module()
    k = int(args[1].item()) if len(args) > 1 and args[1] is not None else 0
    return (torch.triu if _int(node, "upper", 1) else torch.tril)(args[0], k)


@op("Pad")
def _pad(node, args):
    """Constant, reflect or edge padding; ``pads`` is [begin per axis..., end per axis...]."""
    torch = torch_module()
    x = args[0]
    pads = _listed(args[1])
    value = args[2].item() if len(args) > 2 and args[2] is not None else 0.0
    axes = _listed(args[3]) if len(args) > 3 and args[3] is not None else list(range(x.dim()))
    axes = [_axis(a, x.dim()) for a in axes]
    begins, ends = pads[: len(axes)], pads[len(axes) :]
    widths = [0] * (2 * x.dim())
    for axis, begin, end in zip(axes, begins, ends):  # torch lists the last axis first
        widths[2 * (x.dim() - 1 - axis)] = begin
        widths[2 * (x.dim() - 1 - axis) + 1] = end
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(
        node.attributes.get_string("mode", "constant")
    )
    if mode is None:
        _unsupported(node, "this Pad mode")
    if mode == "constant":
        return torch.nn.functional.pad(x, widths, mode="constant", value=value)
    while widths[-2:] == [0, 0]:  # torch pads only the trailing axes in these modes
        widths = widths[:-2]
    return torch.nn.functional.pad(x, widths, mode=mode)


# --------------------------------------------------------------------------- reductions


@op("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd", "ReduceSumSquare")
def _reduce(node, args):
    """Axes from the input (or attribute before opset 18); none: all axes, or the input as it
    is with ``noop_with_empty_axes``."""
    torch = torch_module()
    x = args[0]
    axes = _axes_of(node, args, 1)
    keep = bool(_int(node, "keepdims", 1))
    if not axes:
        if _int(node, "noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    dims = [_axis(a, x.dim()) for a in axes]
    kind = node.op_type
    if kind == "ReduceSum":
        return torch.sum(x, dim=dims, keepdim=keep)
    if kind == "ReduceMean":
        return torch.mean(x, dim=dims, keepdim=keep)
    if kind == "ReduceMax":
        return torch.amax(x, dim=dims, keepdim=keep)
    if kind == "ReduceMin":
        return torch.amin(x, dim=dims, keepdim=keep)
    if kind == "ReduceL2":
        return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
    if kind == "ReduceSumSquare":
        return torch.sum(x * x, dim=dims, keepdim=keep)
    result = x
    for dim in sorted(dims, reverse=True):
        result = torch.prod(result, dim=dim, keepdim=keep)
    return result


# --------------------------------------------------------------------------- linear algebra and normalization


@op("Gemm")
def _gemm(node, args):
    """Y = alpha · A' B' + beta · C, A' and B' transposed when asked."""
    a, b = args[0], args[1]
    if _int(node, "transA", 0):
        a = a.t()
    if _int(node, "transB", 0):
        b = b.t()
    y = node.attributes.get_float("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + node.attributes.get_float("beta", 1.0) * args[2]
    return y


@op("Einsum")
def _einsum(node, args):
    return torch_module().einsum(node.attributes.get_string("equation"), *args)


@op("LayerNormalization")
def _layer_norm(node, args):
    """y = (x − mean) / sqrt(var + ε) · scale + bias over the axes from ``axis`` on; also the
    mean and 1/std outputs."""
    torch = torch_module()
    x = args[0]
    axis = _axis(_int(node, "axis", -1), x.dim())
    dims = list(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dim=dims, keepdim=True, unbiased=False) + node.attributes.get_float("epsilon", 1e-5))
    y = (x - mean) * inv_std * args[1]
    if len(args) > 2 and args[2] is not None:
        y = y + args[2]
    return y, mean, inv_std


@op("BatchNormalization")
def _batch_norm(node, args):
    """Inference form: y = (x − mean) / sqrt(var + ε) · scale + bias along axis 1."""
    if _int(node, "training_mode", 0) or len([v for v in node.outputs if v is not None]) > 1:
        _unsupported(node, "training-mode BatchNormalization")
    x, scale, bias, mean, var = args
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv_std = torch_module().rsqrt(var + node.attributes.get_float("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * (inv_std * scale).reshape(shape) + bias.reshape(shape)


def _spatial_pads(node, x_shape, kernel, strides, dilations) -> list[int]:
    """Explicit [begins..., ends...] pads, resolving ``auto_pad``."""
    spatial = len(kernel)
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return _ints(node, "pads", [0] * 2 * spatial)
    if auto == "VALID":
        return [0] * 2 * spatial
    begins, ends = [], []
    for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if auto == "SAME_LOWER" else small)
        ends.append(small if auto == "SAME_LOWER" else large)
    return begins + ends


def _padded(x, pads: list[int], value: float = 0.0):
    """``x`` padded explicitly on its spatial axes (pads as ONNX lists them)."""
    spatial = len(pads) // 2
    widths = []
    for axis in reversed(range(spatial)):
        widths += [pads[axis], pads[spatial + axis]]
    return torch_module().nn.functional.pad(x, widths, value=value)


@op("Conv")
def _conv(node, args):
    torch = torch_module()
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    kernel = list(weight.shape[2:])
    spatial = len(kernel)
    strides = _ints(node, "strides", [1] * spatial)
    dilations = _ints(node, "dilations", [1] * spatial)
    pads = _spatial_pads(node, x.shape, kernel, strides, dilations)
    convolve = getattr(torch.nn.functional, f"conv{spatial}d", None)
    if convolve is None:
        _unsupported(node, f"a {spatial}-d convolution")
    return convolve(_padded(x, pads), weight, bias, strides, 0, dilations, _int(node, "group", 1))


@op("MaxPool", "AveragePool")
def _pool(node, args):
    torch = torch_module()
    x = args[0]
    if len([v for v in node.outputs if v is not None]) > 1:
        _unsupported(node, "the Indices output of MaxPool")
    kernel = _ints(node, "kernel_shape")
    spatial = len(kernel)
    strides = _ints(node, "strides", [1] * spatial)
    dilations = _ints(node, "dilations", [1] * spatial)
    pads = _spatial_pads(node, x.shape, kernel, strides, dilations)
    ceil = bool(_int(node, "ceil_mode", 0))
    if node.op_type == "MaxPool":
        pool = getattr(torch.nn.functional, f"max_pool{spatial}d")
        return pool(_padded(x, pads, float("-inf")), kernel, strides, 0, dilations, ceil)
    if any(d != 1 for d in dilations):
        _unsupported(node, "a dilated AveragePool")
    pool = getattr(torch.nn.functional, f"avg_pool{spatial}d")
    if _int(node, "count_include_pad", 0) or not any(pads):
        return pool(_padded(x, pads), kernel, strides, 0, ceil, True)
    ones = torch.ones_like(x[:1, :1])
    return pool(_padded(x, pads), kernel, strides, 0, ceil, True) / pool(_padded(ones, pads), kernel, strides, 0, ceil, True)


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, args):
    x = args[0]
    dims = list(range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True) if node.op_type == "GlobalAveragePool" else x.amax(dim=dims, keepdim=True)


@op("Dropout")
def _dropout(node, args):
    if len([v for v in node.outputs if v is not None]) > 1:
        _unsupported(node, "the mask output of Dropout")
    return args[0]
