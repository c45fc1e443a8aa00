"""FoldConstants: evaluate every node whose inputs are all constant (onnxscript's folder).

Cases (all from ``onnxscript.optimizer.fold_constants_ir``):
1. Nodes with constant inputs of at most ``input_size_limit`` elements are evaluated and
   replaced by their result (Shape, Size and similar ops fold whenever their input shape is
   static).
2. Results larger than ``output_size_limit`` elements are left as computations.
Dead nodes left behind are removed. The model's outputs do not change.
"""

from __future__ import annotations

import onnx_ir as ir
import onnxscript.optimizer as optimizer
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.passes.base import SparcPass, integer, register


@register
class FoldConstants(SparcPass):
    """Fold constant subgraphs into initializers."""

    def __init__(self, *, input_size_limit: int = 8192, output_size_limit: int = 262144, **common):
        super().__init__(**common)
        self.input_size_limit = integer(self, "input_size_limit", input_size_limit, low=0)
        self.output_size_limit = integer(self, "output_size_limit", output_size_limit, low=0)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes_before = _node_count(model)
        result = optimizer.fold_constants_ir(
            model,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
        )
        removed = RemoveUnusedNodesPass()(model).modified
        self.details["nodes"] = {"before": nodes_before, "after": _node_count(model)}
        return ir.passes.PassResult(model, modified=result.modified or removed)


def _node_count(model: ir.Model) -> int:
    return sum(1 for _ in model.graph)
