"""RecalibrateNorms: per-channel statistics re-estimated after channels were removed.

Cases:
1. The model has BatchNormalization nodes (inference form): each one's running mean m and
   variance v are re-estimated so that on the calibration data its output has, per channel,
   the mean and standard deviation the original model's BatchNorm output has there:
       s = σ_c·|γ| / σ_o,  v = s² − ε,  m = μ_c − (μ_o − β)·s / γ
   (μ_c, σ_c: its input's moments in the compressed model; μ_o, σ_o: the original output's,
   on the channels a crop kept). Matching the original on the same data, rather than setting
   the plain input statistics, keeps BatchNorm's statistics from the original's training
   data where the calibration images differ from it. In graph order, so each BatchNorm sees
   the already corrected ones before it.
2. No BatchNormalization (the exporter folded it into the convolutions): every Conv or Gemm
   with a bias whose weight was cropped (matched with the original by node name; output
   channels compared on those the crop kept) gets a per-channel scale and shift, folded into
   its weight and bias, so that its output's mean and standard deviation per channel equal
   the original model's on the calibration data: y' = (y − μ_c)·σ_o/σ_c + μ_o. A channel
   whose compressed σ_c is ~0 keeps its scale.
The model runs in torch (``sparc.torch_runtime``) on all calibration batches at once, node by
node; memory holds the live activations of every batch.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparc.algorithms.recovery import graph_inputs
from sparc.errors import StructureError
from sparc.passes import edit
from sparc.passes.base import SparcPass, register
from sparc.passes.channel_edit import kept_channels
from sparc.torch_runtime import TorchGraph, last_reads, torch_module

_TINY = 1e-6


@register
class RecalibrateNorms(SparcPass):
    """Re-estimate BatchNorm statistics, or refit folded per-channel affines (module docstring)."""

    lossless = False
    needs_calibration = True
    needs_reference = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        torch = torch_module()
        if self.threads:
            torch.set_num_threads(self.threads)
        norms = [n for n in model.graph if n.op_type == "BatchNormalization" and n.domain == ""]
        targets = norms or _cropped_affines(model, self.reference)
        if not targets:
            raise StructureError("no BatchNormalization and no Conv/Gemm with cropped inputs: nothing to re-estimate")
        graph = TorchGraph(model.graph)
        wanted = _original_statistics(self.reference, targets, self.calibration)
        envs = [graph_inputs(model, graph, feeds) for feeds in self.calibration]
        outputs = list(model.graph.outputs)
        plan = graph.plan(outputs, envs[0].keys())
        freed = last_reads(plan, outputs)
        chosen = set(targets)
        with torch.no_grad():
            for index, node in enumerate(plan):
                if node in chosen and norms:
                    _reestimate(model.graph, graph, node, [env[node.inputs[0]] for env in envs], wanted[node])
                for env in envs:
                    graph.step(node, env)
                if node in chosen and not norms:
                    _refit_affine(model.graph, graph, node, [env[node.outputs[0]] for env in envs], wanted[node])
                    for env in envs:
                        graph.step(node, env)
                for env in envs:
                    for value in freed.get(index, ()):
                        env.pop(value, None)
        kind = "BatchNormalization running statistics" if norms else "folded per-channel scale and shift"
        self.details.update({"recalibrated": len(targets), "kind": kind})
        return ir.passes.PassResult(model, modified=True)


def _channel_moments(tensors: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and biased variance over every other axis of all batches."""
    return _moments(sum(_sums(t) for t in tensors))


def _sums(tensor) -> np.ndarray:
    """[count, Σx, Σx²] per channel (axis 1) of one batch, in float64."""
    flat = tensor.transpose(0, 1).reshape(tensor.shape[1], -1).double()
    count = np.full(flat.shape[0], flat.shape[1], np.float64)
    return np.stack([count, flat.sum(1).numpy(), (flat * flat).sum(1).numpy()])


