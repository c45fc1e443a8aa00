"""UnstructuredSparsity: keep ``density`` of each layer's weights, anywhere.

``density``: one number, a mapping of layer-name patterns to densities, or one number spread
per layer by outlier ratio (``owl``); see case 5 of ``sparc.passes.sparsity_base``.
"""

from __future__ import annotations

from sparc.algorithms.sparsity import Pattern
from sparc.passes.base import register
from sparc.passes.sparsity_base import DensitySparsityPass


@register
class UnstructuredSparsity(DensitySparsityPass):
    """Unstructured sparsity at a target density."""

    def pattern_for(self, layer) -> Pattern:
        return Pattern("unstructured", self.density_for(layer), method=self.method)
