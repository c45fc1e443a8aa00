"""ActivationSparsity: the small entries of linear layers' inputs become zero (TEAL / CATS style).

Each selected linear layer's input x gets a magnitude threshold t, calibrated so that a
``fraction`` of its entries satisfy |x| < t, and the layer reads x̂ = Where(Less(Abs(x), t), 0, x)
instead (standard ONNX: stock ONNX Runtime runs it). A backend whose kernel skips the weight
rows of zero inputs (sparc's TVM input-sparse kernel, up to 8 rows) then reads about
(1 − fraction) of the layer's weight.

Cases:
1. Layers: with ``targets``, the linear layers (``sparc.analysis.linear``) whose names match
   one; else those inside the transformer blocks (``analysis.blocks.find_blocks``: attention and
   MLP projections, not an LM head), or every linear layer of a model without attention blocks;
   then minus ``skip``, and minus a layer writing a graph output unless ``include_outputs``.
   No layer selected raises, naming what was looked for.
2. The selected layers reading one value (q/k/v; gate/up) share one threshold and one Where;
   the value's other readers (the residual stream) keep reading x.
3. Calibration: ``rounds`` runs over the calibration data exposing every selected input, each
   streaming a histogram of |x| per input (``sparc.measure.magnitudes``; padding tokens left
   out) and setting t to its ``fraction`` quantile. The Wheres are in place from the start
   (t = 0 in the first run), so a later run sees each input as the earlier thresholds leave it:
   on SmolLM2 one run left the inputs 2 points sparser than asked on held-out text, two runs
   0.5. The calibrated fraction (entries below t in the last run) is kept beside t.
4. The Where and the layers it feeds carry ``metadata_props["sparc.activation_sparsity"]``, JSON
   ``{"threshold", "fraction", "calibrated"}``; the report lists every input's threshold.
5. Weight sparsity passes work on the same layers in either order (their annotation and this one
   are separate keys), and FuseSparseOps after it fuses a layer behind its Where.
"""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import onnx_ir as ir

from sparc.analysis.blocks import find_blocks, nodes_between
from sparc.analysis.linear import LinearLayer, find_linear_layers
from sparc.errors import RecipeError, StructureError
from sparc.ir_utils import add_initializer, set_initializer
from sparc.measure.execute import collect
from sparc.measure.magnitudes import MagnitudeHistogram
from sparc.measure.reducers import token_mask
from sparc.passes.base import SparcPass, integer, number, patterns, register

ANNOTATION_KEY = "sparc.activation_sparsity"


