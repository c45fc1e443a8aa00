"""Fitting a compressed graph's remaining weights to the original's outputs (recovery passes).

Weights fitted (:func:`trainable_weights`): the float initializers that the fitted nodes read
and no other node reads (a shared initializer stays as it is), except scalars and
BatchNormalization's running statistics. Zeros stay zero: a weight of two or more dims is
multiplied by its mask (w ≠ 0) after every step, and so is its gradient, so Adam's moments
never build up there. Shapes never change, so removed channels stay removed.

:func:`fit`: Adam on the loss over the training batches, cycling through them; every
``eval_every`` steps the mean loss on the held-out batches is measured, the best weights seen
(the initial ones included) are kept, and training stops after ``patience`` evaluations
without improvement or at ``steps``. Weights are written back only when the held-out loss
went down, so a fit never makes a model worse on data it did not train on.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from sparc.data import holdout_size
from sparc.ir_utils import set_initializer
from sparc.torch_runtime import TorchGraph, torch_module

_RUNNING_STATISTICS = {("BatchNormalization", 3), ("BatchNormalization", 4)}


@dataclasses.dataclass
class FitResult:
    """Held-out loss before and after, steps taken, seconds spent."""

    loss_before: float
    loss_after: float
    steps: int
    seconds: float

    @property
    def improved(self) -> bool:
        return self.loss_after < self.loss_before


def trainable_weights(nodes: Iterable[ir.Node]) -> list[ir.Value]:
    """The initializers the fitted ``nodes`` may change (module docstring), in reading order."""
    nodes = set(nodes)
    found: dict[ir.Value, None] = {}
    for node in nodes:
        for index, value in enumerate(node.inputs):
            if value is None or value.const_value is None or value.producer() is not None:
                continue
            if (node.op_type, index) in _RUNNING_STATISTICS or value.is_graph_input():
                continue
            if value.dtype is None or not value.dtype.is_floating_point() or value.const_value.size <= 1:
                continue
            if all(use.node in nodes for use in value.uses()) and not value.is_graph_output():
                found[value] = None
    return sorted(found, key=lambda v: v.name or "")


class Weights:
    """Torch copies of IR initializers being fitted, with their masks (zeros stay zero)."""

    def __init__(self, values: Sequence[ir.Value], device):
        torch = torch_module()
        self.values = list(values)
        self.tensors = {
            v: torch.nn.Parameter(torch.from_numpy(np.array(v.const_value.numpy(), np.float32)).to(device))
            for v in self.values
        }
        self.masks = {v: (t.detach() != 0).to(t.dtype) for v, t in self.tensors.items() if t.dim() >= 2}

    def mask_gradients(self) -> None:
        for value, mask in self.masks.items():
            grad = self.tensors[value].grad
            if grad is not None:
                grad.mul_(mask)

    def apply_masks(self) -> None:
        with torch_module().no_grad():
            for value, mask in self.masks.items():
                self.tensors[value].mul_(mask)

    def snapshot(self) -> dict[ir.Value, object]:
        return {v: t.detach().clone() for v, t in self.tensors.items()}

    def restore(self, saved) -> None:
        with torch_module().no_grad():
            for value, tensor in saved.items():
                self.tensors[value].copy_(tensor)

    def write_back(self, graph: ir.Graph) -> None:
        """Store the fitted tensors in their initializers, in each initializer's own dtype."""
        for value, tensor in self.tensors.items():
            array = tensor.detach().cpu().numpy().astype(value.dtype.numpy())
            set_initializer(graph, value, array)


def fit(
    weights: Weights,
    loss: Callable[[int], object],
    train: Sequence[int],
    held_out: Sequence[int],
    *,
    steps: int,
    lr: float,
    eval_every: int,
    patience: int,
    description: str = "fitting",
) -> FitResult:
    """Minimize ``loss(batch)`` over ``train`` batches (module docstring); the best weights stay in ``weights``."""
    torch = torch_module()
    start = time.perf_counter()
    optimizer = torch.optim.Adam(list(weights.tensors.values()), lr=lr)
    best = before = _mean_loss(loss, held_out)
    saved, stale, step = weights.snapshot(), 0, 0
    for step in _progress(range(1, steps + 1), description):
        optimizer.zero_grad(set_to_none=True)
        loss(train[(step - 1) % len(train)]).backward()
        weights.mask_gradients()
        optimizer.step()
        weights.apply_masks()
        if step % eval_every and step != steps:
            continue
        current = _mean_loss(loss, held_out)
        if current < best:
            best, saved, stale = current, weights.snapshot(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    weights.restore(saved)
    return FitResult(before, best, step, time.perf_counter() - start)


def micro_batches(data, size: int) -> list[dict]:
    """The calibration batches split into parts of ``size`` samples (whole when inputs differ in samples)."""
    parts = []
    for feeds in data:
        counts = {np.shape(v)[0] if np.ndim(v) else None for v in feeds.values()}
        samples = counts.pop() if len(counts) == 1 else None
        if not samples:
            parts.append(dict(feeds))
            continue
        parts += [{k: v[i : i + size] for k, v in feeds.items()} for i in range(0, samples, size)]
    return parts


def split_held_out(count: int) -> tuple[list[int], list[int]]:
    """Training and held-out batch indices: the last tenth held out (1 to 4); a single batch is both."""
    held = holdout_size(count)
    train = list(range(count - held))
    return train, (list(range(count - held, count)) if held else train)


def graph_inputs(model: ir.Model, graph: TorchGraph, feeds) -> dict:
    """``feeds`` as tensors keyed by ``model``'s input values."""
    return {v: graph.tensor(feeds[v.name]) for v in model.graph.inputs if v.name in feeds}


def _mean_loss(loss, batches: Sequence[int]) -> float:
    with torch_module().no_grad():
        return float(np.mean([float(loss(b)) for b in batches]))


def _progress(steps: range, description: str):
    """The steps, with a progress bar on an interactive terminal."""
    if not sys.stderr.isatty():
        yield from steps
        return
    from rich.progress import track

    yield from track(steps, description=description, transient=True)
