"""The IR → a Relax module with sparc's linear kernels → a TVM executable.

1. Specialize (``_specialized_onnx``): ``ai.sparc`` ops lowered to standard ONNX, the graph
   canonicalized, graph inputs given the concrete shapes of the feeds, shape computations and
   masks folded (onnxscript's optimizer), erf-GELU arithmetic fused to ``Gelu``: so the Relax
   ONNX frontend sees static shapes, and any exporter's graph its usual ops.
2. Import with ``tvm.relax.frontend.onnx.from_onnx`` (weights become Relax constants).
3. Every ``matmul(x, W)`` with a constant 2-D W, with an optional constant bias ``add`` and
   an optional Gelu/Relu/Sigmoid/Tanh or SiLU (x·sigmoid(x)) after it (when that is the
   value's only reader), becomes
   ``call_tir`` of one sparc kernel
   (``kernels.py``) whose weight layout ``choose.py`` picked by timing on this machine;
   a thresholded input ``where(less(abs(x), t), 0, x)`` (``ActivationSparsity``) of such a layer
   with at most 8 rows becomes the input-sparse kernel (``input_sparse.py``) reading x itself,
   when it beats the weight's own layout (timed, or by bytes); otherwise the Where stays an
   elementwise op before the usual kernel;
   every last-axis float32 softmax becomes sparc's softmax kernel (vectorized exp; an
   exporter's ``Where(IsNaN(p), 0, p)`` guard after it is dropped, the kernel gives 0 for a
   fully masked row) and every last-axis layer norm sparc's layer-norm kernel; at decode rows,
   the two matmuls of grouped-query attention over a repeated key/value cache become kernels
   reading the cache itself (``attention.py``).
4. Everything else is legalized and fused by Relax, scheduled by ``schedules.py``, compiled
   with ``tvm.compile`` for the Relax VM.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer as optimizer
import tvm
from onnxscript import rewriter
from onnxscript.rewriter.ort_fusions import erfgelu, gelu
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
from tvm.s_tir import dlight

from sparc.backends.tvm import attention, input_sparse, kernels, schedules
from sparc.backends.tvm.choose import Choice, choose_layout
from sparc.errors import BackendError
from sparc.ir_utils import copy_model
from sparc.ops import has_sparc_ops, lower_to_standard
from sparc.passes.activation_sparsity import ANNOTATION_KEY
from sparc.passes.canonicalize import Canonicalize

GELU_RULES = rewriter.RewriteRuleSet([*gelu.gelu_rules.rules, *erfgelu.rules.rules])
EPILOGUES = {"relax.nn.gelu": "gelu", "relax.nn.relu": "relu", "relax.sigmoid": "sigmoid", "relax.tanh": "tanh"}


@dataclass
class Lowered:
    """A compiled executable and the per-layer kernel choices made for it."""

    executable: object
    choices: list = field(default_factory=list)  # Choice, or InputSparseChoice for thresholded inputs
    unscheduled: list[str] = field(default_factory=list)
    constant_bytes: int = 0  # the executable's weights as its kernels store them (packed layouts)


def compile_model(model: ir.Model, shapes: dict[str, tuple[int, ...]], target, *, threads: int,
                  choose: bool, heuristic: bool = False) -> Lowered:
    """Compile ``model`` for feeds of ``shapes`` (name → shape) on ``target``; layouts are timed
    here (``choose``), guessed for another machine (``heuristic``), or all dense."""
    fractions = _activation_fractions(model)
    proto, dtypes = _specialized_onnx(model, shapes)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(proto, dtype_dict=dtypes)
    except Exception as exc:  # the frontend raises many kinds of errors
        raise BackendError(f"TVM's ONNX frontend cannot import the model: {_one_line(exc)}") from None
    mode = "heuristic" if heuristic else "measure" if choose else "dense"
    mod = relax.transform.FoldConstant()(mod)  # e.g. Gemm's transposed weight → a constant
    mod, choices = _use_sparc_kernels(mod, target, threads=threads, mode=mode, fractions=fractions)
    unscheduled: list[str] = []
    with target:
        executable = tvm.compile(mod, target=target, relax_pipeline=_pipeline(target, unscheduled))
    return Lowered(executable, choices, unscheduled, _constant_bytes(mod["main"]))


def _specialized_onnx(model: ir.Model, shapes):
    """The model as the frontend imports it best: canonical (sparc's ``Canonicalize``), the
    feeds' static shapes, every shape computation and mask (``ConstantOfShape`` too) folded,
    and GELU written out by an exporter (``x·½(1 + erf(x/√2))`` in any operand order) as one
    ``Gelu``, so linear kernels take it as their epilogue."""
    model = lower_to_standard(model) if has_sparc_ops(model) else copy_model(model)
    Canonicalize()(model)
    dtypes = {}
    for value in model.graph.inputs:
        if value.name not in shapes:
            raise BackendError(f"no feed for graph input {value.name!r}")
        value.shape = ir.Shape(list(shapes[value.name]))
        dtypes[value.name] = str(value.dtype.numpy())
    folder_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folder_log.level
    folder_log.setLevel(logging.ERROR)  # a node the reference evaluator cannot fold just stays
    try:
        optimizer.optimize_ir(model, num_iterations=2, should_fold=_fold_masks)
    finally:
        folder_log.setLevel(level)
    GELU_RULES.apply_to_model(model)
    return ir.serde.serialize_model(model), dtypes


def _fold_masks(node: ir.Node) -> bool | None:
    """Fold ``ConstantOfShape`` of a constant shape (onnxscript keeps it to keep files small; the
    frontend mis-imports its 1-element ``value``); the default rule for every other node."""
    return True if node.op_type == "ConstantOfShape" and node.inputs[0].const_value is not None else None


def _pipeline(target, unscheduled: list[str]):
    """Relax's CPU pipeline with sparc's schedule rules; records what stays unscheduled."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="SparcRecordUnscheduled")
    def record(mod, _context):
        unscheduled.extend(schedules.unscheduled(mod))
        return mod

    return tvm.transform.Sequential([
        *cpu.library_dispatch_passes(target),
        *cpu.legalize_passes(target),
        dlight.ApplyDefaultSchedule(*schedules.rules()),
        record,
        *cpu.dataflow_lower_passes(target),
        *cpu.finalize_passes(target),
    ])


def _activation_fractions(model: ir.Model) -> dict[float, float]:
    """The calibrated fraction of zeros behind each ``ActivationSparsity`` threshold, by the
    threshold's float32 value (what the Relax constant holds)."""
    found = {}
    for node in model.graph:
        text = node.metadata_props.get(ANNOTATION_KEY)
        if node.op_type != "Where" or text is None:
            continue
        try:
            record = json.loads(text)
            found[float(np.float32(record["threshold"]))] = float(record["calibrated"])
        except (ValueError, KeyError, TypeError):
            continue  # an annotation edited by hand: its layers keep the weight's layout
    return found


def _use_sparc_kernels(mod: tvm.IRModule, target, *, threads: int, mode: str, fractions: dict[float, float]):
    """Linear layers (thresholded inputs first, longest epilogue first) and softmaxes → sparc kernels."""
    builder = relax.BlockBuilder(mod)  # holds the kernels added as typed GlobalVars
    choices: list = []
    raw, threshold, zero = wildcard(), is_const(), is_const()
    thresholded = is_op("relax.where")(is_op("relax.less")(is_op("relax.abs")(raw), threshold), zero, raw)

    def input_sparse_layer(matches, w, b, activation):
        t = matches[threshold].value.numpy()
        rows = math.prod([int(d) for d in matches[raw].ty.shape][:-1])
        fraction = fractions.get(float(t)) if t.size == 1 else None
        if fraction is None or rows > input_sparse.MAX_ROWS or _is_zero(matches[threshold]) \
                or not _is_zero(matches[zero]):
            return None  # the Where stays; the layer gets its kernel in the next round
        weight = choose_layout(np.ascontiguousarray(w.T), rows, activation, target, threads=threads, mode=mode)
        choice = input_sparse.choose(w, rows, fraction, weight, target, threads=threads, mode=mode)
        choices.append(choice)
        if choice.layout is None:
            return _linear_call(matches[thresholded], w, b, weight, builder, f"sparc_linear_{len(choices)}")
        return _input_sparse_call(matches[raw], w, b, float(t), choice, builder, f"sparc_input_sparse_{len(choices)}",
                                  threads)

    def linear_layer(matches, w, b, activation):
        rows = math.prod([int(d) for d in matches[x].ty.shape][:-1])
        choice = choose_layout(np.ascontiguousarray(w.T), rows, activation, target, threads=threads, mode=mode)
        choices.append(choice)
        return _linear_call(matches[x], w, b, choice, builder, f"sparc_linear_{len(choices)}")

    x = wildcard()
    main = _replace_linears(mod["main"], thresholded, input_sparse_layer)
    main = _replace_linears(main, x, linear_layer)
    main = _replace_softmax(main, builder)
    main = _replace_layer_norm(main, builder)
    main = _replace_grouped_attention(main, builder)
    mod = builder.get()
    mod.update_func(mod.get_global_var("main"), main)
    return relax.transform.Normalize()(mod), choices


def _replace_linears(main, x, emit):
    """Every ``matmul(x, W)`` with a constant 2-D float32 W (+ constant bias, + activation when the
    pre-activation has no other reader), longest epilogue first, becomes ``emit(matches, W, b,
    activation)``; None leaves it."""
    weight, bias = is_const(), is_const()
    matmul = is_op("relax.matmul")(x, weight)
    biased = is_op("relax.add")(matmul, bias) | is_op("relax.add")(bias, matmul)
    activated = None
    for op_name in EPILOGUES:
        pattern = is_op(op_name)(biased | matmul)
        activated = pattern if activated is None else activated | pattern
    pre = biased | matmul
    silu = is_op("relax.multiply")(pre, is_op("relax.sigmoid")(pre)) | is_op("relax.multiply")(is_op("relax.sigmoid")(pre), pre)
    shared = _values_with_several_uses(main)

    def rewrite(call, matches):
        w = matches[weight].value.numpy()
        if w.ndim != 2 or w.dtype != np.float32 or matches[x].ty.dtype != "float32":
            return call
        activation = "silu" if call.op.name == "relax.multiply" else EPILOGUES.get(call.op.name, "none")
        readers = 2 if activation == "silu" else 1  # SiLU reads the pre-activation twice
        if activation != "none" and any(_readers(matches.get(p), shared) > readers for p in (biased, matmul) if p in matches):
            return call  # the pre-activation value has other readers: fuse without the activation
        b = matches[bias].value.numpy() if bias in matches else np.zeros(w.shape[1], np.float32)
        if b.shape != (w.shape[1],):
            return call
        result = emit(matches, w, b.astype(np.float32), activation)
        return call if result is None else result

    for pattern in (silu, activated, biased, matmul):
        main = rewrite_call(pattern, rewrite, main)
    return main


def _replace_softmax(main, builder):
    """Every float32 softmax over the last axis becomes a call of sparc's softmax kernel."""
    count = [0]

    def rewrite(call, _matches):
        shape = [int(d) for d in call.args[0].ty.shape]
        if call.args[0].ty.dtype != "float32" or int(call.attrs.axis) not in (-1, len(shape) - 1):
            return call
        rows = math.prod(shape[:-1])
        name = f"sparc_softmax_{count[0]}"
        count[0] += 1
        func = kernels.softmax_kernel(rows, shape[-1]).with_attr("global_symbol", name)
        gv = builder.add_func(func.with_attr("tirx.is_scheduled", True), name)
        flat = relax.op.reshape(call.args[0], (rows, shape[-1]))
        y = relax.call_tir(gv, [flat], relax.TensorType((rows, shape[-1]), "float32"))
        return relax.op.reshape(y, shape)

    softmax = is_op("relax.nn.softmax")(wildcard())
    guarded = is_op("relax.where")(is_op("relax.isnan")(softmax), is_const(), softmax)
    main = rewrite_call(guarded, lambda call, matches: matches[softmax] if _is_zero(matches[guarded].args[1]) else call,
                        main)
    return rewrite_call(softmax, rewrite, main)


def _is_zero(const) -> bool:
    return not np.any(const.value.numpy())


def _replace_layer_norm(main, builder):
    """Every float32 layer norm over the last axis with constant γ and β becomes a call of
    sparc's layer-norm kernel."""
    count = [0]
    data, gamma, beta = wildcard(), is_const(), is_const()

    def rewrite(call, matches):
        shape = [int(d) for d in call.args[0].ty.shape]
        axes = [int(a) % len(shape) for a in call.attrs.axes]
        last_axis_affine = axes == [len(shape) - 1] and call.attrs.center and call.attrs.scale
        if call.args[0].ty.dtype != "float32" or not last_axis_affine:
            return call
        rows, length = math.prod(shape[:-1]), shape[-1]
        name = f"sparc_layer_norm_{count[0]}"
        count[0] += 1
        func = kernels.layer_norm_kernel(rows, length, float(call.attrs.epsilon)).with_attr("global_symbol", name)
        gv = builder.add_func(func.with_attr("tirx.is_scheduled", True), name)
        params = [relax.const(matches[p].value.numpy().astype(np.float32).reshape(length)) for p in (gamma, beta)]
        flat = relax.op.reshape(call.args[0], (rows, length))
        y = relax.call_tir(gv, [flat, *params], relax.TensorType((rows, length), "float32"))
        return relax.op.reshape(y, shape)

    return rewrite_call(is_op("relax.nn.layer_norm")(data, gamma, beta), rewrite, main)


def _replace_grouped_attention(main, builder):
    """``matmul(q, permute_dims(repeat(K), [0, 1, 3, 2]))`` and ``matmul(p, repeat(V))``, where
    ``repeat`` is ``reshape(broadcast_to(expand_dims(C, axis=2), [b, kv, g, T, d]), [b, kv·g, T,
    d])`` (each cache head repeated g times), at most ``attention.MAX_ROWS`` query rows, float32,
    become the grouped kernels reading C itself; any other matmul stays."""
    count = [0]
    cache, query, probs = wildcard(), wildcard(), wildcard()
    expanded = is_op("relax.expand_dims")(cache)
    broadcast = is_op("relax.broadcast_to")(expanded, wildcard())
    repeated = is_op("relax.reshape")(broadcast, wildcard())
    transposed = is_op("relax.permute_dims")(repeated)
    scores = is_op("relax.matmul")(query, transposed)
    context = is_op("relax.matmul")(probs, repeated)

    def rewrite(call, matches, left, make_kernel):
        shape = _grouped_shape(matches[cache], matches[expanded], matches[broadcast], matches[left])
        if shape is None or (transposed in matches and [int(a) for a in matches[transposed].attrs.axes] != [0, 1, 3, 2]):
            return call
        batch, heads, kv_heads, rows, length, depth = shape
        name = f"sparc_attention_{count[0]}"
        count[0] += 1
        func = make_kernel(*shape).with_attr("global_symbol", name)
        gv = builder.add_func(func.with_attr("tirx.is_scheduled", True), name)
        out = [int(d) for d in call.ty.shape]
        return relax.call_tir(gv, [matches[left], matches[cache]], relax.TensorType(out, "float32"))

    main = rewrite_call(scores, lambda c, m: rewrite(c, m, query, attention.grouped_scores_kernel), main)
    return rewrite_call(context, lambda c, m: rewrite(c, m, probs, attention.grouped_context_kernel), main)


def _grouped_shape(cache, expanded, broadcast, left):
    """(batch, heads, kv_heads, rows, length, depth) when ``broadcast`` is ``cache`` [b, kv, T, d]
    with a new axis 2 of g copies (so the reshape to kv·g heads makes head h cache head h // g)
    and ``left`` has [b, kv·g, rows, ·] with rows and d fitting the kernels; else None."""
    tensors = (cache, left)
    if any(not isinstance(t.ty, relax.TensorType) or t.ty.dtype != "float32" or t.ty.ndim != 4 for t in tensors):
        return None
    batch, kv_heads, length, depth = [int(d) for d in cache.ty.shape]
    rows, heads = int(left.ty.shape[2]), int(left.ty.shape[1])
    copies = [int(d) for d in broadcast.ty.shape]
    if [int(a) for a in expanded.attrs.axis] != [2] or copies != [batch, kv_heads, heads // kv_heads, length, depth]:
        return None
    if heads % kv_heads or int(left.ty.shape[0]) != batch or not attention.fits(rows, depth):
        return None
    return batch, heads, kv_heads, rows, length, depth


def _values_with_several_uses(func) -> dict:
    """Bound expressions of ``func`` read by more than one binding → how many read them."""
    value_of = relax.analysis.get_var2val(func)
    several = {}
    for block in func.body.blocks:
        if isinstance(block, relax.DataflowBlock):
            several |= {value_of[var]: len(uses) for var, uses in relax.analysis.udchain(block).items()
                        if len(uses) > 1 and var in value_of}
    return several


def _readers(expr, shared: dict) -> int:
    return shared.get(expr, 1)


def _linear_call(x, weight_kn, bias, choice: Choice, builder, name: str):
    """x · W + b (+ activation) by the sparc kernel of ``choice``'s layout."""
    rows, (k_in, n_out) = math.prod([int(d) for d in x.ty.shape][:-1]), weight_kn.shape
    tensors = kernels.pack(np.ascontiguousarray(weight_kn.T), choice.layout)
    out_cols = tensors[0].shape[0] * kernels.PANEL if choice.layout.format == "dense" else n_out
    func = kernels.linear_kernel(rows, k_in, n_out, choice.layout, tensors, choice.activation)
    return _call_kernel(builder, func, name, x, tensors, bias, out_cols)


def _input_sparse_call(raw, weight_kn, bias, threshold: float, choice, builder, name: str, threads: int):
    """Where(|x| < t, 0, x) · W + b (+ activation) by the input-sparse kernel, reading x itself."""
    rows, (k_in, n_out) = math.prod([int(d) for d in raw.ty.shape][:-1]), weight_kn.shape
    tensors = input_sparse.pack(weight_kn, choice.layout)
    func = input_sparse.input_sparse_kernel(rows, k_in, n_out, threshold, choice.weight.activation, choice.layout,
                                            tensors, tasks=threads)
    return _call_kernel(builder, func, name, raw, tensors, bias, input_sparse.padded_columns(n_out))


def _call_kernel(builder, func, name: str, x, tensors, bias, out_cols: int):
    """``call_tir`` of ``func(X[rows, K], *tensors, b, Y[rows, out_cols])`` on x flattened to rows,
    the bias zero-padded to ``out_cols``, Y cut back to N columns and x's leading shape."""
    shape = [int(d) for d in x.ty.shape]
    rows, n_out = math.prod(shape[:-1]), len(bias)
    padded_bias = np.zeros(out_cols, np.float32)
    padded_bias[:n_out] = bias
    gv = builder.add_func(func.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True), name)
    flat = relax.op.reshape(x, (rows, shape[-1]))
    args = [flat, *(relax.const(t) for t in tensors), relax.const(padded_bias)]
    y = relax.call_tir(gv, args, relax.TensorType((rows, out_cols), "float32"))
    if out_cols != n_out:
        y = relax.op.strided_slice(y, axes=[1], begin=[0], end=[n_out])
    return relax.op.reshape(y, (*shape[:-1], n_out))


def _constant_bytes(func) -> int:
    """Bytes of every constant ``func`` holds (shapes and dtypes only: no tensor is copied)."""
    total = 0

    def visit(expr):
        nonlocal total
        if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "shape"):  # a tensor, not a scalar
            total += math.prod(int(d) for d in expr.value.shape) * np.dtype(expr.value.dtype).itemsize

    relax.analysis.post_order_visit(func, visit)
    return total


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
