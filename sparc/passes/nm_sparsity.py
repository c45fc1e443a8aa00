"""NMSparsity: keep n non-zeros in every m consecutive inputs of each output (e.g. 2:4).

See ``sparc.passes.sparsity_base`` for layer selection and the methods; any n < m ≤ 16.
"""

from __future__ import annotations

from sparc.algorithms.sparsity import Pattern
from sparc.errors import RecipeError
from sparc.passes.base import integer, register
from sparc.passes.sparsity_base import SparsityPass


@register
class NMSparsity(SparsityPass):
    """N:M fine-grained sparsity along the input dimension."""

    def __init__(self, *, n: int = 2, m: int = 4, **options):
        super().__init__(**options)
        self.n = integer(self, "n", n, low=1)
        self.m = integer(self, "m", m, low=2, high=16)
        if self.n >= self.m:
            raise RecipeError(f"{self.name}: n must be smaller than m, got {n}:{m}")

    def pattern_for(self, layer) -> Pattern:
        return Pattern("nm", self.n / self.m, self.n, self.m, method=self.method)
