"""Output error and fidelity per output (sparc.measure.outputs), and their use by the pipeline."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from tiny_models import seeded

import sparc
from sparc.errors import CalibrationError, PassError
from sparc.eval import zoo
from sparc.measure.outputs import OutputError, measure_for, measures_of
from sparc.passes import NMSparsity


def test_each_output_is_relative_to_its_own_scale():
    ids = np.arange(20000, dtype=np.int64).reshape(2, -1)
    embedding = np.full((2, 4), 0.5, np.float32)
    error = OutputError.between([[ids, embedding + 0.05]], [[ids, embedding]], ["ids", "embedding"])
    assert error.max_rel == pytest.approx(0.1)
    ids_diff, embedding_diff = error.outputs
    assert ids_diff.exact and ids_diff.mismatched == 0 and ids_diff.fidelity() == "identical"
    assert embedding_diff.max_rel == pytest.approx(0.1) and embedding_diff.cosine == pytest.approx(1.0)
    assert [o.name for o in error.exceeding(1e-3)] == ["embedding"]


def test_integer_outputs_are_compared_exactly():
    ids = np.arange(6).reshape(2, 3)
    error = OutputError.between([[ids + [[0, 0, 1], [0, 0, 0]]]], [[ids]], ["ids"])
    assert error.outputs[0].mismatched == 1 and error.outputs[0].fidelity() == "1 of 6 differ"
    assert error.exceeding(1.0) and "compared exactly" in error.violations(1.0)
    assert error.max_rel == 0.0  # no float output


def test_cosine_per_row_mean_and_worst():
    want = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = np.array([[1.0, 0.0], [1.0, 1.0]])
    output = OutputError.between([[got]], [[want]], ["h"]).outputs[0]
    assert output.measure == "cosine"
    assert output.min_cosine == pytest.approx(np.sqrt(0.5)) and output.cosine == pytest.approx((1 + np.sqrt(0.5)) / 2)


def test_logits_kl_and_top1_against_a_direct_computation():
    rng = np.random.default_rng(0)
    want = rng.normal(size=(3, 5, 7))
    got = want + rng.normal(scale=0.5, size=want.shape)
    output = OutputError.between([[got]], [[want]], ["logits"], {"logits": "logits"}).outputs[0]
    p = np.exp(want) / np.exp(want).sum(-1, keepdims=True)
    q = np.exp(got) / np.exp(got).sum(-1, keepdims=True)
    assert output.kl == pytest.approx(np.mean(np.sum(p * np.log(p / q), axis=-1)))
    assert output.top1 == pytest.approx(np.mean(want.argmax(-1) == got.argmax(-1)))
    probabilities = OutputError.between([[q]], [[p]], ["p"], {"p": "probabilities"}).outputs[0]
    assert probabilities.kl == pytest.approx(output.kl) and probabilities.top1 == output.top1


def test_measures_are_read_from_real_graphs(minilm_ir):
    assert measures_of(minilm_ir) == {minilm_ir.graph.outputs[0].name: "cosine"}  # normalized embedding
    mnist = zoo.mnist_cnn()
    cnn = sparc.capture.capture(mnist.module, example_inputs=(torch.zeros(1, 1, 28, 28),))
    assert [measure_for(v) for v in cnn.graph.outputs] == ["logits"]  # the classifier's Gemm


def test_softmax_output_and_overrides():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] p, int64[2] k) {
        p = Softmax <axis = -1> (x)
        k = ArgMax <axis = -1, keepdims = 0> (x)
    }
    """)
    assert measures_of(model) == {"p": "probabilities", "k": "exact"}
    assert measures_of(model, {"p": "cosine"})["p"] == "cosine"
    with pytest.raises(CalibrationError, match=r"unknown outputs \['q'\].*unknown measures"):
        measures_of(model, {"q": "cosine", "p": "psnr"})


class WithPassthrough(torch.nn.Module):
    """ids -> (ids, embedding): an integer passthrough beside a unit-scale float output."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(30000, 16)
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

    def forward(self, ids):
        pooled = self.fc2(torch.relu(self.fc1(self.embed(ids)))).mean(1)
        return ids, torch.nn.functional.normalize(pooled, dim=-1)


def test_max_error_is_enforced_on_the_small_output_of_a_legacy_export():
    """The issue's case: a legacy (TorchScript, opset 17) export whose first output passes
    large integer ids through; pooled over outputs, 2:4 sparsity looked lossless."""
    module = seeded(WithPassthrough)
    ids = torch.randint(0, 30000, (4, 12), generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    torch.onnx.export(module, (ids,), buffer, dynamo=False, opset_version=17, input_names=["ids"],
                      output_names=["ids_out", "embedding"], dynamic_axes={"ids": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    batches = [{"ids": np.random.default_rng(i).integers(0, 30000, (4, 12))} for i in range(6)]
    compiled = sparc.compile(model, calibration=batches, recipe=[NMSparsity(method="wanda")], latency_rounds=0)
    ids_out, embedding = compiled.report.error.outputs
    assert ids_out.exact and ids_out.mismatched == 0
    assert embedding.max_rel > 1e-3 and embedding.cosine < 1.0
    assert "| ids_out | int64 |" in compiled.report.to_markdown()
    with pytest.raises(PassError, match=r"max_error=0.001: 'embedding': max relative error"):
        sparc.compile(model, calibration=batches, recipe=[NMSparsity(method="wanda", max_error=1e-3)],
                      latency_rounds=0)
