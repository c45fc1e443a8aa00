"""N:M, block and unstructured sparsity: exact patterns, mask quality, robust SparseGPT."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import unrolled_rnn

import sparc
from sparc.algorithms import owl, sparsegpt
from sparc.algorithms.sparsity import ANNOTATION_KEY, Pattern, annotation, select_mask, verify
from sparc.analysis.linear import find_linear_layers
from sparc.data import as_calibration
from sparc.errors import PassError, RecipeError, SparcError
from sparc.ir_utils import copy_model
from sparc.measure.execute import exposing_runner
from sparc.passes import BlockSparsity, NMSparsity, UnstructuredSparsity

PATTERNS = [
    Pattern("nm", 0.5, 2, 4),
    Pattern("nm", 0.25, 1, 4),
    Pattern("nm", 0.5, 4, 8),
    Pattern("nm", 0.1875, 3, 16),
    Pattern("block", 0.5, block=(16, 1)),
    Pattern("block", 0.3, block=(4, 4)),
    Pattern("block", 0.1, block=(8, 2)),
    Pattern("unstructured", 0.5),
    Pattern("unstructured", 0.05),
]


def _nonzeros_per_group(weight, m):
    rows, cols = weight.shape
    padded = np.zeros((rows, -(-cols // m) * m), bool)
    padded[:, :cols] = weight != 0
    return padded.reshape(rows, -1, m).sum(axis=2)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.describe())
@pytest.mark.parametrize("shape", [(64, 48), (37, 21)])
def test_masks_satisfy_their_pattern_exactly(pattern, shape):
    scores = np.random.default_rng(0).random(shape)
    mask = select_mask(scores, pattern)
    assert mask.shape == shape
    weight = np.where(mask, scores, 0.0)
    assert verify(weight, pattern)[0]
    if pattern.kind == "nm":  # every full group keeps exactly n; a ragged last group at most n
        counts = _nonzeros_per_group(weight, pattern.m)
        full = shape[1] // pattern.m
        assert (counts[:, :full] == pattern.n).all() and (counts <= pattern.n).all()
    elif pattern.kind == "block":
        br, bc = pattern.block
        rows, cols = shape[0] // br * br, shape[1] // bc * bc
        tiles = mask[:rows, :cols].reshape(rows // br, br, cols // bc, bc).sum(axis=(1, 3))
        assert set(np.unique(tiles)) <= {0, br * bc}
    else:
        assert mask.sum() == round(pattern.density * mask.size)


def test_verify_rejects_broken_patterns():
    weight = np.ones((8, 8))
    assert not verify(weight, Pattern("nm", 0.5, 2, 4))[0]
    assert not verify(weight, Pattern("unstructured", 0.5))[0]
    assert not verify(weight, Pattern("block", 0.5, block=(4, 1)))[0]  # all 16 tiles hold non-zeros
    weight[4:] = 0.0  # 8 of 16 tiles kept
    weight[0, 0] = 0.0  # a kept tile may hold zeros (real weights do: SmolLM2's dequantized ones)
    assert verify(weight, Pattern("block", 0.5, block=(4, 1)))[0]
    weight[5, 0] = 1.0  # a non-zero outside the kept tiles
    assert not verify(weight, Pattern("block", 0.5, block=(4, 1)))[0]


def test_annotation_round_trips_and_rejects_garbage():
    pattern = Pattern("block", 0.3, block=(16, 1), method="wanda")
    assert Pattern.from_json(pattern.to_json()) == pattern
    with pytest.raises(SparcError, match="malformed"):
        Pattern.from_json("{not json")
    with pytest.raises(SparcError, match="unknown kind"):
        Pattern.from_json('{"kind": "diagonal", "density": 0.5}')


# -- mask quality on a real layer --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_layer(minilm_ir, minilm_batches):
    """MiniLM layer 0's FFN up-projection (384→1536) and its real inputs X [rows, 384]."""
    layer = next(layer for layer in find_linear_layers(minilm_ir.graph) if "0.intermediate" in layer.name)
    runner = exposing_runner(minilm_ir, [layer.input.name])
    outputs = [runner.run(feeds)[layer.input.name] for feeds in as_calibration(minilm_batches, minilm_ir)]
    x = np.concatenate([o.reshape(-1, layer.in_features) for o in outputs]).astype(np.float64)
    return layer.weight_kn().T.astype(np.float64), x


