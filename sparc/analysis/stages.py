"""The graph cut into stages around its blocks, for running it one block at a time.

With blocks b_0 … b_{n-1} (``analysis.blocks.find_segments``) the stages are, in order:
    context 0, block 0, context 1, block 1, …, block n-1, context n
Stage 2i+1 holds block i's nodes (``nodes_between`` its input and output). Every other node
goes to the earliest context stage in which all it reads exists: a node reading only graph
inputs and constants goes to context 0 (masks, rotary tables), one reading block i's values
to context i+1 (a KV-cache output, the final norm and head after the last block). Constant
nodes belong to no stage: a stage that reads one carries its own copy.

``measure.staged`` runs the stages one at a time (how an out-of-core model, its weights
larger than memory, is calibrated, checked and run).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from sparc.analysis.blocks import Block, nodes_between
from sparc.errors import StructureError
from sparc.ir_utils import values_read


@dataclasses.dataclass
class Stage:
    """One stage: its nodes in graph order; ``block`` when it is a block's stage."""

    index: int
    nodes: list[ir.Node]
    block: Block | None = None


def split_into_stages(model: ir.Model, blocks: list[Block]) -> list[Stage]:
    """The 2n+1 stages around ``blocks`` (module docstring); StructureError when a node would
    read a value computed in a later stage (the blocks do not cut the graph in sequence)."""
    model.graph.sort()
    stage_of: dict[ir.Node, int] = {}
    for block in blocks:
        for node in nodes_between(block.input, block.output):
            stage_of[node] = 2 * block.index + 1
    for node in model.graph:
        if node.op_type == "Constant" and not node.inputs:
            continue
        if node in stage_of:
            _check_block_reads(node, stage_of)
        else:
            stage_of[node] = max((_stage_after(v, stage_of) for v in values_read(node)), default=0)
    stages = [Stage(i, [], blocks[i // 2] if i % 2 else None) for i in range(2 * len(blocks) + 1)]
    for node in model.graph:
        if node in stage_of:
            stages[stage_of[node]].nodes.append(node)
    return stages


def _stage_after(value: ir.Value, stage_of: dict[ir.Node, int]) -> int:
    """The earliest context stage in which ``value`` exists: 0 for graph inputs and constants,
    the producer's stage for a context value, the next context for a block's value."""
    producer = value.producer()
    if producer is None or producer not in stage_of:
        return 0
    stage = stage_of[producer]
    return stage + 1 if stage % 2 else stage


def _check_block_reads(node: ir.Node, stage_of: dict[ir.Node, int]) -> None:
    stage = stage_of[node]
    if any(stage_of.get(v.producer(), 0) > stage for v in values_read(node)):
        raise StructureError(
            f"node {node.name!r} ({node.op_type}) of block {stage // 2} reads a value computed after "
            "that block: the blocks do not cut the graph in sequence"
        )

