"""Random Llama-architecture decoders of any size, written without holding their weights.

:func:`write_random_llama` writes the prefill graph of Hugging Face's ``LlamaForCausalLM``
(eager attention, no cache; inputs ``input_ids`` and ``attention_mask`` int64 [batch, seq],
output ``logits`` float32 [batch, seq, vocab], batch and seq dynamic):

    x₀ = E[input_ids]
    m  = x + o_proj(attention(rope(q_proj(n₁(x))), rope(k_proj(n₁(x))), v_proj(n₁(x))))
    x' = m + down_proj(silu(gate_proj(n₂(m))) · up_proj(n₂(m)))          (once per layer)
    logits = lm_head(norm(x_L))                                           (untied head)

- RMSNorm n(x) = γ · (x · 1/√(mean(x²) + ε)) over the last axis, written decomposed (Pow,
  ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul γ) as the torch exporter writes it.
- Rotary embeddings at positions 0..seq-1 (Hugging Face's default position ids, padding or
  not): angles pᵢ·θ^(−2k/d) for k < d/2, concatenated twice; q·cos + rotate_half(q)·sin.
- Attention: softmax(q·kᵀ/√d + bias) · v, bias 0 where key j ≤ query i and
  ``attention_mask[b, j] = 1``, else the float32 minimum; with grouped-query attention each
  K/V head is repeated heads/kv_heads times (Unsqueeze, Expand, Reshape).
- Linear layers are ``MatMul(x, W[in, out])`` (Hugging Face's ``Linear.weight`` transposed).

Weights are external data in one file next to the model (``<model file>.data``), each tensor
drawn from its own generator (seed, tensor index) and appended in row chunks of at most
``CHUNK_BYTES``, 4096-byte aligned: memory never holds more than one chunk, and the same seed
and shape give byte-identical files. Distributions: linear weights N(0, 1/in_features) (each
projection of a unit-scale input stays unit-scale, at any width and depth), embedding
N(0, 1), norm scales 1 + 0.1·N(0, 1) (not all ones, so a swapped or misplaced norm shows).

``python -m sparc.eval.synthetic_llama --shape large30 --out DIR`` writes ``DIR/model.onnx``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.errors import SparcError
from sparc.files import cache_dir, write_atomic
from sparc.measure.memory import PeakMemory

OPSET = 18
IR_VERSION = 10
CHUNK_BYTES = 16 * 2**20
ALIGNMENT = 4096
FLOAT = ir.DataType.FLOAT
INT64 = ir.DataType.INT64
BOOL = ir.DataType.BOOL
NORM_SCALE_STD = 0.1


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama decoder (Hugging Face ``LlamaConfig`` names in brackets):
    vocab [vocab_size], hidden [hidden_size], intermediate [intermediate_size], layers
    [num_hidden_layers], heads [num_attention_heads], kv_heads [num_key_value_heads],
    rope_theta, rms_eps [rms_norm_eps]. head_dim = hidden / heads."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    def __post_init__(self):
        problems = [f"{name} = {getattr(self, name)} must be ≥ 1" for name in
                    ("vocab", "hidden", "intermediate", "layers", "heads", "kv_heads") if getattr(self, name) < 1]
        if not problems and self.hidden % self.heads:
            problems.append(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if not problems and self.heads % self.kv_heads:
            problems.append(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        if not problems and self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} is odd (rotary embeddings rotate pairs)")
        if self.rope_theta <= 0 or self.rms_eps <= 0:
            problems.append("rope_theta and rms_eps must be positive")
        if problems:
            raise SparcError("invalid Llama shape: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_parameters(self) -> int:
        """One layer: q, o [h, h]; k, v [h, kv·d]; gate, up, down [h·i]; two norms [h]."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    def parameters(self) -> int:
        """Embedding [v, h] + layers + final norm [h] + untied head [h, v]."""
        return 2 * self.vocab * self.hidden + self.layers * self.layer_parameters() + self.hidden

    def weight_bytes(self) -> int:
        """Bytes of the float32 weights (without the file's alignment padding)."""
        return 4 * self.parameters()


