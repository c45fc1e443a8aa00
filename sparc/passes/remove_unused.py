"""RemoveUnused: dead-code elimination over nodes, initializers, functions and opset imports.

Cases (each an onnx-ir pass):
1. Nodes whose outputs reach no graph output, and initializers nothing reads.
2. Model-local functions no node calls.
3. Opset imports no node uses.
The model's inputs and outputs never change.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from sparc.passes.base import SparcPass, register


@register
class RemoveUnused(SparcPass):
    """Remove nodes, initializers, functions and opset imports that nothing uses."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers_before = len(model.graph.initializers)
        nodes_before = sum(1 for _ in model.graph)
        modified = False
        for step in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
            modified = step(model).modified or modified
        self.details["removed_nodes"] = nodes_before - sum(1 for _ in model.graph)
        self.details["removed_initializers"] = initializers_before - len(model.graph.initializers)
        return ir.passes.PassResult(model, modified=modified)
