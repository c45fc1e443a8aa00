"""The ``ai.sparc`` op domain: sparse ops the passes emit, their numpy semantics, lowerings."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.capture.onnx import default_opset
from sparc.ir_utils import copy_model
from sparc.measure.cost import MAC_RULES
from sparc.ops import sparse_linear
from sparc.ops.sparse_linear import DOMAIN
from sparc.runtime import register_lowering

DOMAIN_VERSION = 1


def has_sparc_ops(model: ir.Model) -> bool:
    return any(node.domain == DOMAIN for node in model.graph)


def lower_to_standard(model: ir.Model) -> ir.Model:
    """A copy of ``model`` with every ``ai.sparc`` op replaced by standard ONNX ops."""
    lowered = copy_model(model)
    opset, dense = default_opset(lowered), {}
    for node in [n for n in lowered.graph if sparse_linear.is_sparse_linear(n)]:
        sparse_linear.lower_to_onnx(lowered.graph, node, opset, dense)
    lowered.opset_imports.pop(DOMAIN, None)
    RemoveUnusedNodesPass()(lowered)
    return lowered


MAC_RULES[(DOMAIN, sparse_linear.OP)] = sparse_linear.macs
register_lowering(DOMAIN, lower_to_standard)

__all__ = ["DOMAIN", "DOMAIN_VERSION", "has_sparc_ops", "lower_to_standard", "sparse_linear"]
