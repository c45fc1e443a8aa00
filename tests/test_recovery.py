"""Recovery: Reconstruct reaches the known optimum, keeps masks and removed channels, and
sequential calibration equals one-pass calibration when nothing before a block changed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import sparc
from sparc.analysis.linear import find_linear_layers
from sparc.capture import capture_torch
from sparc.errors import PassError
from sparc.eval import datasets, zoo
from sparc.passes import BlockSparsity, ChannelCrop, Reconstruct, SliceRowsColumns, UnstructuredSparsity

pytest.importorskip("torch")

RNG = np.random.default_rng(0)


def _linear_model(weight: np.ndarray) -> ir.Model:
    """y = x · W with W [in, out] an initializer."""
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        initializer=[onnx.numpy_helper.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _least_squares_under_mask(x: np.ndarray, dense: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per output column j: argmin over w supported on mask[:, j] of ‖x w − x dense[:, j]‖²."""
    solution = np.zeros_like(dense, dtype=np.float64)
    for j in range(dense.shape[1]):
        support = mask[:, j]
        solution[support, j] = np.linalg.lstsq(x[:, support], x @ dense[:, j], rcond=None)[0]
    return solution


def test_reconstruct_reaches_the_least_squares_optimum():
    dense = RNG.standard_normal((8, 4)).astype(np.float32)
    mixing = np.eye(8) + 0.8 * RNG.standard_normal((8, 8))  # correlated inputs: the masked optimum moves
    batches = [{"x": (RNG.standard_normal((64, 8)) @ mixing).astype(np.float32)} for _ in range(6)]
    compiled = sparc.compile(
        _linear_model(dense), calibration=batches, latency_rounds=0,
        recipe=[UnstructuredSparsity(density=0.5, include_outputs=True),
                Reconstruct(steps=3000, lr=3e-3, batch_size=64, eval_every=100, patience=5)],
    )
    pruned = compiled.model.graph.initializers["w"].const_value.numpy()
    mask = pruned != 0
    assert mask.sum() == 16
    x = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    optimum = _least_squares_under_mask(x, dense.astype(np.float64), mask)
    np.testing.assert_allclose(pruned, optimum, atol=2e-3)
    entry = compiled.report.passes[-1]
    assert entry.details["per_block"][0]["loss_after"] < entry.details["per_block"][0]["loss_before"]


@pytest.fixture(scope="module")
def minilm_sparse(minilm_ir, minilm_batches):
    return sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                         recipe=[BlockSparsity(block=(16, 1), density=0.3, method="magnitude")])


def test_reconstruct_keeps_every_zero_and_lowers_the_error(minilm_sparse, minilm_batches):
    recovered = sparc.compile(minilm_sparse.model, calibration=minilm_batches, latency_rounds=0,
                              recipe=[Reconstruct(steps=20, lr=1e-4, eval_every=5)])
    before = {layer.name: layer.weight_kn() for layer in find_linear_layers(minilm_sparse.model.graph)}
    after = {layer.name: layer.weight_kn() for layer in find_linear_layers(recovered.model.graph)}
    changed = 0
    for name, weight in before.items():
        assert after[name].shape == weight.shape
        np.testing.assert_array_equal(after[name] == 0, weight == 0, err_msg=name)
        changed += not np.array_equal(after[name], weight)
    assert changed >= 30  # the 36 sparse layers of 6 blocks, each block improved
    entry = recovered.report.passes[-1]
    assert entry.details["blocks"] == 6
    assert all(b["loss_after"] < b["loss_before"] for b in entry.details["per_block"])


def test_reconstruct_keeps_removed_channels_removed():
    """After a channel crop, shapes stay as cropped and accuracy on held-out digits does not drop."""
    mnist = zoo.mnist_cnn()
    digits, labels = datasets.mnist_digits()
    calib = mnist.batches(digits[4000:4512], 64)
    model = capture_torch(mnist.module, zoo.torch_inputs(calib[0]), mnist.dynamic_axes)
    cropped = sparc.compile(model, calibration=calib, recipe=[ChannelCrop(ratio=0.7)], latency_rounds=0)
    recovered = sparc.compile(cropped.model, calibration=calib, latency_rounds=0,
                              recipe=[Reconstruct(steps=60, lr=1e-3, batch_size=32, eval_every=10)])
    shapes = lambda m: {n: v.const_value.shape for n, v in m.graph.initializers.items()}  # noqa: E731
    assert shapes(recovered.model) == shapes(cropped.model)
    test = mnist.batches(digits[:1000], 250)
    accuracy = lambda c: np.mean(np.concatenate([c(b["image"]) for b in test]).argmax(1) == labels[:1000])  # noqa: E731
    assert accuracy(recovered) >= accuracy(cropped)


def test_reconstruct_refuses_a_sliced_hidden_state(minilm_ir, minilm_batches):
    with pytest.raises(PassError, match="Reconstruct fits blocks whose output keeps its shape"):
        sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                      recipe=[SliceRowsColumns(ratio=0.25), Reconstruct(steps=2)])


def _weights(model) -> dict[str, np.ndarray]:
    return {layer.name: layer.weight_kn() for layer in find_linear_layers(model.graph)}


def test_sequential_equals_one_pass_when_nothing_changes(minilm_ir, minilm_batches):
    """At density 1, SparseGPT changes no weight: both calibrations see the same model."""
    results = [
        sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                      recipe=[BlockSparsity(block=(16, 1), density=1.0, method="sparsegpt", sequential=flag)])
        for flag in (True, False)
    ]
    sequential, one_pass = (_weights(r.model) for r in results)
    for name in one_pass:
        np.testing.assert_allclose(sequential[name], one_pass[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert results[0].report.passes[-1].details["calibration"] == "sequential, 6 groups"
    assert results[1].report.passes[-1].details["calibration"] == "one pass"


def test_sequential_calibration_sees_the_compressed_blocks(minilm_ir, minilm_batches):
    """At density 0.5 the later blocks' statistics differ, so their weights do; block 0's do not."""
    sequential, one_pass = (
        _weights(sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                               recipe=[UnstructuredSparsity(density=0.5, method="wanda", sequential=flag)]).model)
        for flag in (True, False)
    )
    first, last = sorted(one_pass)[0], sorted(one_pass)[-1]
    assert ".0." in first and ".5." in last, (first, last)
    np.testing.assert_array_equal(sequential[first], one_pass[first])
    assert not np.array_equal(sequential[last], one_pass[last])
