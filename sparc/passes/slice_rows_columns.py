"""SliceRowsColumns: SliceGPT on the residual stream, or MLP-unit slicing.

``target="stream"`` (SliceGPT, Ashkboos et al. 2024) on a pre-norm transformer
(``sparc.analysis.transformer``), with per stream value vᵢ a rotation Qᵢ (orthogonal, D×D):
1. LayerNorm models: every writer (embeddings, output/down projections and their biases) is
   made to produce zero-mean rows, W ← W − mean over outputs, so the stream has zero mean and
   each LayerNorm equals an RMSNorm.
2. Each norm's scale γ and shift β fold into the layers reading it: W ← diag(γ)·W,
   b ← b + β·W. The norm becomes a pure RMSNorm, y = x / √(Σx²/D + ε), with D the original
   width kept as divisor, so slicing does not change its scale.
3. Calibration streams each vᵢ, centred for LayerNorm models and scaled to unit length (what
   its norm passes on), into Gᵢ = XᵀX (float64); Qᵢ = eigenvectors of Gᵢ + damping·mean(diag)·I,
   by decreasing eigenvalue (``rotation="shared"``: one Q from the mean of all Gᵢ/rows).
4. Rotate and slice to kᵢ columns: embeddings E·Qᵢ, readers Qᵢᵀ·W, writers W·Qᵢ₊₁, head
   Q_Lᵀ·W; where Qᵢ ≠ Qᵢ₊₁ the residual path gets the shortcut Qᵢᵀ·Qᵢ₊₁ (kᵢ×kᵢ₊₁). A head
   tied to the embedding stays tied when the stream is RMSNorm-normalized and one Q serves
   both ends (``rotation="shared"``, ``tie_head=True``): logits = (n·M)·(E·Q)ᵀ with the
   k×k matrix M = Qᵀ·diag(γ)·Q; otherwise it is untied.
With ``ratio=0`` the model is rotated but not sliced, and equals the original.

``target="ffn"`` deletes intermediate channels of MLP units (``sparc.analysis.ffn``): rows of
the up/gate projections and columns of the down projection with the smallest calibrated
contribution sᵢ = ‖hᵢ‖₂·‖W_down[i,:]‖₂; the removed channels' mean contribution
mean(hᵢ)·W_down[i,:] is added to the down projection's bias. Works on post-norm encoders too.

A graph without the structure is left unchanged and the report says why (``strict=True``
raises instead).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.analysis.ffn import FFNUnit, find_ffn_units
from sparc.analysis.linear import LinearLayer
from sparc.analysis.norms import Norm
from sparc.analysis.transformer import TransformerStructure, find_transformer
from sparc.errors import RecipeError, StructureError
from sparc.ir_utils import constant_array
from sparc.measure.execute import collect
from sparc.measure.reducers import ChannelStats, Gram, token_mask
from sparc.passes import edit
from sparc.passes.base import SparcPass, choice, integer, number, register

logger = logging.getLogger(__name__)

ROTATION_KEY = "sparc.stream_rotation"  # model metadata: how the sliced stream was rotated


@register
class SliceRowsColumns(SparcPass):
    """Delete rows and columns of weight matrices: SliceGPT on the stream, or MLP channels."""

    lossless = False
    needs_calibration = True

    def __init__(
        self,
        *,
        ratio: float = 0.25,
        schedule: list | None = None,
        target: str = "stream",
        rotation: str | None = None,
        tie_head: bool = True,
        damping: float = 0.01,
        round_to: int = 8,
        strict: bool = False,
        **common,
    ):
        super().__init__(**common)
        self.ratio = number(self, "ratio", ratio, low=0.0, high=0.95)
        self.schedule = _schedule(self, schedule)
        self.target = choice(self, "target", target, {"stream", "ffn"})
        default = "per_layer" if self.schedule is not None else "shared"  # a schedule needs per-layer Qs
        self.rotation = choice(self, "rotation", rotation or default, {"per_layer", "shared"})
        self.damping = number(self, "damping", damping, low=0.0)
        self.round_to = integer(self, "round_to", round_to, low=1)
        self.strict = bool(strict)
        self.tie_head = bool(tie_head)
        if self.schedule is not None and self.rotation == "shared" and target == "stream":
            raise RecipeError(f"{self.name}: a per-layer schedule needs rotation='per_layer'")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            if self.target == "ffn":
                modified = self._slice_ffn(model)
            else:
                modified = self._slice_stream(model)
        except StructureError as exc:
            if self.strict:
                raise
            self.details["skipped"] = str(exc)
            logger.warning("%s did nothing: %s", self.name, exc)
            return ir.passes.PassResult(model, modified=False)
        if modified:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)

    # -- helpers shared by both targets ----------------------------------------------------

    def _kept(self, width: int, index: int) -> int:
        """Channels kept at position ``index`` of the schedule (or the uniform ratio)."""
        ratio = self.schedule[index] if self.schedule is not None else self.ratio
        kept = int(math.floor(width * (1.0 - ratio) / self.round_to)) * self.round_to
        return min(width, max(self.round_to, kept))

    def _check_schedule(self, count: int, what: str) -> None:
        if self.schedule is not None and len(self.schedule) != count:
            raise RecipeError(
                f"{self.name}: schedule has {len(self.schedule)} ratios; this model has "
                f"{count} {what}"
            )

    # -- target="stream": SliceGPT ----------------------------------------------------------

    def _slice_stream(self, model: ir.Model) -> bool:
        structure = find_transformer(model)
        kind = _norm_kind(structure)
        stream = structure.stream
        self._check_schedule(len(stream), "stream values (residual branches + 1)")
        grams = self._stream_grams(model, structure, center=kind == "layer")
        rotations = self._rotations(grams)
        dims = [self._kept(structure.hidden, i) for i in range(len(stream))]
        tied = structure.tied_embedding
        keep_tied = (
            tied is not None
            and self.tie_head
            and kind == "rms"
            and rotations[0] is rotations[-1]
            and dims[0] == dims[-1]
        )
        _rewrite_stream(
            model.graph, structure, rotations, dims, center=kind == "layer",
            tied=tied if keep_tied else None,
        )
        shortcuts = sum(1 for a, b in zip(rotations, rotations[1:]) if a is not b)
        model.metadata_props[ROTATION_KEY] = self.rotation
        self.details.update(
            {
                "norm": kind,
                "branches": len(structure.branches),
                "hidden": structure.hidden,
                "kept": dims[0] if len(set(dims)) == 1 else dims,
                "rotation": self.rotation,
                "shortcuts": shortcuts,
                "head": ("tied" if keep_tied else "untied") if tied is not None else "separate",
                "calibration_tokens": grams[0][1],
            }
        )
        return True

    def _stream_grams(self, model, structure: TransformerStructure, *, center: bool):
        """(Gᵢ, rows) for every stream value, from one calibration pass over the model."""
        mask = token_mask(model)
        reducers = {
            v.name: Gram(mask, center=center, normalize=True) for v in structure.stream
        }
        collect(model, reducers, self.calibration, threads=self.threads, description=self.name, engine=self.engine)
        return [(reducers[v.name].matrix, reducers[v.name].rows) for v in structure.stream]

    def _rotations(self, grams) -> list[np.ndarray]:
        """Qᵢ per stream value (the same object everywhere with ``rotation="shared"``)."""
        if self.rotation == "shared":
            mean = sum(g / max(rows, 1) for g, rows in grams) / len(grams)
            shared = principal_axes(mean, self.damping)
            return [shared] * len(grams)
        return [principal_axes(g, self.damping) for g, _ in grams]

    # -- target="ffn": MLP channels ---------------------------------------------------------

    def _slice_ffn(self, model: ir.Model) -> bool:
        units = find_ffn_units(model.graph)
        if not units:
            raise StructureError("no MLP unit (up/gate -> channel-wise ops -> down) found")
        self._check_schedule(len(units), "MLP units")
        mask = token_mask(model)
        stats = {u.hidden.name: ChannelStats(mask) for u in units}
        collect(model, stats, self.calibration, threads=self.threads, description=self.name, engine=self.engine)
        kept = []
        for index, unit in enumerate(units):
            keep = _important_channels(unit, stats[unit.hidden.name], self._kept(unit.channels, index))
            _slice_unit(model.graph, unit, keep, stats[unit.hidden.name].mean)
            kept.append(len(keep))
        self.details.update(
            {
                "units": len(units),
                "channels": units[0].channels,
                "kept": kept[0] if len(set(kept)) == 1 else kept,
            }
        )
        return True


def _schedule(owner, schedule) -> list[float] | None:
    if schedule is None:
        return None
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise RecipeError(f"{owner.name}: option 'schedule' must be a non-empty list of ratios")
    return [number(owner, "schedule", r, low=0.0, high=0.95) for r in schedule]


def _norm_kind(structure: TransformerStructure) -> str:
    kinds = {n.kind for n in structure.norms}
    if len(kinds) != 1:
        raise StructureError("the stream mixes LayerNorm and RMSNorm; cannot make it zero-mean")
    return kinds.pop()


def principal_axes(gram: np.ndarray, damping: float) -> np.ndarray:
    """Eigenvectors of ``gram`` + damping·mean(diag)·I as columns, by decreasing eigenvalue."""
    damped = gram + damping * np.mean(np.diag(gram)) * np.eye(gram.shape[0])
    values, vectors = np.linalg.eigh(damped)
    return vectors[:, np.argsort(values)[::-1]]


# -- the stream rewrite: compute every new array, then mutate ----------------------------


def _rewrite_stream(graph, structure, rotations, dims, *, center: bool, tied):
    """Steps 1, 2 and 4 of the module docstring, applied to ``graph``.

    ``tied``: the embedding whose (rotated, sliced) table the head keeps reading, or None.
    """
    bases = [q[:, :k] for q, k in zip(rotations, dims)]
    if tied is not None:
        _retie_head(graph, structure, bases[-1])
    for embedding in structure.embeddings:
        table = embedding.table.const_value.numpy().astype(np.float64)
        table = _centered_rows(table) if center else table
        old = embedding.table
        new = edit.replace_initializer_input(
            graph, embedding.node, 0, table @ bases[0], f"{old.name}.sliced"
        )
        if embedding is tied:
            _read_table_in_head(graph, structure.head, new)
    for value in _embedding_sum_values(structure.stream[0]):
        edit.set_last_dim(value, dims[0])
    for i, branch in enumerate(structure.branches):
        for reader in branch.readers:
            _fold_norm_into_reader(graph, reader, branch.norm, bases[i])
        _rotate_writer(graph, branch.writer, bases[i + 1], center)
        if rotations[i] is not rotations[i + 1]:
            _insert_shortcut(graph, branch, bases[i].T @ bases[i + 1])
        edit.set_last_dim(branch.stream_out, dims[i + 1])
    if tied is None:
        _fold_norm_into_reader(graph, structure.head, structure.final_norm, bases[-1])
    axes = edit.constant(graph, "rms_axes", np.array([-1], np.int64))
    inv_width = edit.constant(graph, "rms_inv_width", np.array(1.0 / structure.hidden, np.float32))
    epsilons: dict[float, ir.Value] = {}
    for norm in structure.norms:
        if norm.epsilon not in epsilons:
            epsilons[norm.epsilon] = edit.constant(graph, "rms_epsilon", np.array(norm.epsilon))
        _replace_with_rms(graph, norm, axes, inv_width, epsilons[norm.epsilon])


def _embedding_sum_values(value: ir.Value) -> list[ir.Value]:
    """``value`` and, through the Adds summing embeddings into it, every value it sums."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Add":
        return [value] + [v for operand in producer.inputs for v in _embedding_sum_values(operand)]
    return [value]


