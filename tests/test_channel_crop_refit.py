"""ChannelCrop's calibration and refits on graphs shaped like EfficientNet-Lite0's.

Regressions of the issue "``reconstruct`` crashes in ORT":
- a model captured without a dynamic batch axis only runs whole batches, yet calibration ran
  it on one-sample slices (the shape probe in ``ChannelCrop``, the per-sample parts of
  ``sparc.measure.execute.collect``);
- a value read by a non-refittable consumer (3×3 conv) listed before a refittable one (1×1
  conv) had no XᵀX collected, so the refit of the 1×1 conv failed.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from tiny_models import MBConv, seeded
from torch import nn

import sparc
from sparc.capture import capture_torch
from sparc.eval import zoo
from sparc.passes import ChannelCrop

REFINED = {"importance": "activation", "bias_compensation": True, "reconstruct": True}


class SharedInput(nn.Module):
    """One value read by a 3×3 conv (not refittable) and by a 1×1 conv (refittable)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.wide = nn.Conv2d(32, 16, 3, padding=1)
        self.point = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head((self.wide(h) + self.point(h)).mean(dim=(2, 3)))


def _images(batch, count=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 3, size, size)).astype(np.float32)} for _ in range(count)]


def test_refined_crop_of_a_fixed_batch_mbconv():
    data = _images(4)
    module = seeded(MBConv)
    compiled = sparc.compile(module, example_inputs={"x": torch.from_numpy(data[0]["x"])}, calibration=data,
                             recipe=[ChannelCrop(ratio=0.25, round_to=1, **REFINED)], latency_rounds=0)
    assert compiled.model.graph.inputs[0].shape[0] == 4  # the batch stayed fixed
    rounds = compiled.report.passes[-1].details["refinement"]
    assert any(choice["reconstruct"] < choice["none"] for choice in rounds)
    assert compiled.report.final.params < compiled.report.original.params
    want = module(torch.from_numpy(data[0]["x"])).detach().numpy()
    assert compiled(data[0]).shape == want.shape


def test_fixed_batch_probe_without_shape_information():
    """Intermediate shapes unknown: the pass runs the model to read them, on a whole batch."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(
        nodes, "fixed_batch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = _images(4, size=8)
    compiled = sparc.compile(model, calibration=data, recipe=[ChannelCrop(ratio=0.5, round_to=1)], latency_rounds=0)
    assert compiled.report.passes[-1].details["pruned"] == ["w1: 16 -> 8"]
    assert compiled(data[0]).shape == (4, 8, 8, 8)


def test_refit_of_a_1x1_conv_sharing_its_input_with_a_3x3_conv():
    model = capture_torch(seeded(SharedInput), (torch.randn(2, 3, 8, 8),), {"x": {0: "batch"}})
    data = _images(16, size=8)
    compiled = sparc.compile(model, calibration=data, latency_rounds=0,
                             recipe=[ChannelCrop(ratio=0.5, round_to=1, reconstruct=True)])
    details = compiled.report.passes[-1].details
    assert "stem: 32 -> 16" in details["pruned"]
    assert any(choice["reconstruct"] < choice["none"] for choice in details["refinement"])


def test_efficientnet_lite0_fixed_batch_refined_crop():
    """The issue's reproduction: captured without dynamic axes, calibration batches of 4."""
    net = zoo.efficientnet_lite0()
    images = np.random.default_rng(0).integers(0, 255, (16, 224, 224, 3), dtype=np.uint8)
    calib = net.batches(images, 4)
    compiled = sparc.compile(net.module, example_inputs=zoo.torch_inputs(calib[0]), calibration=calib,
                             recipe=[ChannelCrop(ratio=0.1, **REFINED)], latency_rounds=0)
    rounds = compiled.report.passes[-1].details["refinement"]
    assert any(c["chosen"] != "none" and c[c["chosen"]] < c["none"] for c in rounds)
    assert compiled.report.final.macs < compiled.report.original.macs
    assert compiled(calib[0]).shape == (4, 1000)


def test_channels_read_by_a_conv_transpose_are_cut_without_compensation():
    """A DBNet-style head (Conv → ReLU → ConvTranspose, as PaddleOCR's detector has): the
    removed channels' mean contribution depends on the output position, so the ConvTranspose
    is cut without a bias compensation instead of failing."""
    module = seeded(nn.Sequential, nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2))
    batches = [{"input": np.random.default_rng(i).standard_normal((4, 3, 8, 8)).astype(np.float32)} for i in range(3)]
    model = capture_torch(module, {"input": torch.from_numpy(batches[0]["input"])})
    compiled = sparc.compile(model, recipe=[ChannelCrop(ratio=0.5, round_to=1, min_channels=1, bias_compensation=True,
                                                         reconstruct=False)],
                             calibration=batches, latency_rounds=0)
    assert compiled.report.passes[0].modified and compiled.report.final.params < compiled.report.original.params