PRESETS: dict[str, LlamaShape] = {
    # tests: 2 layers, grouped-query attention (2 query heads per K/V head), head_dim 16
    "tiny": LlamaShape(vocab=128, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),
    # a few hundred MB, for the writer's memory test: 112,731,136 parameters, 450,924,544 bytes
    "mid": LlamaShape(vocab=32000, hidden=1024, intermediate=2816, layers=4, heads=8, kv_heads=4),
    # Llama-2-7B widths with 36 layers instead of 32: 7,547,949,056 parameters,
    # 30,191,796,224 bytes (30.19 GB, 28.12 GiB) of float32 weights
    "large30": LlamaShape(vocab=32000, hidden=4096, intermediate=11008, layers=36, heads=32, kv_heads=32),
}


# ---- the weights: names, shapes, distributions, in file order ----------------------------


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One weight: values mean + std · N(0, 1), of ``shape``."""

    name: str
    shape: tuple[int, ...]
    std: float
    mean: float = 0.0


def weight_specs(shape: LlamaShape) -> list[WeightSpec]:
    """Every weight in file order: embedding, each layer (Hugging Face's parameter order), final
    norm, head. Linear weights are [in, out] with std 1/√in."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim

    def linear(name: str, rows: int, cols: int) -> WeightSpec:
        return WeightSpec(f"{name}.weight", (rows, cols), 1.0 / math.sqrt(rows))

    def norm(name: str) -> WeightSpec:
        return WeightSpec(f"{name}.weight", (h,), NORM_SCALE_STD, 1.0)

    specs = [WeightSpec("model.embed_tokens.weight", (shape.vocab, h), 1.0)]
    for layer in range(shape.layers):
        p = f"model.layers.{layer}"
        specs += [norm(f"{p}.input_layernorm"),
                  linear(f"{p}.self_attn.q_proj", h, h), linear(f"{p}.self_attn.k_proj", h, kv),
                  linear(f"{p}.self_attn.v_proj", h, kv), linear(f"{p}.self_attn.o_proj", h, h),
                  norm(f"{p}.post_attention_layernorm"),
                  linear(f"{p}.mlp.gate_proj", h, i), linear(f"{p}.mlp.up_proj", h, i),
                  linear(f"{p}.mlp.down_proj", i, h)]
    return [*specs, norm("model.norm"), linear("lm_head", h, shape.vocab)]


def _chunks(spec: WeightSpec, seed: int, index: int, chunk_bytes: int) -> Iterator[np.ndarray]:
    """The weight's values in consecutive row chunks of at most ``chunk_bytes`` (one buffer,
    refilled), drawn from the generator of (seed, index) in row-major order."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))
    rows, cols = spec.shape[0], math.prod(spec.shape[1:])
    step = max(1, min(rows, chunk_bytes // (4 * cols)))
    buffer = np.empty((step, cols), dtype=np.float32)
    for start in range(0, rows, step):
        chunk = buffer[: min(step, rows - start)]
        rng.standard_normal(out=chunk, dtype=np.float32)
        chunk *= np.float32(spec.std)
        if spec.mean:
            chunk += np.float32(spec.mean)
        yield chunk


class _DataWriter:
    """Appends tensors to one open external data file; keeps only their locations."""

    def __init__(self, handle, location: str, base_dir: Path):
        self.handle, self.location, self.base_dir = handle, location, base_dir
        self.offset = 0

    def append(self, spec: WeightSpec, chunks: Iterator[np.ndarray]) -> ir.ExternalTensor:
        """Write the chunks at the next aligned offset; drop them from the page cache once on disk."""
        start = -(-self.offset // ALIGNMENT) * ALIGNMENT
        self.handle.write(b"\0" * (start - self.offset))
        for chunk in chunks:
            self.handle.write(memoryview(chunk).cast("B"))
        self.offset = self.handle.tell()
        self._release(start)
        return ir.ExternalTensor(self.location, start, self.offset - start, FLOAT, shape=ir.Shape(spec.shape),
                                 name=spec.name, base_dir=self.base_dir)

    def _release(self, start: int) -> None:
        """Written pages are clean page cache once synced: dropping them keeps the machine's
        memory for other work (a 30 GB file would otherwise evict everything else)."""
        self.handle.flush()
        os.fdatasync(self.handle.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.handle.fileno(), start, self.offset - start, os.POSIX_FADV_DONTNEED)


# ---- the graph ---------------------------------------------------------------------------


class _Builder:
    """Nodes, constants and weights of one graph, with unique readable names."""

    def __init__(self):
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []
        self._constants: dict[tuple, ir.Value] = {}
        self._names: dict[str, int] = {}

    def _unique(self, name: str) -> str:
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return name if count == 0 else f"{name}_{count}"

    def constant(self, values, dtype) -> ir.Value:
        """A small inline initializer (shared by every reader of the same values)."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self._unique(f"const_{array.dtype.name}_{'_'.join(map(str, array.reshape(-1)[:4]))}")
            self._constants[key] = self.initializer(ir.tensor(array, name=name))
        return self._constants[key]

    def initializer(self, tensor: ir.TensorProtocol) -> ir.Value:
        value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        self.initializers.append(value)
        return value

    def op(self, op_type: str, inputs: Sequence[ir.Value], scope: str, dtype: ir.DataType,
           shape: Sequence, **attributes) -> ir.Value:
        """One node ``scope/op_type`` with a single output of ``dtype`` and ``shape``."""
        name = self._unique(f"{scope}/{op_type}")
        output = ir.Value(name=f"{name}_output_0", type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))
        self.nodes.append(ir.node(op_type, list(inputs), attributes or None, name=name, outputs=[output]))
        return output