def _retie_head(graph, structure, basis: np.ndarray) -> None:
    """Keep a tied head tied: logits = (n · M) · (E·Q)ᵀ with M = Qᵀ·diag(γ)·Q (k×k).

    Exact when nothing is sliced; sliced, it approximates Qᵀ·diag(γ)·Eᵀ by projecting the
    table onto the kept subspace, which costs k² parameters instead of a second table. Only for
    RMSNorm streams: centring the table for a LayerNorm would change what the head computes.
    """
    head, norm = structure.head, structure.final_norm
    scale = norm.scale.astype(np.float64) if norm.scale is not None else np.ones(basis.shape[0])
    mixing = basis.T @ (scale.reshape(-1, 1) * basis)
    weight = edit.constant(graph, f"{head.name}.mixing", mixing)
    matmul = ir.node("MatMul", [head.input, weight], name=f"{head.node.name}_mixing")
    graph.insert_before(head.node, matmul)
    head.node.replace_input_with(0, matmul.outputs[0])
    matmul.outputs[0].dtype = ir.DataType.FLOAT
    matmul.outputs[0].shape = head.input.shape


def _read_table_in_head(graph, head: LinearLayer, table: ir.Value) -> None:
    """Make the head compute x·tableᵀ from ``table`` itself (one tensor for both uses)."""
    if head.transpose_node is not None:
        head.transpose_node.replace_input_with(0, table)
        return
    if head.node.op_type == "Gemm" and head.transposed:
        head.node.replace_input_with(1, table)
        return
    transpose = ir.node("Transpose", [table], attributes={"perm": [1, 0]}, name=f"{head.node.name}_tied")
    graph.insert_before(head.node, transpose)
    head.node.replace_input_with(1, transpose.outputs[0])
    transpose.outputs[0].dtype = ir.DataType.FLOAT


