"""sparc.tune: finds the known best answer, keeps the budget on held-out data, reproduces its
choice from the recipe YAML, takes a callable metric, returns the original when nothing fits,
resumes from its store; and the ``sparc tune`` command."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import sparc
from sparc.capture import capture_torch, load_onnx
from sparc.errors import TuneError
from sparc.measure.outputs import OutputError
from sparc.runtime import OrtRunner
from sparc.tune import Space, parse_duration, tune

torch = pytest.importorskip("torch")

WIDTH, HIDDEN, DEAD = 128, 512, 384  # block A: 384 of its 512 hidden units write nothing


class TwoBlocks(torch.nn.Module):
    """Block A's hidden units are three quarters dead (zero rows of its down projection), so
    most of them can go at no loss; every unit of block B matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a_up, self.a_down = torch.nn.Linear(WIDTH, HIDDEN), torch.nn.Linear(HIDDEN, WIDTH)
        self.b_up, self.b_down = torch.nn.Linear(WIDTH, HIDDEN), torch.nn.Linear(HIDDEN, 16)
        with torch.no_grad():
            self.a_down.weight[:, HIDDEN - DEAD:] = 0.0

    def forward(self, x):
        h = x + self.a_down(torch.relu(self.a_up(x)))
        return self.b_down(torch.relu(self.b_up(h)))


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "two_blocks.onnx"
    ir.save(capture_torch(TwoBlocks().eval(), (torch.randn(4, WIDTH),), {"x": {0: "batch"}}), str(path))
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((64, WIDTH)).astype(np.float32)} for _ in range(6)]
    return path, batches


def _ratios(result) -> dict[str, float]:
    crops = [options for entry in result.recipe["passes"] for name, options in entry.items() if name == "ChannelCrop"]
    return crops[0]["ratio"] if crops else {}


def test_tune_finds_the_removable_layer_and_keeps_the_budget(two_blocks, tmp_path):
    path, batches = two_blocks
    result = tune(str(path), calibration=batches, max_loss=1e-5, trials=6, time_budget=None, latency_batch=64)
    sensitivity = {g.name: g.sensitivity for g in result.space.groups}
    a_hidden = next(name for name in sensitivity if "a_up" in name)
    b_hidden = next(name for name in sensitivity if "b_up" in name)
    assert sensitivity[a_hidden] < 1e-6 < sensitivity[b_hidden]
    assert result.chosen is not None, result.message
    ratios = _ratios(result)
    assert ratios.get(a_hidden, 0) >= 0.4 and ratios.get(b_hidden, 0) == 0, ratios
    assert result.chosen.measurement.speedup > 1.0
    # the budget holds on the held-out batch, measured here independently of tune
    held_out = batches[-1]
    expected = OrtRunner(load_onnx(path)).run(held_out)
    exported = tmp_path / "chosen.onnx"
    result.compiled.export(exported)
    got = OrtRunner(load_onnx(exported)).run(held_out)
    error = OutputError.of_runs(got, expected, {name: "logits" for name in expected})
    assert error.outputs[0].kl <= 1e-5
    # every measured point is on the table, the front is non-dominated, the plot is written
    assert len(result.trials) == 6 and result.front()
    assert result.plot(tmp_path / "front.png").stat().st_size > 0
    assert "## Candidates measured" in result.to_markdown()


def test_recipe_yaml_reproduces_the_chosen_model_byte_for_byte(two_blocks, tmp_path):
    path, batches = two_blocks
    result = tune(str(path), calibration=batches, max_loss=1e-3, trials=3, time_budget=None, latency_batch=64)
    assert result.chosen is not None
    recipe = tmp_path / "recipe.yaml"
    result.write(recipe=recipe)
    again = sparc.compile(str(path), calibration=batches, recipe=str(recipe), latency_rounds=0)
    first, second = tmp_path / "tuned.onnx", tmp_path / "again.onnx"
    result.compiled.export(first)
    again.export(second)
    assert first.read_bytes() == second.read_bytes()


def test_callable_metric_is_a_drop_from_the_original(two_blocks):
    path, batches = two_blocks
    rng = np.random.default_rng(7)
    labelled = {"x": rng.standard_normal((256, WIDTH)).astype(np.float32)}
    labels = OrtRunner(load_onnx(path)).run(labelled)
    labels = next(iter(labels.values())).argmax(1)

    def accuracy(run) -> float:
        return float((next(iter(run(labelled).values())).argmax(1) == labels).mean())

    result = tune(str(path), calibration=batches, max_loss=0.0, metric=accuracy, trials=3, time_budget=None,
                  latency_batch=64)
    assert result.metric == "callable"
    for trial in result.trials:
        if trial.measurement is not None:
            assert trial.within_budget == (trial.measurement.loss == 0.0)
    if result.chosen is not None:
        assert accuracy(result.compiled.run) == 1.0


def test_a_budget_nothing_meets_returns_the_original(two_blocks):
    path, batches = two_blocks
    result = tune(str(path), calibration=batches, max_loss=1e-12, passes=["ChannelCrop"], trials=2,
                  time_budget=None, latency_batch=64)
    if result.chosen is None:  # crop of dead units only can be exact to the last bit; then it is chosen
        assert "No candidate" in result.message and "the original model" in result.message
        assert [next(iter(p)) for p in result.recipe["passes"]] == ["FoldConstants", "RemoveUnused"]
        assert result.compiled.report.final.params == result.compiled.report.original.params