@dataclasses.dataclass
class _Context:
    """What every layer reads: sizes, rotary cos/sin [seq, d], attention bias [b, 1, seq, seq]."""

    shape: LlamaShape
    cos: ir.Value
    sin: ir.Value
    bias: ir.Value


def _rms_norm(b: _Builder, x: ir.Value, scale: ir.Value, eps: float, scope: str) -> ir.Value:
    """γ · (x · 1/√(mean(x², last axis) + ε))."""
    dims = list(x.shape)
    squared = b.op("Pow", [x, b.constant(2.0, np.float32)], scope, FLOAT, dims)
    mean = b.op("ReduceMean", [squared, b.constant([-1], np.int64)], scope, FLOAT, [*dims[:-1], 1],
                keepdims=1, noop_with_empty_axes=0)
    root = b.op("Sqrt", [b.op("Add", [mean, b.constant(eps, np.float32)], scope, FLOAT, mean.shape)],
                scope, FLOAT, mean.shape)
    normalized = b.op("Mul", [x, b.op("Reciprocal", [root], scope, FLOAT, mean.shape)], scope, FLOAT, dims)
    return b.op("Mul", [scale, normalized], scope, FLOAT, dims)


def _linear(b: _Builder, x: ir.Value, weight: ir.Value, scope: str) -> ir.Value:
    """x · W with W [in, out]."""
    return b.op("MatMul", [x, weight], scope, FLOAT, [*list(x.shape)[:-1], weight.shape[1]])


def _heads(b: _Builder, x: ir.Value, heads: int, head_dim: int, scope: str) -> ir.Value:
    """[b, s, heads·d] → [b, heads, s, d]."""
    split = b.op("Reshape", [x, b.constant([0, 0, heads, head_dim], np.int64)], scope, FLOAT,
                 ["batch", "seq", heads, head_dim])
    return b.op("Transpose", [split], scope, FLOAT, ["batch", heads, "seq", head_dim], perm=[0, 2, 1, 3])


