"""BlockSparsity: zero whole rows×cols tiles of W[out, in] (e.g. 16×1), keeping ``density``.

``density``: one number, a mapping of layer-name patterns to densities, or one number spread
per layer by outlier ratio (``owl``); see case 5 of ``sparc.passes.sparsity_base``.
"""

from __future__ import annotations

from sparc.algorithms.sparsity import Pattern
from sparc.errors import RecipeError
from sparc.passes.base import integer, register
from sparc.passes.sparsity_base import DensitySparsityPass


@register
class BlockSparsity(DensitySparsityPass):
    """Block sparsity with b_r×b_c tiles."""

    def __init__(self, *, block=(16, 1), **options):
        super().__init__(**options)
        if not isinstance(block, (list, tuple)) or len(block) != 2:
            raise RecipeError(f"{self.name}: option 'block' must be [rows, cols], got {block!r}")
        self.block = (integer(self, "block", block[0], low=1), integer(self, "block", block[1], low=1))

    def pattern_for(self, layer) -> Pattern:
        density = self.density_for(layer)
        return Pattern("block", density, block=self.block, method=self.method)
