"""Canonicalize: exporter-specific forms rewritten into the one form the analyses expect."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from tiny_models import TinyGPT, seeded

import sparc
from sparc.analysis.linear import find_linear_layers
from sparc.analysis.norms import find_norms
from sparc.capture import load_onnx
from sparc.errors import RecipeError
from sparc.passes import Canonicalize, SliceRowsColumns

IDS = np.random.default_rng(0).integers(0, 97, size=(4, 16)).astype(np.int64)


def _legacy_gpt(folding: bool, upgrade: bool = True):
    """TinyGPT as the legacy exporter writes it at opset 14: LayerNorm decomposed and, without
    constant folding, every Linear reading its weight through a Transpose; ``upgrade`` converts
    it to opset 17 (the form of exporters that decompose LayerNorm at any opset)."""
    buffer = io.BytesIO()
    torch.onnx.export(seeded(TinyGPT), (torch.from_numpy(IDS),), buffer, dynamo=False, opset_version=14,
                      do_constant_folding=folding, input_names=["ids"], output_names=["logits"],
                      dynamic_axes={"ids": {0: "batch", 1: "seq"}})
    proto = onnx.load_from_string(buffer.getvalue())
    return load_onnx(onnx.version_converter.convert_version(proto, 17) if upgrade else proto)


def test_legacy_export_gets_fused_norms_and_direct_weights():
    model = _legacy_gpt(folding=False)
    assert not any(n.op_type == "LayerNormalization" for n in model.graph)
    transposes = sum(n.op_type == "Transpose" for n in model.graph)
    step = Canonicalize()
    step(model)
    assert step.details["layer norms fused"] == 5  # 2 blocks × 2 + the final norm
    layers = find_linear_layers(model.graph)
    assert sum(layer.transpose_node is not None for layer in layers) == 1  # the tied head keeps its Transpose
    assert sum(n.op_type == "Transpose" for n in model.graph) == transposes - 12  # q, k, v, o, up, down × 2
    assert [norm.kind for norm in find_norms(model).values()] == ["layer"] * 5


def test_compile_canonicalizes_first_and_reports_it_against_the_original():
    model = _legacy_gpt(folding=False)
    batches = [{"ids": np.random.default_rng(i).integers(0, 97, size=(4, 16)).astype(np.int64)} for i in range(3)]
    compiled = sparc.compile(model, recipe=[SliceRowsColumns(ratio=0.25)], calibration=batches, latency_rounds=0)
    report = compiled.report
    assert report.canonical.name == "Canonicalize" and report.canonical.details["layer norms fused"] == 5
    assert report.canonical.error.max_rel < 1e-4  # lossless, measured against the model as given
    assert [e.name for e in report.passes] == ["SliceRowsColumns"] and report.passes[0].modified
    assert "Canonicalize" in str(report) and report.to_dict()["canonical"]["error"] is not None


def test_canonicalize_false_in_the_recipe_leaves_the_graph_as_exported():
    model = _legacy_gpt(folding=False)
    compiled = sparc.compile(model, recipe={"passes": [], "canonicalize": False}, latency_rounds=0,
                             example_inputs={"ids": IDS})
    assert compiled.report.canonical is None
    assert not any(n.op_type == "LayerNormalization" for n in compiled.model.graph)
    with pytest.raises(RecipeError, match="canonicalize"):
        sparc.compile(model, recipe={"passes": [], "canonicalize": "yes"})


def test_norms_stay_decomposed_where_the_opset_has_no_layer_normalization():
    model = _legacy_gpt(folding=True, upgrade=False)
    step = Canonicalize()
    step(model)
    assert "layer norms fused" not in step.details
    assert [norm.kind for norm in find_norms(model).values()] == ["layer"] * 5  # matched as written


def test_recovery_matches_blocks_against_the_canonical_original():
    """Reconstruct pairs each compressed block with the original's: the original it gets is the
    canonicalized one, so a legacy export's decomposed norms do not make the two differ."""
    model = _legacy_gpt(folding=False)
    batches = [{"ids": np.random.default_rng(i).integers(0, 97, size=(4, 16)).astype(np.int64)} for i in range(3)]
    compiled = sparc.compile(model, recipe=[{"ChannelCrop": {"ratio": 0.25}}, {"Reconstruct": {"steps": 2}}],
                             calibration=batches, latency_rounds=0)
    assert [e.name for e in compiled.report.passes] == ["ChannelCrop", "Reconstruct"]
    assert compiled.report.passes[1].modified