def _moments(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count, total, squares = sums
    mean = total / count
    return mean, np.maximum(squares / count - mean * mean, 0.0)


def _reestimate(graph: ir.Graph, runner: TorchGraph, node: ir.Node, inputs: list, wanted) -> None:
    """Case 1: the BatchNorm's running mean and variance (module docstring)."""
    mean_c, var_c = _channel_moments(inputs)
    mean_o, var_o = wanted
    gamma, beta = (node.inputs[i].const_value.numpy().astype(np.float64) for i in (1, 2))
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    old_mean, old_var = (node.inputs[i].const_value.numpy().astype(np.float64) for i in (3, 4))
    usable = (np.sqrt(var_o) > _TINY) & (np.abs(gamma) > _TINY)
    scale = np.sqrt(var_c) * np.abs(gamma) / np.maximum(np.sqrt(var_o), _TINY)
    var = np.where(usable, np.maximum(scale * scale - epsilon, 0.0), old_var)
    mean = np.where(usable, mean_c - (mean_o - beta) * np.sqrt(var + epsilon) / np.where(usable, gamma, 1.0), old_mean)
    for index, array in ((3, mean), (4, var)):
        runner.forget(node.inputs[index])
        edit.replace_initializer_input(graph, node, index, array, f"{node.name}.recalibrated_{index}")


def _refit_affine(graph: ir.Graph, runner: TorchGraph, node: ir.Node, outputs: list, wanted) -> None:
    """Case 2: fold y' = (y − μ_c)·σ_o/σ_c + μ_o into the layer's weight and bias."""
    mean, var = _channel_moments(outputs)
    want_mean, want_var = wanted
    std = np.sqrt(var)
    scale = np.where(std > _TINY, np.sqrt(want_var) / np.maximum(std, _TINY), 1.0)
    shift = want_mean - mean * scale
    weight = node.inputs[1].const_value.numpy().astype(np.float64)
    transposed = node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)
    weight = weight * (scale[None, :] if transposed else scale.reshape(-1, *[1] * (weight.ndim - 1)))
    bias = node.inputs[2].const_value.numpy().astype(np.float64) * scale + shift
    for index, array in ((1, weight), (2, bias)):
        runner.forget(node.inputs[index])
        edit.replace_initializer_input(graph, node, index, array, f"{node.name}.recalibrated_{index}")


def _cropped_affines(model: ir.Model, reference: ir.Model) -> list[ir.Node]:
    """Conv/Gemm nodes with a constant weight and bias that a crop changed (case 2)."""
    original = {n.name: n for n in reference.graph if n.op_type in ("Conv", "Gemm")}
    found = []
    for node in model.graph:
        twin = original.get(node.name)
        if twin is None or node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3:
            continue
        weight, bias, old = node.inputs[1], node.inputs[2], twin.inputs[1]
        if weight is None or bias is None or weight.const_value is None or bias.const_value is None:
            continue
        out_axis = 1 if node.op_type == "Gemm" and not node.attributes.get_int("transB", 0) else 0
        shape, old_shape = weight.const_value.shape, old.const_value.shape if old.const_value is not None else None
        if old_shape is None or shape == old_shape:
            continue
        if shape[out_axis] == old_shape[out_axis] or kept_channels(node.outputs[0]) is not None:
            found.append(node)
    return found


def _original_statistics(reference: ir.Model, targets: list[ir.Node], data) -> dict:
    """{compressed node: per-channel (mean, var) of the original's same-named output}."""
    by_name = {n.name: n for n in reference.graph}
    graph = TorchGraph(reference.graph)
    values = [by_name[node.name].outputs[0] for node in targets]
    sums = [0.0 for _ in targets]
    with torch_module().no_grad():
        for feeds in data:
            tensors = graph.evaluate(values, graph_inputs(reference, graph, feeds))
            sums = [total + _sums(tensor) for total, tensor in zip(sums, tensors)]
    return {node: _kept(node, *_moments(total)) for node, total in zip(targets, sums)}


def _kept(node: ir.Node, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original's moments on the channels of ``node``'s output that a crop kept."""
    kept = kept_channels(node.outputs[0])
    return (mean, var) if kept is None else (mean[kept[1]], var[kept[1]])
