"""Recovery: Reconstruct reaches the known optimum, keeps masks and removed channels, and
sequential calibration equals one-pass calibration when nothing before a block changed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from tiny_models import MBConv, TinyGPT, seeded

import sparc
from sparc.analysis.linear import find_linear_layers
from sparc.capture import capture_torch
from sparc.errors import PassError
from sparc.eval import datasets, zoo
from sparc.passes import (
    BlockSparsity,
    ChannelCrop,
    Distill,
    RecalibrateNorms,
    Reconstruct,
    SliceRowsColumns,
    UnstructuredSparsity,
)
from sparc.passes.channel_edit import kept_channels
from sparc.torch_runtime import TorchGraph

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
    x = np.concatenate([b["x"] for b in batches[:4]]).astype(np.float64)  # what it trained on: not the
    # validation batch (the last) nor the batch held out for early stopping (the fifth)
    optimum = _least_squares_under_mask(x, dense.astype(np.float64), mask)
    assert np.abs(np.where(mask, dense, 0) - optimum).max() > 0.1  # pruning alone is far from it
    np.testing.assert_allclose(pruned, optimum, atol=5e-3)
    entry = compiled.report.passes[-1]
    assert entry.details["per_block"][0]["loss_after"] < entry.details["per_block"][0]["loss_before"]


def test_reconstruct_keeps_every_zero_and_lowers_the_error(minilm_ir, minilm_batches):
    sparse = BlockSparsity(block=(16, 1), density=0.3, method="magnitude")
    pruned = sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0, recipe=[sparse])
    recovered = sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                              recipe=[sparse, Reconstruct(steps=20, lr=1e-4, eval_every=5)])
    before = {layer.name: layer.weight_kn() for layer in find_linear_layers(pruned.model.graph)}
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
    assert recovered.report.passes[-1].error.mean_rel < pruned.report.passes[-1].error.mean_rel


@pytest.fixture(scope="module")
def mnist_cropped():
    """The MNIST CNN with 70% of its channels cropped; calibration and held-out digits."""
    mnist = zoo.mnist_cnn()
    digits, labels = datasets.mnist_digits()  # sorted by class: take every k-th digit
    calib = mnist.batches(digits[1::16][:512], 64)
    model = capture_torch(mnist.module, zoo.torch_inputs(calib[0]), mnist.dynamic_axes)
    cropped = sparc.compile(model, calibration=calib, recipe=[ChannelCrop(ratio=0.7)], latency_rounds=0)
    return model, cropped, calib, mnist.batches(digits[::8][:1000], 250), labels[::8][:1000]


def _accuracy(compiled, batches, labels) -> float:
    return float(np.mean(np.concatenate([compiled(b["image"]) for b in batches]).argmax(1) == labels))


def _shapes(model) -> dict:
    return {name: value.const_value.shape for name, value in model.graph.initializers.items()}


@pytest.mark.parametrize("recovery", [Reconstruct(steps=300, lr=1e-3, batch_size=16),
                                      Distill(steps=300, lr=1e-3, batch_size=16)],
                         ids=["Reconstruct", "Distill"])
def test_recovery_keeps_removed_channels_removed(mnist_cropped, recovery):
    """After a channel crop, shapes stay as cropped and accuracy on held-out digits does not drop."""
    model, cropped, calib, test, labels = mnist_cropped
    recovered = sparc.compile(model, calibration=calib, latency_rounds=0, recipe=[ChannelCrop(ratio=0.7), recovery])
    assert _shapes(recovered.model) == _shapes(cropped.model)
    assert _accuracy(recovered, test, labels) > _accuracy(cropped, test, labels) + 0.05  # 0.81 -> 0.91
    assert recovered.report.passes[-1].modified


def _tiny_gpt_and_batches():
    import torch

    module = seeded(TinyGPT)
    batches = [{"input_ids": RNG.integers(0, 97, (8, 16)).astype(np.int64)} for _ in range(6)]
    model = capture_torch(module, (torch.from_numpy(batches[0]["input_ids"]),), {"input_ids": {0: "b", 1: "s"}})
    return model, batches


def test_reconstruct_after_slicing_fits_in_the_sliced_basis():
    """With the shared rotation, each block's target is the original hidden state rotated and
    sliced (x·Q[:, :k], fitted exactly at the first block's input); the error goes down."""
    model, batches = _tiny_gpt_and_batches()
    sliced = SliceRowsColumns(ratio=0.5)
    errors = [sparc.compile(model, calibration=batches, recipe=recipe, latency_rounds=0).report.passes[-1]
              for recipe in ([sliced], [sliced, Reconstruct(steps=100, lr=3e-3, batch_size=8)])]
    assert errors[1].details["blocks"] == 2
    losses = [(b["loss_before"], b["loss_after"]) for b in errors[1].details["per_block"]]
    assert all(after <= before for before, after in losses) and any(after < before for before, after in losses)
    assert errors[1].error.mean_rel < errors[0].error.mean_rel


def test_reconstruct_refuses_per_layer_rotations():
    model, batches = _tiny_gpt_and_batches()
    with pytest.raises(PassError, match="per-layer rotations"):
        sparc.compile(model, calibration=batches, latency_rounds=0,
                      recipe=[SliceRowsColumns(ratio=0.25, rotation="per_layer"), Reconstruct(steps=2)])


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
    assert results[0].report.passes[-1].details["calibration"] == "sequential, block by block: 6 groups"
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


def _mbconv_and_images():
    import torch

    module = seeded(MBConv)
    data = [{"x": RNG.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return capture_torch(module, {"x": torch.from_numpy(data[0]["x"])}, {"x": {0: "batch"}}), data


def test_recalibrate_norms_changes_nothing_on_an_uncropped_model():
    """Matching the original's moments on the same data gives back the original statistics."""
    model, data = _mbconv_and_images()
    compiled = sparc.compile(model, calibration=data, recipe=[RecalibrateNorms()], latency_rounds=0)
    assert compiled.report.passes[-1].details == {"recalibrated": 5, "kind": "BatchNormalization running statistics"}
    assert compiled.report.passes[-1].error.max_rel < 1e-4


def _norm_output_moments(model, data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{BatchNorm name: per-channel mean and std of its output over ``data``}."""
    import torch

    norms = [n for n in model.graph if n.op_type == "BatchNormalization"]
    graph = TorchGraph(model.graph)
    with torch.no_grad():
        runs = [graph.evaluate([n.outputs[0] for n in norms], {model.graph.inputs[0]: b["x"]}) for b in data]
    moments = {}
    for i, node in enumerate(norms):
        flat = torch.cat([r[i] for r in runs]).transpose(0, 1).reshape(runs[0][i].shape[1], -1).double()
        kept = kept_channels(node.outputs[0])
        moments[node.name] = (flat.mean(1).numpy(), flat.std(1, unbiased=False).numpy(), kept)
    return moments


def test_recalibrate_norms_after_a_crop_matches_the_original_moments():
    """Each BatchNorm's output has the original's per-channel mean and std on the calibration
    data (on the channels the crop kept); without it, they are off."""
    model, data = _mbconv_and_images()
    calibrated = data[:3]  # the compile holds the last batch out for validation
    original = _norm_output_moments(model, calibrated)
    crop = ChannelCrop(ratio=0.5, round_to=1)
    off = []
    for recipe in ([crop], [crop, RecalibrateNorms()]):
        compiled = sparc.compile(model, calibration=data, recipe=recipe, latency_rounds=0)
        off.append([])
        for name, (mean, std, kept) in _norm_output_moments(compiled.model, calibrated).items():
            index = kept[1] if kept is not None else slice(None)
            want_mean, want_std = original[name][0][index], original[name][1][index]
            if not (np.allclose(mean, want_mean, atol=1e-3) and np.allclose(std, want_std, rtol=1e-3, atol=1e-3)):
                off[-1].append(name)
    assert len(off[0]) >= 2 and off[1] == [], off


def test_recalibrate_norms_refits_folded_layers(mnist_cropped):
    """The MNIST CNN has no BatchNorm: its cropped Conv/Gemm layers get the per-channel affine."""
    model, cropped, calib, test, labels = mnist_cropped
    recovered = sparc.compile(model, calibration=calib, latency_rounds=0, recipe=[ChannelCrop(ratio=0.7), RecalibrateNorms()])
    assert recovered.report.passes[-1].details["kind"] == "folded per-channel scale and shift"
    assert recovered.report.passes[-1].details["recalibrated"] == 4  # both convs, both linear layers
    assert _accuracy(recovered, test, labels) >= _accuracy(cropped, test, labels)


@pytest.mark.long
def test_channel_crop_calibrates_block_by_block(minilm_ir, minilm_batches):
    """Block 0's heads and FFN units are chosen from the same statistics either way; later
    blocks see the cropped ones before them."""
    crops = [sparc.compile(minilm_ir, calibration=minilm_batches, latency_rounds=0,
                           recipe=[ChannelCrop(ratio=0.25, importance="activation", sequential=flag)])
             .report.passes[-1].details for flag in (True, False)]
    assert crops[0]["calibration"] == "sequential, 6 blocks"
    assert crops[1]["calibration"] == "one pass (sequential=False)"
    assert len(crops[0]["pruned"]) == len(crops[1]["pruned"]) == 12  # heads and FFN of 6 blocks
    block0 = [p for p in crops[1]["pruned"] if ".0." in p.split(":")[0]]
    assert block0 and all(p in crops[0]["pruned"] for p in block0)