def _rope(b: _Builder, x: ir.Value, ctx: _Context, scope: str) -> ir.Value:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = concat(−x[..., d/2:], x[..., :d/2])."""
    dims, half = list(x.shape), ctx.shape.head_dim // 2
    axis = b.constant([-1], np.int64)
    first = b.op("Slice", [x, b.constant([0], np.int64), b.constant([half], np.int64), axis], scope, FLOAT,
                 [*dims[:-1], half])
    second = b.op("Slice", [x, b.constant([half], np.int64), b.constant([2 * half], np.int64), axis], scope,
                  FLOAT, [*dims[:-1], half])
    rotated = b.op("Concat", [b.op("Neg", [second], scope, FLOAT, second.shape), first], scope, FLOAT, dims,
                   axis=-1)
    return b.op("Add", [b.op("Mul", [x, ctx.cos], scope, FLOAT, dims),
                        b.op("Mul", [rotated, ctx.sin], scope, FLOAT, dims)], scope, FLOAT, dims)


def _repeat_kv(b: _Builder, x: ir.Value, shape: LlamaShape, scope: str) -> ir.Value:
    """[b, kv, s, d] → [b, kv·r, s, d], each head repeated r = heads/kv times in place."""
    repeats = shape.heads // shape.kv_heads
    if repeats == 1:
        return x
    kv, d = shape.kv_heads, shape.head_dim
    wide = b.op("Unsqueeze", [x, b.constant([2], np.int64)], scope, FLOAT, ["batch", kv, 1, "seq", d])
    wide = b.op("Expand", [wide, b.constant([1, 1, repeats, 1, 1], np.int64)], scope, FLOAT,
                ["batch", kv, repeats, "seq", d])
    return b.op("Reshape", [wide, b.constant([0, shape.heads, -1, d], np.int64)], scope, FLOAT,
                ["batch", shape.heads, "seq", d])


def _attention(b: _Builder, x: ir.Value, w: dict[str, ir.Value], ctx: _Context, scope: str) -> ir.Value:
    """o_proj(softmax(rope(q)·rope(k)ᵀ/√d + bias) · v), heads merged back to [b, s, h]."""
    s, h, d = ctx.shape, ctx.shape.hidden, ctx.shape.head_dim
    q = _rope(b, _heads(b, _linear(b, x, w["q_proj"], f"{scope}.q_proj"), s.heads, d, scope), ctx, scope)
    k = _rope(b, _heads(b, _linear(b, x, w["k_proj"], f"{scope}.k_proj"), s.kv_heads, d, scope), ctx, scope)
    v = _heads(b, _linear(b, x, w["v_proj"], f"{scope}.v_proj"), s.kv_heads, d, scope)
    k, v = _repeat_kv(b, k, s, scope), _repeat_kv(b, v, s, scope)
    scores_shape = ["batch", s.heads, "seq", "seq"]
    k_t = b.op("Transpose", [k], scope, FLOAT, ["batch", s.heads, d, "seq"], perm=[0, 1, 3, 2])
    scores = b.op("Mul", [b.op("MatMul", [q, k_t], scope, FLOAT, scores_shape),
                          b.constant(d**-0.5, np.float32)], scope, FLOAT, scores_shape)
    scores = b.op("Add", [scores, ctx.bias], scope, FLOAT, scores_shape)
    probs = b.op("Softmax", [scores], scope, FLOAT, scores_shape, axis=-1)
    mixed = b.op("MatMul", [probs, v], scope, FLOAT, ["batch", s.heads, "seq", d])
    mixed = b.op("Transpose", [mixed], scope, FLOAT, ["batch", "seq", s.heads, d], perm=[0, 2, 1, 3])
    merged = b.op("Reshape", [mixed, b.constant([0, 0, h], np.int64)], scope, FLOAT, ["batch", "seq", h])
    return _linear(b, merged, w["o_proj"], f"{scope}.o_proj")


def _mlp(b: _Builder, x: ir.Value, w: dict[str, ir.Value], scope: str) -> ir.Value:
    """down_proj(silu(gate_proj(x)) · up_proj(x)), silu(g) = g·σ(g)."""
    gate = _linear(b, x, w["gate_proj"], f"{scope}.gate_proj")
    up = _linear(b, x, w["up_proj"], f"{scope}.up_proj")
    dims = list(gate.shape)
    silu = b.op("Mul", [gate, b.op("Sigmoid", [gate], f"{scope}.act_fn", FLOAT, dims)], f"{scope}.act_fn",
                FLOAT, dims)
    return _linear(b, b.op("Mul", [silu, up], scope, FLOAT, dims), w["down_proj"], f"{scope}.down_proj")


def _layer(b: _Builder, x: ir.Value, w: dict[str, ir.Value], ctx: _Context, index: int) -> ir.Value:
    """m = x + attention(n₁(x)); x' = m + mlp(n₂(m))."""
    p, eps, dims = f"model.layers.{index}", ctx.shape.rms_eps, list(x.shape)
    normed = _rms_norm(b, x, w["input_layernorm"], eps, f"{p}.input_layernorm")
    m = b.op("Add", [x, _attention(b, normed, w, ctx, f"{p}.self_attn")], p, FLOAT, dims)
    normed = _rms_norm(b, m, w["post_attention_layernorm"], eps, f"{p}.post_attention_layernorm")
    return b.op("Add", [m, _mlp(b, normed, w, f"{p}.mlp")], p, FLOAT, dims)


