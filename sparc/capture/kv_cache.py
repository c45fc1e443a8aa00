"""Decoders with a KV cache: finding the cache in any exporter's graph, and completing feeds.

A generation-ready decoder takes, per attention layer, the past keys and values as graph inputs
and returns them extended by the new tokens: ``present = Concat(past, new, axis=a)`` (Optimum
and onnxruntime-genai name them ``past_key_values.{i}.key|value`` → ``present.{i}.key|value``,
shape [batch, kv_heads, past, head_dim], a = 2). The cache is found by that structure, not by
names: a rank-4 float graph input that reaches a graph output through a ``Concat`` (Cast,
Identity and chained Concats on the way are followed), so files from other exporters are recognized too.

Feeds a user gives for a prompt (``input_ids`` and usually ``attention_mask``) are completed
for such a model: empty pasts (length 0 on the cache axis) and ``position_ids`` counted from the
attention mask (left padding gives position 0 to the first real token, as Hugging Face does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparc.errors import UnsupportedModelError

PASS_THROUGH = ("Cast", "Identity")


@dataclass(frozen=True)
class KvPair:
    """One cached tensor: graph input ``past`` extended along ``axis`` into graph output ``present``."""

    past: str
    present: str
    axis: int


@dataclass(frozen=True)
class KvCache:
    """The cache of a decoder graph and the inputs that come with it (None: the graph has none)."""

    pairs: tuple[KvPair, ...]
    input_ids: str | None
    attention_mask: str | None
    position_ids: str | None

    @property
    def past_names(self) -> list[str]:
        return [pair.past for pair in self.pairs]

    @property
    def present_names(self) -> list[str]:
        return [pair.present for pair in self.pairs]


def find_kv_cache(model: ir.Model) -> KvCache | None:
    """The model's KV cache, or None when no graph input is extended into a graph output."""
    outputs = {id(v): v for v in model.graph.outputs}
    pairs = []
    for value in model.graph.inputs:
        if value.dtype is None or not value.dtype.is_floating_point() or value.shape is None or len(value.shape) != 4:
            continue
        found = _extended_output(value, outputs)
        if found is not None:
            pairs.append(KvPair(value.name, *found))
    if not pairs:
        return None
    names = {v.name for v in model.graph.inputs}
    return KvCache(
        tuple(pairs),
        input_ids=_named(names, "input_ids"),
        attention_mask=_named(names, "attention_mask"),
        position_ids=_named(names, "position_ids"),
    )


def _named(names: set[str], name: str) -> str | None:
    return name if name in names else None


def _extended_output(value: ir.Value, outputs: dict[int, ir.Value]) -> tuple[str, int] | None:
    """(graph output name, concat axis) when ``value`` is concatenated into a graph output."""
    for node, _ in value.uses():
        if node.op_type in PASS_THROUGH:
            found = _extended_output(node.outputs[0], outputs)
            if found is not None:
                return found
        elif node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
            result = _through_pass_through(node.outputs[0], outputs)
            if result is not None:
                axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
                return result.name, axis % 4
            found = _extended_output(node.outputs[0], outputs)  # a chain of Concats (legacy exports)
            if found is not None:
                return found
    return None


def _through_pass_through(value: ir.Value, outputs: dict[int, ir.Value]) -> ir.Value | None:
    if id(value) in outputs:
        return value
    for node, _ in value.uses():
        if node.op_type in PASS_THROUGH:
            found = _through_pass_through(node.outputs[0], outputs)
            if found is not None:
                return found
    return None


def empty_past(model: ir.Model, pair: KvPair, batch: int, length: int = 0) -> np.ndarray:
    """Zeros shaped like ``pair``'s past input with ``length`` entries on the cache axis."""
    value = next(v for v in model.graph.inputs if v.name == pair.past)
    shape = []
    for axis, dim in enumerate(value.shape):
        if axis == pair.axis:
            shape.append(length)
        elif isinstance(dim, int):
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
        else:
            raise UnsupportedModelError(f"past input {pair.past!r} has a symbolic dim {dim} on axis {axis}: its size is unknown")
    return np.zeros(shape, value.dtype.numpy())


def positions_from_mask(mask: np.ndarray, new: int) -> np.ndarray:
    """Positions of the last ``new`` tokens: the count of real tokens before each, minus one."""
    positions = np.cumsum(mask.astype(np.int64), axis=1) - 1
    return np.maximum(positions, 0)[:, -new:]


def complete_feeds(feeds: Mapping[str, np.ndarray], model: ir.Model, kv: KvCache) -> dict[str, np.ndarray]:
    """``feeds`` plus what a prompt leaves out: empty pasts, and position ids (and an all-ones
    attention mask) over the past and the new tokens. Feeds already given are kept."""
    out = dict(feeds)
    if kv.input_ids is None or kv.input_ids not in out:
        return out
    ids = np.asarray(out[kv.input_ids])
    batch, new = ids.shape[0], ids.shape[-1]
    for pair in kv.pairs:
        if pair.past not in out:
            out[pair.past] = empty_past(model, pair, batch)
    past = np.asarray(out[kv.pairs[0].past]).shape[kv.pairs[0].axis]
    if kv.attention_mask is not None and kv.attention_mask not in out:
        out[kv.attention_mask] = np.ones((batch, past + new), np.int64)
    if kv.position_ids is not None and kv.position_ids not in out:
        mask = out.get(kv.attention_mask) if kv.attention_mask else None
        mask = np.ones((batch, past + new), np.int64) if mask is None else np.asarray(mask)
        out[kv.position_ids] = positions_from_mask(mask, new)
    return out
