"""Passes over the IR. Each pass lives in its own module and registers under its class name."""

from sparc.passes.base import PASSES, SparcPass, build_pass
from sparc.passes.channel_crop import ChannelCrop
from sparc.passes.fold_constants import FoldConstants
from sparc.passes.infer_shapes import InferShapes
from sparc.passes.pipeline import Pipeline
from sparc.passes.remove_unused import RemoveUnused
from sparc.passes.slice_rows_columns import SliceRowsColumns

__all__ = [
    "PASSES",
    "ChannelCrop",
    "FoldConstants",
    "InferShapes",
    "Pipeline",
    "RemoveUnused",
    "SliceRowsColumns",
    "SparcPass",
    "build_pass",
]
