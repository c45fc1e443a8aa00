"""Reconstruct: fit each block's remaining weights so the compressed block reproduces the original.

Runs after any compression pass that keeps the blocks' hidden states in the original's basis
(N:M, blocks, unstructured sparsity, channel crop of heads, FFN units or conv channels; a
block output whose channels were cropped is compared with the original's kept channels, as
the crop noted them), or in one fixed linear map of it: after SliceRowsColumns with its
shared rotation, x_c = x_o·M with M = Q[:, :k], which is fitted (and required exact) at the
first block's input and applied to every target. Blocks are the transformer blocks, or a
CNN's stages between residual joins (``analysis.blocks.find_segments``); block i of the
compressed model is matched with block i of the original.

Block by block, in order, on the calibration batches:
    x_c = the compressed model's input to the block (earlier blocks already reconstructed)
    x_o = the original model's input to the block, t = original block(x_o)
    minimize  ‖block(x_c; W) − t‖² / ‖t‖²  over the block's weights W
with Adam on micro-batches of ``batch_size`` samples (the calibration batches split along the
sample axis when every input has it), masks kept and early stopping on held-out micro-batches
(``sparc.algorithms.recovery``). Aiming at the original's hidden state rather than at the
original block applied to x_c lets each block also undo the drift of the blocks before it.
Held out: the last tenth of the micro-batches (1 to 4); with a single one, that one.
The graph is run in torch (``sparc.torch_runtime``); the model's shapes never change.
"""

from __future__ import annotations

import onnx_ir as ir

from sparc.algorithms.recovery import Weights, fit, graph_inputs, micro_batches, split_held_out, trainable_weights
from sparc.analysis.blocks import Block, find_segments, nodes_between
from sparc.errors import StructureError
from sparc.passes.base import register
from sparc.passes.channel_edit import kept_channels
from sparc.passes.recovery_base import RecoveryPass
from sparc.passes.slice_rows_columns import ROTATION_KEY
from sparc.torch_runtime import TorchGraph, default_device, torch_module


@register
class Reconstruct(RecoveryPass):
    """Block-wise reconstruction of a compressed model (module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.prepare()
        if model.metadata_props.get(ROTATION_KEY) == "per_layer":
            raise StructureError(
                "the residual stream was sliced with per-layer rotations: each block's output is in a "
                "basis of its own, so Reconstruct has no target for it (slice with rotation='shared')"
            )
        segments, originals = _matched_segments(model, self.reference)
        run = _Runs(model, self.reference, micro_batches(self.calibration, self.batch_size))
        run.start(segments[0], originals[0])
        blocks, modified = [], False
        for segment, original in zip(segments, originals):
            entry = self._reconstruct(model, run, segment, original)
            modified |= entry.get("loss_after", 1.0) < entry.get("loss_before", 1.0)
            blocks.append(entry)
        self.details.update({"blocks": len(blocks), "held_out_batches": len(run.held_out), "per_block": blocks})
        return ir.passes.PassResult(model, modified=modified)

    def _reconstruct(self, model: ir.Model, run: _Runs, segment: Block, original: Block) -> dict:
        """Fit one block, then move both models' hidden states past it."""
        originals = run.original_outputs(original)
        targets = run.in_compressed_basis(_kept_part(segment, originals))
        values = trainable_weights(nodes_between(segment.input, segment.output))
        entry: dict = {"block": segment.index, "weights": len(values)}
        if values:
            weights = Weights(values, run.device)
            run.compressed.parameters.update(weights.tensors)
            _check_widths(run, segment, targets)
            result = fit(weights, lambda i: run.block_loss(segment, i, targets[i]), run.train, run.held_out,
                         description=f"{self.name} block {segment.index}", **self.fit_options())
            if result.improved:
                weights.write_back(model.graph)
            entry.update(loss_before=round(result.loss_before, 5), loss_after=round(result.loss_after, 5),
                         steps=result.steps, seconds=round(result.seconds, 1))
        run.advance(segment, originals)
        return entry


