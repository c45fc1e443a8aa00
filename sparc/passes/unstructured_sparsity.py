"""UnstructuredSparsity: keep ``density`` of each layer's weights, anywhere.

``density`` is one number or a mapping of layer-name patterns to densities (first match wins;
unmatched selected layers use ``default_density``). See ``sparc.passes.sparsity_base``.
"""

from __future__ import annotations

from sparc.algorithms.sparsity import Pattern
from sparc.passes.base import register
from sparc.passes.sparsity_base import SparsityPass, densities, density_for


@register
class UnstructuredSparsity(SparsityPass):
    """Unstructured sparsity at a target density."""

    def __init__(self, *, density=0.5, default_density: float = 1.0, **options):
        super().__init__(**options)
        self.density, self.default_density = densities(self, density, default_density)

    def pattern_for(self, layer) -> Pattern:
        return Pattern("unstructured", density_for(self, layer), method=self.method)