def _centered_rows(array: np.ndarray) -> np.ndarray:
    return array - array.mean(axis=1, keepdims=True)


def _fold_norm_into_reader(graph, layer: LinearLayer, norm: Norm, basis: np.ndarray) -> None:
    """W ← Qᵀ·diag(γ)·W and b ← b + β·W for a layer reading ``norm``'s output."""
    weight = layer.weight_kn().astype(np.float64)
    bias = edit.bias_of(layer)
    shift = None if norm.bias is None else norm.bias.astype(np.float64) @ weight
    if norm.scale is not None:
        weight = norm.scale.astype(np.float64).reshape(-1, 1) * weight
    edit.set_weight(graph, layer, basis.T @ weight)
    if shift is not None and np.any(shift):
        edit.set_bias(graph, layer, shift if bias is None else bias + shift)


def _rotate_writer(graph, layer: LinearLayer, basis: np.ndarray, center: bool) -> None:
    """W ← (W − row means)·Q and b ← (b − mean b)·Q for a layer writing into the stream."""
    weight = layer.weight_kn().astype(np.float64)
    bias = edit.bias_of(layer)
    if center:
        weight = _centered_rows(weight)
    edit.set_weight(graph, layer, weight @ basis)
    if bias is not None:
        bias = bias.astype(np.float64)
        edit.set_bias(graph, layer, ((bias - bias.mean()) if center else bias) @ basis)
    for value in {layer.node.outputs[0], layer.output}:
        edit.set_last_dim(value, basis.shape[1])


