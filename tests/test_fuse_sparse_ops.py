"""FuseSparseOps: annotated layers and their epilogues fused into ai.sparc SparseLinear, run and exported."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from tiny_models import seeded, unrolled_rnn
from torch import nn

import sparc
from sparc.algorithms.sparsity import ANNOTATION_KEY
from sparc.capture import capture_torch
from sparc.cli import main
from sparc.ir_utils import copy_model
from sparc.ops import has_sparc_ops, lower_to_standard, sparse_linear
from sparc.passes import BlockSparsity, FuseSparseOps, NMSparsity, UnstructuredSparsity
from sparc.runtime import OrtRunner


class Epilogues(nn.Module):
    """Five linear layers, each followed by a different epilogue."""

    def __init__(self, width=32):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(5))

    def forward(self, x):
        x = torch.nn.functional.silu(self.layers[0](x))
        x = torch.nn.functional.gelu(self.layers[1](x), approximate="tanh")
        x = torch.relu(self.layers[2](x))
        x = torch.sigmoid(self.layers[3](x))
        return self.layers[4](x)


class SharedIntermediate(nn.Module):
    """The linear output is read by the activation and by the residual add."""

    def __init__(self, width=32):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        y = self.fc(x)
        return self.head(torch.relu(y) + y)


def _capture(module, x):
    return capture_torch(module, (torch.from_numpy(x),), None)


def _run(model, x):
    return OrtRunner(model).run({model.graph.inputs[0].name: x})[model.graph.outputs[0].name]


def _evaluate_reference(model, x):
    """The model's output computed only from SparseLinear's numpy reference (a chain)."""
    values = {model.graph.inputs[0].name: x}
    for node in model.graph:
        assert sparse_linear.is_sparse_linear(node), node.op_type
        bias = node.inputs[4].const_value.numpy() if node.inputs[4] is not None else None
        attrs = sparse_linear.attributes(node)
        values[node.outputs[0].name] = sparse_linear.reference(
            values[node.inputs[0].name], sparse_linear.node_weight(node), bias, attrs["activation"]
        )
    return values[model.graph.outputs[0].name]


SPARSIFIERS = {
    "2:4": lambda: NMSparsity(n=2, m=4, include_outputs=True),
    "3:8": lambda: NMSparsity(n=3, m=8, include_outputs=True),
    "8x2-blocks": lambda: BlockSparsity(block=(8, 2), density=0.4, include_outputs=True),
    "unstructured": lambda: UnstructuredSparsity(density=0.3, include_outputs=True),
}


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("kind", SPARSIFIERS)
def test_fused_reference_equals_the_unfused_subgraph(kind, rank):
    x = np.random.default_rng(0).normal(size=(4, 32) if rank == 2 else (2, 3, 32)).astype(np.float32)
    model = _capture(seeded(Epilogues), x)
    SPARSIFIERS[kind]()(model)
    unfused = _run(model, x)
    fuse = FuseSparseOps()
    fuse(model)
    assert fuse.details["fused"] == 5
    activations = [sparse_linear.attributes(n)["activation"] for n in model.graph]
    assert activations == ["silu", "gelu_tanh", "relu", "sigmoid", "none"]
    np.testing.assert_allclose(_evaluate_reference(model, x), unfused, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(model, x), unfused, rtol=1e-4, atol=1e-5)  # lowered in ORT


def test_fusion_stops_before_an_intermediate_with_other_readers():
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    model = _capture(seeded(SharedIntermediate), x)
    NMSparsity(include_outputs=True)(model)
    expected = _run(model, x)
    FuseSparseOps()(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("SparseLinear") == 2 and "Relu" in ops  # the shared output keeps its readers
    fused_fc = next(n for n in model.graph if n.op_type == "SparseLinear")
    assert sparse_linear.attributes(fused_fc)["activation"] == "none"
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-6)


def test_layers_whose_weight_breaks_the_annotation_are_refused():
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    model = _capture(seeded(SharedIntermediate), x)
    NMSparsity(include_outputs=True)(model)
    fc = next(n for n in model.graph if ANNOTATION_KEY in n.metadata_props)
    weight = fc.inputs[1].const_value.numpy().copy()
    weight[:] = 1.0
    fc.inputs[1].const_value = ir.tensor(weight)
    fuse = FuseSparseOps()
    fuse(model)
    assert fuse.details["fused"] == 1 and "non-zeros" in fuse.details["refused"][0]


def test_layers_whose_compressed_weight_is_not_smaller_are_left_dense():
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    model = _capture(seeded(Epilogues), x)
    UnstructuredSparsity(density=0.8, include_outputs=True)(model)  # CSR: 0.8·(4+2) B > 4 B
    fuse = FuseSparseOps()
    fuse(model)
    assert fuse.details["fused"] == 0 and len(fuse.details["refused"]) == 5
    assert "is not smaller than dense" in fuse.details["refused"][0]


def test_minilm_standard_export_equals_the_annotated_model(minilm_ir, minilm_batches, tmp_path):
    """2:4 + fusion on MiniLM: the standard file is plain ONNX, the sparc file is smaller."""
    compiled = sparc.compile(
        copy_model(minilm_ir), recipe=[NMSparsity(), FuseSparseOps()], calibration=minilm_batches, latency_rounds=0
    )
    assert compiled.report.passes[1].details["fused"] == 36
    annotated = compiled.report.passes[0]
    standard = compiled.export(tmp_path / "standard.onnx")
    packed = compiled.export(tmp_path / "sparc.onnx", format="sparc")
    proto = onnx.load(standard)
    assert {op.domain for op in proto.opset_import} <= {"", "ai.onnx"}
    assert sum(ANNOTATION_KEY in {p.key for p in n.metadata_props} for n in proto.graph.node) == 36
    assert packed.stat().st_size < 0.85 * standard.stat().st_size
    batch = minilm_batches[0]
    session = ort.InferenceSession(str(standard))
    np.testing.assert_allclose(session.run(None, batch)[0], compiled(batch), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparc.load(packed)(batch), compiled(batch), rtol=1e-5, atol=1e-5)
    assert annotated.stats.nonzero_params == compiled.report.passes[1].stats.nonzero_params
    assert not has_sparc_ops(lower_to_standard(compiled.model))
    # ONNX Runtime runs the fused layers as dense MatMuls: the report says so next to the stored MACs
    report = compiled.report
    assert report.final.macs < 0.7 * report.original.macs
    assert report.executed_macs == report.original.macs and report.macs_ratio == 1.0
    assert "MACs executed by onnxruntime 1.000x" in str(report)


def test_inspect_shows_patterns_and_flags_violations(minilm_ir, tmp_path, capsys):
    model = copy_model(minilm_ir)
    BlockSparsity(density=0.5)(model)
    path = tmp_path / "blocks.onnx"
    ir.save(model, path)
    assert main(["inspect", str(path)]) == 0
    assert capsys.readouterr().out.count("16x1 blocks, density 0.50 (magnitude) ✓ holds") == 36
    layer = next(n for n in model.graph if ANNOTATION_KEY in n.metadata_props)
    weight = layer.inputs[1].const_value.numpy().copy()
    weight[:, :] = 1.0  # every tile holds non-zeros: far more than half of them
    layer.inputs[1].const_value = ir.tensor(weight)
    ir.save(model, path)
    assert main(["inspect", str(path)]) == 1
    assert "do not satisfy their sparsity annotation" in capsys.readouterr().out


def test_layers_sharing_a_weight_share_one_compressed_copy():
    model, weight = unrolled_rnn(steps=4)
    compiled = sparc.compile(model, recipe=[NMSparsity(), FuseSparseOps()], example_inputs={"x": np.ones((2, 16), np.float32)},
                             latency_rounds=0)
    fused = [n for n in compiled.model.graph if n.op_type == "SparseLinear"]
    assert len(fused) == 4 and len({n.inputs[1] for n in fused}) == 1
    assert compiled.report.final.params < compiled.report.original.params == weight.size
    lowered = lower_to_standard(compiled.model)
    assert len(lowered.graph.initializers) == 1
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(OrtRunner(lowered).run({"x": x})["h3"], OrtRunner(compiled.model).run({"x": x})["h3"],
                               rtol=1e-5, atol=1e-6)