def test_store_resumes_without_measuring_again(two_blocks, tmp_path):
    path, batches = two_blocks
    store = tmp_path / "trials.journal"
    first = tune(str(path), calibration=batches, max_loss=1e-3, trials=2, time_budget=None, store=store,
                 latency_batch=64)
    second = tune(str(path), calibration=batches, max_loss=1e-3, trials=3, time_budget=None, store=store,
                  latency_batch=64)
    assert [t.recipe for t in second.trials[:2]] == [t.recipe for t in first.trials]
    assert len(second.trials) == 3
    assert [g.sensitivity for g in second.space.groups] == [g.sensitivity for g in first.space.groups]


def test_bad_options_are_tune_errors(two_blocks):
    path, batches = two_blocks
    with pytest.raises(TuneError, match="unknown metric"):
        tune(str(path), calibration=batches, max_loss=0.01, metric="psnr", trials=1)
    with pytest.raises(TuneError, match="at least 2 calibration batches"):
        tune(str(path), calibration=batches[:1], max_loss=0.01, trials=1)
    with pytest.raises(TuneError, match="measures none"):
        tune(str(path), calibration=batches, max_loss=0.01, metric="cosine", trials=1)
    with pytest.raises(TuneError, match="unknown pass families"):
        tune(str(path), calibration=batches, max_loss=0.01, passes=["Magic"], trials=1)
    with pytest.raises(TuneError, match="max_loss"):
        tune(str(path), calibration=batches, max_loss=-1, trials=1)
    with pytest.raises(sparc.BackendError, match="backend"):
        tune(str(path), calibration=batches, max_loss=0.01, backend="tensorrt", trials=1)
    assert parse_duration("15m") == 900 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(TuneError, match="not a duration"):
        parse_duration("soon")


def test_allocation_follows_measured_sensitivity():
    from sparc.tune import Group

    space = Space([Group("quiet", "units", 64, 1e-6), Group("mid", "units", 64, 1e-4),
                   Group("loud", "units", 64, 1e-2)], stream=False, blocks=False, reconstruct=False)
    uniform = space.ratios({"ratio_units": 0.3, "allocation": 0.0})
    assert uniform == {"quiet": 0.3, "mid": 0.3, "loud": 0.3}
    skewed = space.ratios({"ratio_units": 0.3, "allocation": 1.0})
    assert skewed == {"quiet": 0.6, "mid": 0.3}  # the loudest keeps every unit
    assert space.recipe({"ratio_units": 0.0}) == []
    blocks = Space([], stream=False, blocks=True, reconstruct=False)
    assert blocks.recipe({"block_density": 0.3, "block_owl": 0.05}) == [
        {"BlockSparsity": {"block": [16, 1], "density": 0.3, "method": "sparsegpt", "owl": 0.05}}]


def test_allocation_weighs_sensitivity_by_profiled_time():
    from sparc.tune import Group

    # equal loss per unit, but "slow" holds ten times the time: cutting it buys more speed per loss
    space = Space([Group("slow", "units", 64, 1e-3, ms=10.0), Group("fast", "units", 64, 1e-3, ms=1.0)],
                  stream=False, blocks=False, reconstruct=False)
    assert space.ratios({"ratio_units": 0.3, "allocation": 1.0}) == {"slow": 0.6}


def test_profiled_group_times_cover_the_hidden_layers(two_blocks):
    from sparc.data import as_calibration
    from sparc.tune import Settings, _prunable_groups

    path, batches = two_blocks
    model = load_onnx(path)
    groups = _prunable_groups(model, as_calibration(batches, model), Settings())
    assert [g.units for g in groups] == [HIDDEN, HIDDEN]
    assert all(g.ms > 0 for g in groups)


def test_cli_tune_writes_model_report_recipe(two_blocks, tmp_path, capsys):
    from sparc.cli import main

    path, batches = two_blocks
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([b["x"] for b in batches]))
    out = tmp_path / "out.onnx"
    code = main(["tune", str(path), "--calib", str(calib), "--batch-size", "64", "--max-loss", "0.001",
                 "--trials", "2", "--latency-batch", "64", "-o", str(out), "--report", str(tmp_path / "r.md"),
                 "--recipe-out", str(tmp_path / "r.yaml")])
    assert code == 0
    assert ir.load(str(out)).graph is not None
    assert "# sparc tune" in capsys.readouterr().out
    assert "passes:" in (tmp_path / "r.yaml").read_text()
    code = main(["tune", str(path), "--calib", str(calib), "--max-loss", "0.01", "--time-budget", "soon",
                 "-o", str(out)])
    assert code == 1 and "not a duration" in capsys.readouterr().err


def test_seeds_follow_the_cheap_model_and_stay_within_the_measured_half():
    from sparc.tune import Group, _seeds

    space = Space([Group("quiet", "units", 64, 1e-4), Group("loud", "units", 64, 1e-2),
                   Group("heads", "heads", 12, 1e-3)], stream=False, blocks=False, reconstruct=True)
    seeds = _seeds(space, max_loss=0.01)
    assert seeds and all(0 < s["ratio_units"] <= 0.6 and 0 < s["ratio_heads"] <= 0.5 for s in seeds)
    assert any(s["reconstruct"] for s in seeds) and not all(s["reconstruct"] for s in seeds)
    for seed in seeds:
        assert max(space.ratios(seed).values()) <= 0.5  # never beyond the half each group was measured at
    tight, loose = _seeds(space, max_loss=1e-4)[0], _seeds(space, max_loss=1e-2)[0]
    assert tight["ratio_units"] <= loose["ratio_units"]