def _insert_shortcut(graph, branch, matrix: np.ndarray) -> None:
    """The residual input of the branch's Add goes through ``matrix`` (Qᵢᵀ·Qᵢ₊₁, sliced)."""
    add = branch.residual_add
    index = 0 if add.inputs[0] is branch.stream_in else 1
    weight = edit.constant(graph, f"shortcut_{branch.index}", matrix)
    matmul = ir.node("MatMul", [branch.stream_in, weight], name=f"{add.name}_shortcut")
    graph.insert_before(add, matmul)
    add.replace_input_with(index, matmul.outputs[0])
    out = matmul.outputs[0]
    out.dtype = ir.DataType.FLOAT
    if branch.stream_in.shape is not None:
        out.shape = ir.Shape([*list(branch.stream_in.shape)[:-1], matrix.shape[1]])


def _replace_with_rms(graph, norm: Norm, axes, inv_width, eps) -> None:
    """Replace the norm's nodes by y = x / √(Σx²·inv_width + ε), inv_width = 1/D (original D)."""
    x = norm.input
    name = norm.nodes[-1].name
    square = ir.node("Mul", [x, x], name=f"{name}_sq")
    total = ir.node("ReduceSum", [square.outputs[0], axes], attributes={"keepdims": 1}, name=f"{name}_sum")
    mean = ir.node("Mul", [total.outputs[0], inv_width], name=f"{name}_mean")
    shifted = ir.node("Add", [mean.outputs[0], eps], name=f"{name}_eps")
    root = ir.node("Sqrt", [shifted.outputs[0]], name=f"{name}_sqrt")
    inverse = ir.node("Reciprocal", [root.outputs[0]], name=f"{name}_inv")
    scaled = ir.node("Mul", [x, inverse.outputs[0]], name=f"{name}_rms")
    new_nodes = [square, total, mean, shifted, root, inverse, scaled]
    graph.insert_before(norm.nodes[0], new_nodes)
    out = scaled.outputs[0]
    out.dtype = ir.DataType.FLOAT
    out.shape = x.shape
    norm.output.replace_all_uses_with(out)
    graph.remove(norm.nodes, safe=True)


# -- the MLP rewrite --------------------------------------------------------------------


def _important_channels(unit: FFNUnit, stats: ChannelStats, kept: int) -> np.ndarray:
    """Indices (sorted) of the ``kept`` channels with the largest ‖hᵢ‖₂·‖W_down[i,:]‖₂."""
    rows_norm = np.linalg.norm(unit.down.weight_kn().astype(np.float64), axis=1)
    score = stats.l2 * rows_norm
    return np.sort(np.argsort(score)[::-1][:kept])


def _slice_unit(graph, unit: FFNUnit, keep: np.ndarray, mean: np.ndarray) -> None:
    """Keep channels ``keep`` of the unit; fold removed channels' mean output into the bias."""
    removed = np.setdiff1d(np.arange(unit.channels), keep)
    down_weight = unit.down.weight_kn().astype(np.float64)
    compensation = mean[removed] @ down_weight[removed]
    for producer in unit.producers:
        edit.set_weight(graph, producer, producer.weight_kn()[:, keep])
        bias = edit.bias_of(producer)
        if bias is not None:
            edit.set_bias(graph, producer, bias[keep])
    for node, index in unit.channel_constants:
        array = constant_array(node.inputs[index])
        edit.replace_initializer_input(
            graph, node, index, np.take(array, keep, axis=-1), f"{node.name}_channels"
        )
    edit.set_weight(graph, unit.down, down_weight[keep])
    bias = edit.bias_of(unit.down)
    edit.set_bias(graph, unit.down, compensation if bias is None else bias + compensation)
    for value in unit.intermediate_values():
        edit.set_last_dim(value, len(keep))