def _positions(b: _Builder, input_ids: ir.Value) -> ir.Value:
    """0, 1, ..., seq − 1 (int64 [seq])."""
    length = b.op("Shape", [input_ids], "model", INT64, [1], start=1, end=2)
    length = b.op("Squeeze", [length], "model", INT64, [])
    return b.op("Range", [b.constant(0, np.int64), length, b.constant(1, np.int64)], "model", INT64, ["seq"])


def _rotary(b: _Builder, positions: ir.Value, shape: LlamaShape) -> tuple[ir.Value, ir.Value]:
    """cos and sin [seq, d] of concat(p·f, p·f), f_k = 1/θ^(2k/d) (float32, as Hugging Face)."""
    d, scope = shape.head_dim, "model.rotary_emb"
    exponents = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inverse = (1.0 / (np.float32(shape.rope_theta) ** exponents)).astype(np.float32)
    p = b.op("Cast", [positions], scope, FLOAT, ["seq"], to=FLOAT)
    p = b.op("Unsqueeze", [p, b.constant([1], np.int64)], scope, FLOAT, ["seq", 1])
    angles = b.op("Mul", [p, b.constant(inverse, np.float32)], scope, FLOAT, ["seq", d // 2])
    angles = b.op("Concat", [angles, angles], scope, FLOAT, ["seq", d], axis=-1)
    return b.op("Cos", [angles], scope, FLOAT, ["seq", d]), b.op("Sin", [angles], scope, FLOAT, ["seq", d])


def _attention_bias(b: _Builder, positions: ir.Value, attention_mask: ir.Value) -> ir.Value:
    """[b, 1, seq, seq]: 0 where key j ≤ query i and attention_mask[b, j] = 1, else float32 min."""
    scope = "model.mask"
    keys = b.op("Unsqueeze", [positions, b.constant([0], np.int64)], scope, INT64, [1, "seq"])
    queries = b.op("Unsqueeze", [positions, b.constant([1], np.int64)], scope, INT64, ["seq", 1])
    causal = b.op("LessOrEqual", [keys, queries], scope, BOOL, ["seq", "seq"])
    padding = b.op("Cast", [attention_mask], scope, BOOL, ["batch", "seq"], to=BOOL)
    padding = b.op("Unsqueeze", [padding, b.constant([1, 2], np.int64)], scope, BOOL, ["batch", 1, 1, "seq"])
    allowed = b.op("And", [causal, padding], scope, BOOL, ["batch", 1, "seq", "seq"])
    return b.op("Where", [allowed, b.constant(0.0, np.float32), b.constant(np.finfo(np.float32).min, np.float32)],
                scope, FLOAT, ["batch", 1, "seq", "seq"])


def build_graph(shape: LlamaShape, weights: Callable[[str], ir.Value], b: _Builder) -> ir.Graph:
    """The prefill graph (module docstring); ``weights(name)`` gives each weight's value, asked
    for in file order (so a caller can write each one as it is asked for)."""
    input_ids = ir.Value(name="input_ids", type=ir.TensorType(INT64), shape=ir.Shape(["batch", "seq"]))
    attention_mask = ir.Value(name="attention_mask", type=ir.TensorType(INT64), shape=ir.Shape(["batch", "seq"]))
    x = b.op("Gather", [weights("model.embed_tokens.weight"), input_ids], "model.embed_tokens", FLOAT,
             ["batch", "seq", shape.hidden], axis=0)
    positions = _positions(b, input_ids)
    cos, sin = _rotary(b, positions, shape)
    ctx = _Context(shape, cos, sin, _attention_bias(b, positions, attention_mask))
    for index in range(shape.layers):
        p = f"model.layers.{index}"
        names = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                 "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        w = {name.split(".")[-1]: weights(f"{p}.{name}.weight") for name in names}
        x = _layer(b, x, w, ctx, index)
    x = _rms_norm(b, x, weights("model.norm.weight"), shape.rms_eps, "model.norm")
    logits = _linear(b, x, weights("lm_head.weight"), "lm_head")
    logits.name = "logits"
    return ir.Graph([input_ids, attention_mask], [logits], nodes=b.nodes, initializers=b.initializers,
                    opset_imports={"": OPSET}, name="llama_prefill")


def structure_model(shape: LlamaShape) -> ir.Model:
    """The same graph with every weight a graph input instead of data (nothing generated or
    written): for checking a shape's graph, e.g. that ONNX Runtime accepts it, at any size."""
    shapes = {spec.name: spec.shape for spec in weight_specs(shape)}
    inputs: list[ir.Value] = []

    def weight(name: str) -> ir.Value:
        inputs.append(ir.Value(name=name, type=ir.TensorType(FLOAT), shape=ir.Shape(shapes[name])))
        return inputs[-1]

    graph = build_graph(shape, weight, _Builder())
    graph.inputs.extend(inputs)
    return ir.Model(graph, ir_version=IR_VERSION, producer_name="sparc.eval.synthetic_llama")


# ---- writing ------------------------------------------------------------------------------


def write_random_llama(path: str | os.PathLike, shape: LlamaShape, *, seed: int = 0,
                       chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Write the model to ``path`` and its weights to ``path.data`` beside it (module docstring),
    each weight generated and written before the next; return ``path``. The data file is
    written under a temporary name and renamed when complete, then the model file."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise SparcError(f"{path}: the folder {folder} does not exist")
    _check_space(folder, shape)
    location = f"{path.name}.data"
    specs = {spec.name: (index, spec) for index, spec in enumerate(weight_specs(shape))}
    fd, temp = tempfile.mkstemp(prefix=f".{location}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _DataWriter(handle, location, folder)
            builder = _Builder()

            def weight(name: str) -> ir.Value:
                index, spec = specs[name]
                return builder.initializer(writer.append(spec, _chunks(spec, seed, index, chunk_bytes)))

            graph = build_graph(shape, weight, builder)
        os.replace(temp, folder / location)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="sparc.eval.synthetic_llama",
                     metadata_props={"sparc.synthetic_llama": _describe(shape, seed)})
    write_atomic(path, ir.serde.serialize_model(model).SerializeToString())
    return path


def _describe(shape: LlamaShape, seed: int) -> str:
    return ", ".join(f"{k}={v}" for k, v in {**dataclasses.asdict(shape), "seed": seed}.items())


def _check_space(folder: Path, shape: LlamaShape) -> None:
    """The weights plus 1% (alignment, the graph) must fit on the folder's disk."""
    needed = int(shape.weight_bytes() * 1.01) + 2**20
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SparcError(f"{folder}: {free / 1e9:.2f} GB free, the model needs {needed / 1e9:.2f} GB")


def default_folder(preset: str) -> Path:
    """Where the benchmark keeps a generated model: ``$SPARC_CACHE/<preset>-llama`` (large30:
    ``$SPARC_CACHE/large-llama``)."""
    return cache_dir() / ("large-llama" if preset == "large30" else f"{preset}-llama")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparc.eval.synthetic_llama --shape NAME [--out DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m sparc.eval.synthetic_llama", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, help="folder (default: the sparc cache's <shape>-llama)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = PRESETS[args.shape]
    folder = args.out or default_folder(args.shape)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with PeakMemory() as peak:
        path = write_random_llama(folder / "model.onnx", shape, seed=args.seed)
    seconds = time.perf_counter() - start
    data = path.with_name(path.name + ".data").stat().st_size
    peak_text = "unmeasured" if peak.bytes is None else f"{peak.bytes / 2**20:.0f} MiB ({peak.start / 2**20:.0f} MiB at start)"
    sys.stdout.write(f"{path}: {shape.parameters():,} parameters, {shape.weight_bytes():,} weight bytes, "
                     f"data file {data:,} bytes, {seconds:.1f} s, peak RSS {peak_text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
