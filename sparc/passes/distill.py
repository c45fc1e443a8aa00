"""Distill: the compressed model learns the original model's outputs on the calibration inputs.

End to end, masks fixed (``sparc.algorithms.recovery``): every float output contributes a loss
chosen by its fidelity measure (``sparc.measure.outputs``), averaged over rows (the last axis
is the feature axis):
    logits             KL(softmax(t) ‖ softmax(y))
    probabilities      KL(t ‖ y)                     (log of the clamped values)
    log_probabilities  KL(exp(t) ‖ exp(y))
    cosine             1 − cos(y, t)
Integer outputs have no gradient and are left out. The original's outputs are computed batch
by batch as training goes, so memory holds one micro-batch of each model's activations. The
fitted weights are those of every node except embedding tables (the data of a Gather), which
are large and see few rows in a small calibration set. Adam with early stopping on held-out
micro-batches, as in Reconstruct; weights are written back only when the held-out loss went
down. Run it after the compression passes (and after Reconstruct, which it complements).
"""

from __future__ import annotations

import onnx_ir as ir

from sparc.algorithms.recovery import Weights, fit, graph_inputs, micro_batches, split_held_out, trainable_weights
from sparc.errors import StructureError
from sparc.measure.outputs import measures_of
from sparc.passes.base import register
from sparc.passes.recovery_base import RecoveryPass
from sparc.torch_runtime import TorchGraph, default_device, torch_module


@register
class Distill(RecoveryPass):
    """End-to-end distillation from the original model (module docstring)."""

    default_lr = 2e-5

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.prepare()
        torch = torch_module()
        outputs = _trained_outputs(model)
        device = default_device()
        student, teacher = TorchGraph(model.graph, device=device), TorchGraph(self.reference.graph, device=device)
        weights = Weights(trainable_weights(_fitted_nodes(model)), device)
        student.parameters.update(weights.tensors)
        batches = micro_batches(self.calibration, self.batch_size)
        train, held_out = split_held_out(len(batches))

        def loss(index: int):
            feeds = batches[index]
            with torch.no_grad():
                targets = teacher.evaluate(_outputs_of(self.reference, outputs), graph_inputs(self.reference, teacher, feeds))
            got = student.evaluate([model.graph.outputs[i] for i in outputs], graph_inputs(model, student, feeds))
            return sum(_output_loss(outputs[i], y, t) for i, y, t in zip(outputs, got, targets)) / len(outputs)

        result = fit(weights, loss, train, held_out, description=self.name, **self.fit_options())
        if result.improved:
            weights.write_back(model.graph)
        self.details.update({"weights": len(weights.values), "loss_before": round(result.loss_before, 5),
                             "loss_after": round(result.loss_after, 5), "steps": result.steps,
                             "held_out_batches": len(held_out) if held_out is not train else "the training batch"})
        return ir.passes.PassResult(model, modified=result.improved)


def _trained_outputs(model: ir.Model) -> dict[int, str]:
    """{graph output index: fidelity measure} of the float outputs."""
    measures = measures_of(model)
    found = {i: measures[v.name] for i, v in enumerate(model.graph.outputs)
             if v.dtype is not None and v.dtype.is_floating_point()}
    if not found:
        raise StructureError("Distill needs a float output to learn; the model has none")
    return found


def _outputs_of(reference: ir.Model, outputs: dict[int, str]) -> list[ir.Value]:
    return [reference.graph.outputs[i] for i in outputs]


def _fitted_nodes(model: ir.Model) -> list[ir.Node]:
    """Every node but embedding lookups (their table stays as it is)."""
    return [n for n in model.graph if not (n.op_type == "Gather" and n.domain == "")]


def _output_loss(measure: str, got, want):
    """The loss of one output for its measure (module docstring), averaged over rows."""
    torch = torch_module()
    functional = torch.nn.functional
    if measure == "cosine":
        return 1.0 - functional.cosine_similarity(got, want, dim=-1).mean()
    if measure in ("logits", "probabilities", "log_probabilities"):
        log_got, log_want = _log_distribution(got, measure), _log_distribution(want, measure)
        kl = (log_want.exp() * (log_want - log_got)).sum(-1)
        return kl.mean()
    difference = got - want
    return (difference * difference).sum() / (want * want).sum().clamp_min(1e-12)


def _log_distribution(values, measure: str):
    torch = torch_module()
    if measure == "logits":
        return torch.log_softmax(values, dim=-1)
    if measure == "probabilities":
        return torch.log(values.clamp_min(1e-12))
    return values
