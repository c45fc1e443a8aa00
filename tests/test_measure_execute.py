"""Running models with exposed values (sparc.measure.execute) and streamed statistics (sparc.measure.reducers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import MLP, seeded

from sparc.analysis.linear import find_linear_layers
from sparc.capture import capture
from sparc.data import as_calibration
from sparc.measure.execute import collect
from sparc.measure.reducers import ChannelStats, Gram


@pytest.fixture(scope="module")
def mlp():
    module = seeded(MLP)
    return module, capture(module, example_inputs=(torch.randn(2, 16),), dynamic_axes={"x": [0]})


def test_gram_and_channel_stats_stream_exactly(mlp):
    module, model = mlp
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((n, 16)).astype(np.float32)} for n in (3, 5, 7)]
    hidden = find_linear_layers(model.graph)[1].input.name  # input of fc2 = relu(fc1(x))
    gram, stats = Gram(), ChannelStats()
    collect(model, {hidden: [gram, stats]}, as_calibration(batches, model))
    with torch.no_grad():
        rows = np.concatenate(
            [torch.relu(module.fc1(torch.from_numpy(b["x"]))).numpy() for b in batches]
        ).astype(np.float64)
    np.testing.assert_allclose(gram.matrix, rows.T @ rows, rtol=1e-5, atol=1e-5)
    assert gram.rows == stats.rows == 15
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.l2, np.linalg.norm(rows, axis=0), rtol=1e-5)


def test_batches_run_in_parts_when_exposed_values_exceed_the_budget(minilm, minilm_ir, monkeypatch):
    """With a tiny budget each sample runs alone; sums over rows (and the padding mask) agree
    with whole-batch runs, and peak activations no longer scale with the batch size."""
    import sparc.measure.execute as calibrate

    layer = find_linear_layers(minilm_ir.graph)[0]
    texts = ["short", "a somewhat longer sentence than the first", "three", "and a fourth one here"]
    data = as_calibration([minilm.make_inputs(texts, seq=32)], minilm_ir)
    mask = lambda feeds: feeds["attention_mask"]  # noqa: E731
    whole, whole_stats = Gram(row_mask=mask), ChannelStats(mask)
    collect(minilm_ir, {layer.input.name: [whole, whole_stats]}, data)

    runs = []
    original_update = calibrate._update
    monkeypatch.setattr(calibrate, "_update",
                        lambda r, t, f, d: runs.append(len(f["input_ids"])) or original_update(r, t, f, d))
    monkeypatch.setattr(calibrate, "EXPOSED_BYTES", 1)
    parts, parts_stats = Gram(row_mask=mask), ChannelStats(mask)
    collect(minilm_ir, {layer.input.name: [parts, parts_stats]}, data)
    assert runs == [1, 1, 1, 1]
    assert parts.rows == whole.rows == int(data.batches[0]["attention_mask"].sum())
    np.testing.assert_allclose(parts.matrix, whole.matrix, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts_stats.sq_sum, whole_stats.sq_sum, rtol=1e-5)


def test_row_mask_leaves_out_padding(minilm, minilm_ir):
    layer = find_linear_layers(minilm_ir.graph)[0]
    masked, full = Gram(row_mask=lambda feeds: feeds["attention_mask"]), Gram()
    batch = minilm.make_inputs(["short", "a somewhat longer sentence than the first"], seq=32)
    collect(minilm_ir, {layer.input.name: [masked, full]}, as_calibration([batch], minilm_ir))
    assert masked.rows == int(batch["attention_mask"].sum()) < full.rows == 64