def _prune(method, weight, x, pattern):
    if method == "sparsegpt":
        return sparsegpt.prune(weight, sparsegpt.factor(x.T @ x / len(x)), pattern)
    scores = np.abs(weight)
    if method == "wanda":
        scores = scores * np.linalg.norm(x, axis=0)[None, :]
    return np.where(select_mask(scores, pattern, per_row=method == "wanda"), weight, 0.0)


@pytest.mark.parametrize(
    "pattern", [Pattern("nm", 0.5, 2, 4), Pattern("unstructured", 0.5), Pattern("block", 0.5, block=(16, 1))],
    ids=lambda p: p.describe(),
)
def test_wanda_and_sparsegpt_beat_magnitude_on_reconstruction(real_layer, pattern):
    """‖X·(W' − W)ᵀ‖² on real MiniLM activations: magnitude > Wanda > SparseGPT."""
    weight, x = real_layer
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = _prune(method, weight, x, pattern)
        assert verify(pruned, pattern)[0]
        errors[method] = float(np.sum((x @ (pruned - weight).T) ** 2))
    assert errors["wanda"] < 0.95 * errors["magnitude"], errors
    assert errors["sparsegpt"] < 0.8 * errors["wanda"], errors


def test_sparsegpt_survives_a_rank_deficient_hessian():
    """Duplicated, dead and collinear inputs make XᵀX singular; no damping at all is asked."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(64, 8))
    x = np.concatenate([base, base, base[:, :4] * 3.0, np.zeros((64, 4))], axis=1)  # rank 8 of 24
    weight = rng.normal(size=(16, 24))
    factor = sparsegpt.factor(x.T @ x, damping=0.0)
    assert factor.damping > 0 and factor.retries >= 1
    for pattern in (Pattern("nm", 0.5, 2, 4), Pattern("unstructured", 0.4), Pattern("block", 0.5, block=(4, 1))):
        pruned = sparsegpt.prune(weight, factor, pattern, blocksize=8)
        assert np.isfinite(pruned).all() and verify(pruned, pattern)[0]
        assert not pruned[:, 20:].any()  # dead inputs are pruned outright
        error = np.sum((x @ (pruned - weight).T) ** 2)
        magnitude = np.where(select_mask(np.abs(weight), pattern), weight, 0.0)
        assert error < np.sum((x @ (magnitude - weight).T) ** 2)


# -- the passes on the real model ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: NMSparsity(n=2, m=4, method="wanda"),
        lambda: BlockSparsity(block=(16, 1), density=0.3, method="sparsegpt"),
        lambda: UnstructuredSparsity(density={"*intermediate*": 0.3}, default_density=0.6, method="magnitude"),
    ],
    ids=["2:4-wanda", "16x1-sparsegpt", "unstructured-per-layer"],
)
def test_passes_annotate_every_selected_layer_of_minilm(minilm_ir, minilm_batches, make):
    model = copy_model(minilm_ir)
    compiled = sparc.compile(model, recipe=[make()], calibration=minilm_batches, latency_rounds=0)
    layers = find_linear_layers(compiled.model.graph)
    annotated = [layer for layer in layers if annotation(layer.node) is not None]
    assert len(annotated) == 36  # 6 layers × (q, k, v, out, up, down); the pooler-free head is none
    for layer in annotated:
        pattern = annotation(layer.node)
        holds, density, _ = verify(layer.weight_kn().T, pattern)
        assert holds
        if pattern.kind == "unstructured":
            assert density == pytest.approx(0.3 if "intermediate" in layer.name else 0.6, abs=1e-3)
    entry = compiled.report.passes[0]
    assert 0 < entry.error.max_rel < 1.5


def test_targets_and_skip_select_layers(minilm_ir):
    model = copy_model(minilm_ir)
    NMSparsity(targets=["*intermediate*", "*output.dense"], skip=["*layer.5.*"])(model)
    names = [layer.name for layer in find_linear_layers(model.graph) if ANNOTATION_KEY in layer.node.metadata_props]
    assert len(names) == 15 and not any("layer.5." in n for n in names)
    assert not any("attention.self" in n for n in names)


def test_bad_options_raise_recipe_errors():
    with pytest.raises(RecipeError, match="n must be smaller than m"):
        NMSparsity(n=4, m=4)
    with pytest.raises(RecipeError, match="m"):
        NMSparsity(n=2, m=32)
    with pytest.raises(RecipeError, match="method"):
        UnstructuredSparsity(method="random")
    with pytest.raises(RecipeError, match="block"):
        BlockSparsity(block=16)
    with pytest.raises(RecipeError, match="density"):
        UnstructuredSparsity(density=1.5)


def test_wanda_without_calibration_is_a_clear_error(minilm_ir):
    with pytest.raises((PassError, SparcError), match="calibration"):
        sparc.compile(copy_model(minilm_ir), recipe=[NMSparsity(method="wanda")], validate=False, latency_rounds=0)


# -- OWL: outlier-weighted layer densities ---------------------------------------------------------


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    weight = np.ones((4, 2))
    weight[0, 0] = 100.0  # one entry of 8 far above the mean
    assert owl.outlier_ratio(weight, np.ones(4), threshold=5.0) == pytest.approx(1 / 8)
    assert owl.outlier_ratio(weight, np.array([0.0, 1, 1, 1]), threshold=5.0) == 0.0  # its input never fires


def test_owl_allocation_keeps_the_weighted_mean_and_favours_outliers():
    values = owl.allocate([0.01, 0.05, 0.02], [100, 300, 600], density=0.3, spread=0.1)
    assert np.average(values, weights=[100, 300, 600]) == pytest.approx(0.3)
    assert values[1] == max(values) and values[0] == min(values)
    assert max(values) - min(values) == pytest.approx(0.2)
    assert owl.allocate([0.02, 0.02], [1, 1], density=0.4, spread=0.1) == [0.4, 0.4]


def test_owl_block_sparsity_on_minilm_spreads_densities_and_keeps_the_count(minilm_ir, minilm_batches):
    compiled = sparc.compile(copy_model(minilm_ir), recipe=[BlockSparsity(block=(16, 1), density=0.3, owl=0.1)],
                             calibration=minilm_batches, latency_rounds=0)
    entry = compiled.report.passes[0]
    assert entry.details["allocation"].startswith("OWL λ=0.1")
    assert entry.details["density"] == pytest.approx(0.3, abs=0.01)
    densities = [verify(layer.weight_kn().T, annotation(layer.node))[1]
                 for layer in find_linear_layers(compiled.model.graph) if annotation(layer.node) is not None]
    assert len(densities) == 36 and max(densities) - min(densities) > 0.1


def test_owl_needs_one_density():
    with pytest.raises(RecipeError, match="owl"):
        UnstructuredSparsity(density={"*": 0.5}, owl=0.1)


# -- weights shared by several layers (an unrolled RNN) --------------------------------------------


def _step_inputs(model, calibration) -> list[np.ndarray]:
    names = [layer.input.name for layer in find_linear_layers(model.graph)]
    runner = exposing_runner(model, names)
    return [np.concatenate([runner.run(feeds)[n] for feeds in calibration]) for n in names]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_layers_sharing_a_weight_keep_one_weight_with_one_mask(method):
    model, weight = unrolled_rnn()
    batches = [{"x": np.random.default_rng(i).standard_normal((32, 16)).astype(np.float32)} for i in range(2)]
    original_inputs = _step_inputs(model, batches)
    compiled = sparc.compile(copy_model(model), recipe=[NMSparsity(method=method, calibration=batches)],
                             calibration=batches, latency_rounds=0)
    layers = find_linear_layers(compiled.model.graph)
    assert len({id(layer.weight) for layer in layers}) == 1 and len(compiled.model.graph.initializers) == 1
    assert compiled.report.final.params == compiled.report.original.params == weight.size
    assert verify(layers[0].weight_kn().T, Pattern("nm", 0.5, 2, 4))[0]
    assert "3 layers share 1 weights" in compiled.report.passes[0].details["shared"]
    if method == "wanda":  # the mask scores |W|·‖X‖ with X every step's input, stacked
        norms = np.sqrt(sum(np.square(x.astype(np.float64)).sum(0) for x in original_inputs))
        expected = select_mask(np.abs(weight) * norms[None, :], Pattern("nm", 0.5, 2, 4), per_row=True)
        np.testing.assert_array_equal(layers[0].weight_kn().T != 0, expected)


def test_a_shared_weight_also_read_by_an_unselected_layer_is_copied_once():
    model, weight = unrolled_rnn(steps=4)
    NMSparsity(skip=["W@step3"])(model)
    layers = {layer.node.name: layer for layer in find_linear_layers(model.graph)}
    sparse = {id(layers[f"step{t}"].weight) for t in range(3)}
    assert len(sparse) == 1 and id(layers["step3"].weight) not in sparse
    np.testing.assert_array_equal(layers["step3"].weight.const_value.numpy(), weight)
    assert len(model.graph.initializers) == 2
