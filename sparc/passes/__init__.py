"""Passes over the IR. Each pass lives in its own module and registers under its class name."""

from sparc.passes.activation_sparsity import ActivationSparsity
from sparc.passes.base import PASSES, SparcPass, build_pass
from sparc.passes.block_sparsity import BlockSparsity
from sparc.passes.canonicalize import Canonicalize
from sparc.passes.channel_crop import ChannelCrop
from sparc.passes.distill import Distill
from sparc.passes.fold_constants import FoldConstants
from sparc.passes.fuse_sparse_ops import FuseSparseOps
from sparc.passes.infer_shapes import InferShapes
from sparc.passes.nm_sparsity import NMSparsity
from sparc.passes.pipeline import Pipeline
from sparc.passes.recalibrate_norms import RecalibrateNorms
from sparc.passes.reconstruct import Reconstruct
from sparc.passes.remove_unused import RemoveUnused
from sparc.passes.slice_rows_columns import SliceRowsColumns
from sparc.passes.token_router import TokenRouter
from sparc.passes.unstructured_sparsity import UnstructuredSparsity

__all__ = [
    "PASSES",
    "ActivationSparsity",
    "BlockSparsity",
    "Canonicalize",
    "NMSparsity",
    "UnstructuredSparsity",
    "ChannelCrop",
    "Distill",
    "FoldConstants",
    "FuseSparseOps",
    "InferShapes",
    "Pipeline",
    "RecalibrateNorms",
    "Reconstruct",
    "RemoveUnused",
    "SliceRowsColumns",
    "SparcPass",
    "TokenRouter",
    "build_pass",
]