class _Runs:
    """Both models' hidden states on the calibration batches, and the block loss."""

    def __init__(self, model: ir.Model, reference: ir.Model, batches: list[dict]):
        self.device = default_device()
        self.compressed = TorchGraph(model.graph, device=self.device)
        self.original = TorchGraph(reference.graph, device=self.device)
        self.feeds_c = [graph_inputs(model, self.compressed, b) for b in batches]
        self.feeds_o = [graph_inputs(reference, self.original, b) for b in batches]
        self.train, self.held_out = split_held_out(len(batches))
        self.hidden_c: list | None = None
        self.hidden_o: list | None = None
        self.basis = None

    def start(self, segment: Block, original: Block) -> None:
        """Both models' inputs to the first block, and the map between their bases if they differ."""
        with torch_module().no_grad():
            self.hidden_c = [self.compressed.evaluate([segment.input], f)[0] for f in self.feeds_c]
            self.hidden_o = [self.original.evaluate([original.input], f)[0] for f in self.feeds_o]
        if self.hidden_c[0].shape[-1] != self.hidden_o[0].shape[-1]:
            self.basis = _stream_basis(self.hidden_o, self.hidden_c)

    def in_compressed_basis(self, targets: list) -> list:
        """Original hidden states mapped into a sliced stream's basis (when widths differ)."""
        if self.basis is None or targets[0].shape[-1] != self.basis.shape[0]:
            return targets
        return [t @ self.basis for t in targets]

    def original_outputs(self, original: Block) -> list:
        """The original block's outputs from the original model's own hidden states."""
        with torch_module().no_grad():
            return [self.original.evaluate([original.output], {**f, original.input: x})[0]
                    for f, x in zip(self.feeds_o, self.hidden_o)]

    def block_output(self, segment: Block, index: int):
        feeds = self.feeds_c[index]
        return self.compressed.evaluate([segment.output], {**feeds, segment.input: self.hidden_c[index]})[0]

    def block_loss(self, segment: Block, index: int, target):
        """‖block(x_c) − t‖² / ‖t‖² on calibration batch ``index``."""
        difference = self.block_output(segment, index) - target
        return (difference * difference).sum() / (target * target).sum().clamp_min(1e-12)

    def advance(self, segment: Block, targets: list) -> None:
        with torch_module().no_grad():
            self.hidden_c = [self.block_output(segment, i).detach() for i in range(len(self.feeds_c))]
        self.hidden_o = targets


def _kept_part(segment: Block, outputs: list) -> list:
    """The original block outputs restricted to the channels a channel crop kept (all if none)."""
    kept = kept_channels(segment.output)
    if kept is None:
        return outputs
    axis, indices = kept
    index = torch_module().from_numpy(indices)
    return [t.index_select(axis, index.to(t.device)) for t in outputs]


def _stream_basis(original: list, compressed: list, *, rows: int = 16384):
    """M with x_c = x_o·M at the first block's input: the rotation-and-slice of a sliced stream
    (SliceRowsColumns' shared rotation), fitted by least squares and required to be exact."""
    torch = torch_module()
    x_o = torch.cat([t.reshape(-1, t.shape[-1]) for t in original])[:rows].double()
    x_c = torch.cat([t.reshape(-1, t.shape[-1]) for t in compressed])[:rows].double()
    basis = torch.linalg.lstsq(x_o, x_c).solution
    residual = float(torch.linalg.norm(x_o @ basis - x_c) / torch.linalg.norm(x_c).clamp_min(1e-12))
    if residual > 1e-3:
        raise StructureError(
            f"the compressed model's hidden state ({x_c.shape[1]} wide) is no linear map of the original's "
            f"({x_o.shape[1]} wide; residual {residual:.2g}): Reconstruct cannot say what each block should output"
        )
    return basis.to(original[0].dtype)


def _matched_segments(model: ir.Model, reference: ir.Model) -> tuple[list[Block], list[Block]]:
    segments, originals = find_segments(model), find_segments(reference)
    if len(segments) != len(originals):
        raise StructureError(
            f"the compressed model has {len(segments)} blocks and the original {len(originals)}: "
            "Reconstruct needs the block structure kept"
        )
    return segments, originals


def _check_widths(run: _Runs, segment: Block, targets: list) -> None:
    """Refuse blocks whose output has a shape no target can be mapped to."""
    with torch_module().no_grad():
        got = tuple(run.block_output(segment, 0).shape)
    if got != tuple(targets[0].shape):
        raise StructureError(
            f"block {segment.index} ({segment.output.name!r}) outputs {list(got)} but its target is "
            f"{list(targets[0].shape)}: Reconstruct fits blocks whose output keeps its shape, its kept "
            "channels, or the sliced basis of the first block's input"
        )