@register
class ActivationSparsity(SparcPass):
    """Zero the entries of linear layers' inputs below a calibrated magnitude threshold."""

    lossless = False
    needs_calibration = True

    def __init__(self, *, fraction: float = 0.5, targets=None, skip=None, include_outputs: bool = False,
                 rounds: int = 2, **common):
        super().__init__(**common)
        self.fraction = number(self, "fraction", fraction, low=0.0)
        if self.fraction >= 1.0:
            raise RecipeError(f"{self.name}: option 'fraction' must be < 1 (the fraction of input entries "
                              f"zeroed), got {fraction}")
        self.targets = patterns(self, "targets", targets)
        self.skip = patterns(self, "skip", skip)
        self.include_outputs = bool(include_outputs)
        self.rounds = integer(self, "rounds", rounds, low=1)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        readers = _by_input(self.selected(model))
        wheres = {value: _insert_where(model.graph, value, layers) for value, layers in readers.items()}
        for round_ in range(self.rounds):
            histograms = {value.name: MagnitudeHistogram(token_mask(model)) for value in readers}
            collect(model, histograms, self.calibration, threads=self.threads, engine=self.engine,
                    description=f"{self.name} (round {round_ + 1} of {self.rounds})")
            for value, where in wheres.items():
                _set_threshold(model.graph, where, histograms[value.name].threshold(self.fraction))
        lines, calibrated = [], []
        for value, layers in readers.items():
            threshold = _threshold_of(wheres[value])
            record = {"threshold": threshold, "fraction": self.fraction,
                      "calibrated": round(histograms[value.name].fraction_below(threshold), 4)}
            for node in [wheres[value], *(layer.node for layer in layers)]:
                node.metadata_props[ANNOTATION_KEY] = json.dumps(record)
            calibrated.append(record["calibrated"])
            lines.append(f"{' / '.join(layer.name for layer in layers)}: t={threshold:.4g} "
                         f"({record['calibrated']:.1%} below)")
        self.details.update({"layers": sum(map(len, readers.values())), "inputs": len(readers),
                             "fraction": self.fraction, "calibrated": f"{min(calibrated):.1%}–{max(calibrated):.1%}",
                             "thresholds": lines})
        return ir.passes.PassResult(model, modified=True)

    def selected(self, model: ir.Model) -> list[LinearLayer]:
        """The layers whose inputs are sparsified (case 1 of the module docstring)."""
        layers = find_linear_layers(model.graph)
        if not layers:
            raise StructureError(f"{self.name}: the graph has no linear layer (MatMul/Gemm with a constant weight)")
        if self.targets:
            chosen = [layer for layer in layers if any(fnmatch.fnmatch(layer.name, p) for p in self.targets)]
            looked_for = f"layers matching {list(self.targets)}"
        else:
            chosen, looked_for = _default_layers(model, layers)
        chosen = [layer for layer in chosen if not any(fnmatch.fnmatch(layer.name, p) for p in self.skip)
                  and (self.include_outputs or not layer.output.is_graph_output())]
        if not chosen:
            raise RecipeError(
                f"{self.name}: no linear layer selected: looked for {looked_for}, skip {list(self.skip) or 'none'}, "
                f"layers writing graph outputs {'included' if self.include_outputs else 'left out'}; the graph's "
                f"layers: {', '.join(layer.name for layer in layers[:8])}{' ...' if len(layers) > 8 else ''}")
        return chosen


def _default_layers(model: ir.Model, layers: list[LinearLayer]) -> tuple[list[LinearLayer], str]:
    """The layers inside the transformer blocks, or all layers of a model without them."""
    try:
        blocks = find_blocks(model)
    except StructureError:
        return layers, "every linear layer (no transformer blocks)"
    inside = set().union(*(nodes_between(block.input, block.output) for block in blocks))
    return [layer for layer in layers if layer.node in inside], f"the layers of {len(blocks)} transformer blocks"


def _by_input(layers: list[LinearLayer]) -> dict[ir.Value, list[LinearLayer]]:
    """The layers grouped by the value they read, in order of each group's first layer."""
    groups: dict[ir.Value, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.input, []).append(layer)
    return groups


def _insert_where(graph: ir.Graph, value: ir.Value, layers: list[LinearLayer]) -> ir.Node:
    """x̂ = Where(Less(Abs(x), t), 0, x) before the first of ``layers``, which then read x̂; t = 0
    (nothing zeroed) until calibrated."""
    dtype = value.dtype.numpy() if value.dtype is not None else np.float32
    t = add_initializer(graph, f"{value.name}.threshold", np.array(0, dtype))
    zero = add_initializer(graph, f"{value.name}.zero", np.array(0, dtype))
    magnitude = ir.node("Abs", [value], name=f"{value.name}_abs")
    below = ir.node("Less", [magnitude.outputs[0], t], name=f"{value.name}_below_threshold")
    where = ir.node("Where", [below.outputs[0], zero, value], name=f"{value.name}_activation_sparsity")
    where.outputs[0].shape, where.outputs[0].type = value.shape, value.type
    order = {node: i for i, node in enumerate(graph)}
    graph.insert_before(min((layer.node for layer in layers), key=order.__getitem__), [magnitude, below, where])
    for layer in layers:
        layer.node.replace_input_with(0, where.outputs[0])
    return where


def _threshold_value(where: ir.Node) -> ir.Value:
    return where.inputs[0].producer().inputs[1]


def _threshold_of(where: ir.Node) -> float:
    return float(_threshold_value(where).const_value.numpy())


def _set_threshold(graph: ir.Graph, where: ir.Node, threshold: float) -> None:
    value = _threshold_value(where)
    set_initializer(graph, value, np.array(threshold, value.dtype.numpy()))
