"""ActivationSparsity (thresholded linear-layer inputs), its histogram reducer, and the TVM input-sparse kernel."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnxruntime
import pytest
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tiny_models import MLP, TinyGPT, seeded

import sparc
from sparc.backends.tvm import TvmRunner, make_target
from sparc.backends.tvm.input_sparse import InputSparseLayout, input_sparse_kernel, pack, padded_columns
from sparc.capture import capture_torch
from sparc.errors import PassError, RecipeError, SparcError, StructureError
from sparc.eval import datasets
from sparc.measure.execute import exposing_runner
from sparc.measure.magnitudes import MagnitudeHistogram
from sparc.passes import ActivationSparsity, BlockSparsity, FuseSparseOps, build_pass
from sparc.passes.activation_sparsity import ANNOTATION_KEY
from sparc.runtime import OrtRunner

TARGET = make_target("cpu", 2)


def _wheres(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Where" and ANNOTATION_KEY in n.metadata_props]


def _threshold(where: ir.Node) -> float:
    return json.loads(where.metadata_props[ANNOTATION_KEY])["threshold"]


# -- the histogram ------------------------------------------------------------------------------


def test_histogram_quantile_is_within_a_bin_and_adds_over_parts():
    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, size=(50, 7, 64)) * 0.1).astype(np.float32)
    x[0, 0, :10] = 0.0
    whole, parts = MagnitudeHistogram(), MagnitudeHistogram()
    whole.update(x, {})
    for part in np.array_split(x, 3):
        parts.update(part, {})
    np.testing.assert_array_equal(whole.counts, parts.counts)
    for fraction in (0.1, 0.4, 0.5, 0.9):
        t = whole.threshold(fraction)
        assert t == pytest.approx(np.quantile(np.abs(x), fraction), rel=4e-3)
        assert whole.fraction_below(t) == pytest.approx(fraction, abs=1e-6)
        assert np.mean(np.abs(x) < t) == pytest.approx(fraction, abs=2e-3)
    assert whole.threshold(0.0) == 0.0


def test_histogram_leaves_out_padded_rows():
    x = np.ones((2, 3, 4), np.float32)
    x[1, 2] = 100.0  # a padding token
    histogram = MagnitudeHistogram(lambda feeds: feeds["attention_mask"])
    histogram.update(x, {"attention_mask": np.array([[1, 1, 1], [1, 1, 0]])})
    assert histogram.total == 20 and histogram.threshold(0.99) < 1.01


# -- the pass on a graph whose rewrite is known ---------------------------------------------------


def _two_layer_graph():
    """x → MatMul A → Tanh → r; r → MatMul B and MatMul C (one input, shared); out = B + C."""
    rng = np.random.default_rng(1)
    weights = {name: rng.normal(size=shape).astype(np.float32) for name, shape in
               (("A", (8, 16)), ("B", (16, 4)), ("C", (16, 4)))}
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"], name="a"), helper.make_node("Tanh", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["yb"], name="b"),
             helper.make_node("MatMul", ["r", "C"], ["yc"], name="c"), helper.make_node("Add", ["yb", "yc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])), weights


def test_shared_inputs_get_one_where_at_the_calibrated_quantile():
    model, weights = _two_layer_graph()
    rng = np.random.default_rng(2)
    batches = [{"x": rng.normal(size=(64, 8)).astype(np.float32)} for _ in range(3)]
    sparsity = ActivationSparsity(fraction=0.3, calibration=batches, rounds=1)
    sparsity(model)
    wheres = _wheres(model)
    assert len(wheres) == 2 and sparsity.details["layers"] == 3 and sparsity.details["inputs"] == 2
    readers = {n.name: n.inputs[0] for n in model.graph if n.op_type == "MatMul"}
    assert readers["b"] is readers["c"] is wheres[1].outputs[0] and readers["a"] is wheres[0].outputs[0]
    x = np.concatenate([b["x"] for b in batches])
    r = np.tanh(x @ weights["A"])  # a's input is not sparsified in round 1 of 1: r as the dense model has it
    for where, values in zip(wheres, (x, r)):
        assert _threshold(where) == pytest.approx(np.quantile(np.abs(values), 0.3), rel=4e-3)
        assert json.loads(where.metadata_props[ANNOTATION_KEY])["calibrated"] == pytest.approx(0.3, abs=1e-3)
    for name in "abc":
        node = next(n for n in model.graph if n.name == name)
        assert json.loads(node.metadata_props[ANNOTATION_KEY])["fraction"] == 0.3
    assert sparsity.details["thresholds"][1].startswith("B / C: t=")  # layers named after their weights


def test_the_exported_model_runs_in_stock_onnx_runtime_as_numpy_computes_it(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 16)).astype(np.float32)
    mlp = seeded(MLP)
    model = capture_torch(mlp, (torch.from_numpy(x),), {"x": {0: "batch"}})
    compiled = sparc.compile(model, calibration=[{"x": x}], latency_rounds=0,
                             recipe=[ActivationSparsity(fraction=0.5, include_outputs=True)])
    path = compiled.export(tmp_path / "mlp.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t1, t2 = (_threshold(w) for w in _wheres(ir.load(path)))
    feeds = rng.normal(size=(5, 16)).astype(np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: feeds})
    w1, b1, w2, b2 = (p.detach().numpy() for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias))
    hidden = np.maximum(np.where(np.abs(feeds) < t1, 0, feeds) @ w1.T + b1, 0)
    np.testing.assert_allclose(got, np.where(np.abs(hidden) < t2, 0, hidden) @ w2.T + b2, rtol=1e-5, atol=1e-5)
    assert np.mean(np.abs(feeds) < t1) == pytest.approx(0.5, abs=0.15)


# -- a real model: held-out fractions -------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.4, 0.6])
def test_minilm_thresholds_hold_their_fraction_on_held_out_text(minilm, minilm_ir, fraction):
    """Calibrated on 32 Lee background stories, measured on 32 Lee corpus documents (other text)."""
    calibration = minilm.batches(datasets.lee_background()[:32], 8, seq=64)
    held_out = minilm.batches(datasets.lee_documents()[:32], 8, seq=64)
    model = minilm_ir.clone()
    sparsity = ActivationSparsity(fraction=fraction, calibration=calibration, threads=2)
    sparsity(model)
    wheres = _wheres(model)
    assert sparsity.details["layers"] == 36 and len(wheres) == 24  # q/k/v share one input per block
    runner = exposing_runner(model, [w.outputs[0].name for w in wheres], threads=2)
    zeros, entries = np.zeros(len(wheres)), np.zeros(len(wheres))
    for feeds in held_out:
        outputs = runner.run(feeds)
        tokens = feeds["attention_mask"].astype(bool)
        for i, where in enumerate(wheres):
            values = outputs[where.outputs[0].name][tokens]
            zeros[i] += np.count_nonzero(values == 0)
            entries[i] += values.size
    np.testing.assert_allclose(zeros / entries, fraction, atol=0.02)


# -- the input-sparse kernel ----------------------------------------------------------------------


def _kernel_output(x, weight_kn, bias, threshold, activation, layout, tasks):
    rows, k_in = x.shape
    tensors = pack(weight_kn, layout)
    func = input_sparse_kernel(rows, k_in, weight_kn.shape[1], threshold, activation, layout, tensors, tasks=tasks)
    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    cols = padded_columns(weight_kn.shape[1])
    padded_bias = np.zeros(cols, np.float32)
    padded_bias[: len(bias)] = bias
    y = tvm.runtime.tensor(np.zeros((rows, cols), np.float32))
    library["main"](tvm.runtime.tensor(x), *map(tvm.runtime.tensor, tensors), tvm.runtime.tensor(padded_bias), y)
    return y.numpy()[:, : weight_kn.shape[1]]


ACTIVATIONS = {"none": lambda y: y, "silu": lambda y: y / (1 + np.exp(-y)), "relu": lambda y: np.maximum(y, 0)}


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("layout,activation,tasks,n_out", [("rows", "none", 1, 300), ("rows", "silu", 2, 40),
                                                           ("blocks", "relu", 2, 40)])
def test_input_sparse_kernel_matches_numpy(rows, layout, activation, tasks, n_out):
    """K not a multiple of 16, N padded to 16s; rows of 40 outputs are prefetched, of 300 not."""
    rng = np.random.default_rng(rows)
    k_in = 100
    x = rng.normal(size=(rows, k_in)).astype(np.float32)
    x[:, 7] = 0.0  # an input zero in every row
    weight = rng.normal(size=(k_in, n_out)).astype(np.float32)
    if layout == "blocks":
        weight *= np.repeat(rng.random((k_in, -(-n_out // 16))) < 0.5, 16, axis=1)[:, :n_out]
    bias = rng.normal(size=n_out).astype(np.float32)
    threshold = float(np.quantile(np.abs(x), 0.5))
    expected = ACTIVATIONS[activation](np.where(np.abs(x) < threshold, 0, x) @ weight + bias)
    got = _kernel_output(x, weight, bias, threshold, activation, InputSparseLayout(layout), tasks)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_an_input_below_the_threshold_everywhere_gives_the_bias():
    bias = np.arange(20, dtype=np.float32)
    got = _kernel_output(np.full((2, 30), 0.1, np.float32), np.ones((30, 20), np.float32), bias, 0.5, "none",
                         InputSparseLayout("rows"), 2)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (2, 20)))


# -- TVM: the compiled model, alone and with weight sparsity --------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt():
    rng = np.random.default_rng(4)
    batches = [{"input_ids": rng.integers(0, 97, size=(4, 16)).astype(np.int64)} for _ in range(3)]
    model = capture_torch(seeded(TinyGPT), {"input_ids": torch.from_numpy(batches[0]["input_ids"])},
                          {"input_ids": {0: "batch", 1: "seq"}})
    return model, batches


def _tvm_agrees_with_ort(model, feeds) -> list[str]:
    runner = TvmRunner(model, threads=2, choose_layouts=False)  # layouts by bytes: no timing in a test
    ours, theirs = runner.run(feeds), OrtRunner(model).run(feeds)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-4)
    return [choice.summary() for choice in runner.choices]


def test_tvm_runs_thresholded_layers_with_the_input_sparse_kernel(tiny_gpt):
    model, batches = tiny_gpt
    compiled = sparc.compile(model, calibration=batches, recipe=[ActivationSparsity(fraction=0.6)], latency_rounds=0)
    decode = _tvm_agrees_with_ort(compiled.model, {"input_ids": batches[0]["input_ids"][:1, :2]})  # 2 rows
    assert sum("input-sparse, dense rows" in s for s in decode) == 12 and "97x32 rows 2: dense" in decode[-1]
    prefill = _tvm_agrees_with_ort(compiled.model, {"input_ids": batches[0]["input_ids"][:2, :8]})  # 16 rows
    assert not any("input-sparse" in s for s in prefill)  # the Where stays an elementwise op


@pytest.mark.parametrize("order", ["activations first", "weights first"])
def test_weight_sparsity_in_either_order_then_fusion(tiny_gpt, order):
    model, batches = tiny_gpt
    passes = [ActivationSparsity(fraction=0.5), BlockSparsity(block=(16, 1), density=0.5)]
    recipe = (passes if order == "activations first" else passes[::-1]) + [FuseSparseOps()]
    compiled = sparc.compile(model, calibration=batches, recipe=recipe, latency_rounds=0)
    assert compiled.report.passes[-1].details["fused"] == 12
    fused = [n for n in compiled.model.graph if n.op_type == "SparseLinear"]
    assert all(n.inputs[0].producer().op_type == "Where" and ANNOTATION_KEY in n.metadata_props for n in fused)
    decode = _tvm_agrees_with_ort(compiled.model, {"input_ids": batches[1]["input_ids"][:1, :2]})
    assert sum("input-sparse, 16x1 blocks" in s for s in decode) == 12  # the combined kernel


# -- options and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, "half"])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(RecipeError, match="fraction"):
        ActivationSparsity(fraction=fraction)


def test_no_matching_layer_raises_naming_the_patterns(tiny_gpt):
    model, batches = tiny_gpt
    with pytest.raises(PassError, match=r"no linear layer selected.*\*\.nothing"):
        sparc.compile(model, calibration=batches, recipe=[ActivationSparsity(targets=["*.nothing"])],
                      latency_rounds=0)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    relu = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]))
    with pytest.raises(StructureError, match="no linear layer"):
        ActivationSparsity(calibration=[{"x": np.ones((2, 3), np.float32)}])(relu)


def test_targets_and_skip_select_layers_and_recipes_know_the_pass(tiny_gpt):
    model, batches = tiny_gpt
    sparsity = build_pass("ActivationSparsity", {"fraction": 0.4, "targets": ["blocks.*"], "skip": ["*.up"]})
    compiled = sparc.compile(model, calibration=batches, recipe=[sparsity], latency_rounds=0)
    assert compiled.report.passes[-1].details["layers"] == 10
    with pytest.raises(SparcError, match="unknown option"):
        build_pass("ActivationSparsity", {"density": 0.5})
