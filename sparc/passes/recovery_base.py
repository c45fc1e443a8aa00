"""What the training recovery passes (Reconstruct, Distill) share: their options and setup.

Options: ``steps`` (Adam steps, per block for Reconstruct), ``lr``, ``batch_size`` (samples per
micro-batch), ``eval_every`` (steps between held-out evaluations) and ``patience``
(evaluations without improvement before stopping); see ``sparc.algorithms.recovery``.
"""

from __future__ import annotations

from sparc.errors import RecipeError
from sparc.passes.base import SparcPass, integer, number
from sparc.torch_runtime import torch_module


class RecoveryPass(SparcPass):
    """Base of the passes that fit weights to the original model (its ``reference``)."""

    lossless = False
    needs_calibration = True
    needs_reference = True
    default_lr = 1e-3

    def __init__(self, *, steps: int = 200, lr: float | None = None, batch_size: int = 4, eval_every: int = 20,
                 patience: int = 3, **common):
        super().__init__(**common)
        self.steps = integer(self, "steps", steps, low=1)
        self.lr = number(self, "lr", self.default_lr if lr is None else lr, low=0.0, open_low=True)
        self.batch_size = integer(self, "batch_size", batch_size, low=1)
        self.eval_every = integer(self, "eval_every", eval_every, low=1)
        self.patience = integer(self, "patience", patience, low=1)

    def prepare(self) -> None:
        """Check the pipeline gave the original model; use the pass's threads in torch."""
        if self.reference is None:
            raise RecipeError(f"{self.name} runs inside a pipeline, which gives it the original model")
        if self.threads:
            torch_module().set_num_threads(self.threads)

    def fit_options(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "eval_every": self.eval_every, "patience": self.patience}
