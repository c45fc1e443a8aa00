"""sparc.distributed: engines, reducer merges, and calibration and tuning on a local Ray cluster
of two worker processes giving what one process gives.

Tolerance: a worker reduces every other batch and the shares are added, so float64 sums of the
same float32 products are added in another order; each entry may differ by a few ulps of the
sums it adds: |a − b| ≤ 1e-12 · Σ|terms| (here bounded by 1e-12 · the largest entry of the sum
of squares, with room to spare). Row counts and histogram counts are integers: exact.
"""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparc
from sparc.cli import main
from sparc.data import CalibrationData
from sparc.distributed import InProcess, RayEngine, deal, engine_for
from sparc.errors import CalibrationError, DistributedError
from sparc.measure.execute import collect
from sparc.measure.magnitudes import MagnitudeHistogram
from sparc.measure.reducers import ChannelStats, Gram

RTOL = 1e-12
WIDTH, HIDDEN, DEAD = 32, 128, 96  # block A: 96 of its 128 hidden units write nothing


def _two_blocks() -> onnx.ModelProto:
    """x + A(x) → B, each block Linear → Relu → Linear; three quarters of A's units are dead."""
    rng = np.random.default_rng(0)
    a_down = rng.standard_normal((HIDDEN, WIDTH)).astype(np.float32) / 8
    a_down[HIDDEN - DEAD:] = 0.0
    arrays = {"a_up": rng.standard_normal((WIDTH, HIDDEN)) / 6, "a_b": rng.standard_normal(HIDDEN) / 10,
              "a_down": a_down, "b_up": rng.standard_normal((WIDTH, HIDDEN)) / 6,
              "b_b": rng.standard_normal(HIDDEN) / 10, "b_down": rng.standard_normal((HIDDEN, 8)) / 8}
    weights = [numpy_helper.from_array(np.asarray(a, np.float32), name) for name, a in arrays.items()]
    nodes = [helper.make_node("MatMul", ["x", "a_up"], ["a1"], name="a_up"),
             helper.make_node("Add", ["a1", "a_b"], ["a2"], name="a_bias"),
             helper.make_node("Relu", ["a2"], ["a3"], name="a_relu"),
             helper.make_node("MatMul", ["a3", "a_down"], ["a4"], name="a_down"),
             helper.make_node("Add", ["x", "a4"], ["h"], name="residual"),
             helper.make_node("MatMul", ["h", "b_up"], ["b1"], name="b_up"),
             helper.make_node("Add", ["b1", "b_b"], ["b2"], name="b_bias"),
             helper.make_node("Relu", ["b2"], ["b3"], name="b_relu"),
             helper.make_node("MatMul", ["b3", "b_down"], ["y"], name="b_down")]
    graph = helper.make_graph(nodes, "two_blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return ir.serde.deserialize_model(_two_blocks())


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((16, WIDTH)).astype(np.float32)} for _ in range(7)]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with two worker CPUs, for the whole module (startup costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs below, on the workers
    engine = RayEngine("local", workers=2)
    yield engine
    engine.close()


def _reducers():
    return {"a3": [Gram(), ChannelStats()], "h": [Gram(center=True, normalize=True), MagnitudeHistogram()]}


def _collected(model, batches, engine):
    reducers = _reducers()
    collect(model, reducers, CalibrationData(batches), threads=1, engine=engine)
    return reducers


def _assert_same_statistics(got, want):
    for name in want:
        for g, w in zip(got[name], want[name]):
            if isinstance(w, MagnitudeHistogram):
                np.testing.assert_array_equal(g.counts, w.counts)
                continue
            assert g.rows == w.rows
            for attribute in ("matrix", "sum", "abs_sum", "sq_sum"):
                if hasattr(w, attribute):
                    want_value = getattr(w, attribute)
                    scale = np.abs(want_value).max()
                    np.testing.assert_allclose(getattr(g, attribute), want_value, rtol=0, atol=RTOL * scale)


def test_batches_are_dealt_round_robin():
    assert deal(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert deal([0, 1], 4) == [[0], [1]]  # never an empty shard
    assert deal([], 2) == [[]]


@pytest.mark.parametrize("make", [lambda: Gram(), lambda: Gram(center=True, normalize=True),
                                  lambda: ChannelStats(), lambda: MagnitudeHistogram()])
def test_a_merge_of_parts_is_the_reducer_of_the_whole(make):
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((n, 5, 6)).astype(np.float32) for n in (3, 1, 4)]
    whole, merged = make(), make()
    whole.update(np.concatenate(parts), {})
    for part in parts:
        share = merged.fresh()
        share.update(part, {})
        merged.merge(share)
    if isinstance(whole, MagnitudeHistogram):
        np.testing.assert_array_equal(merged.counts, whole.counts)
        return
    assert merged.rows == whole.rows == 8 * 5
    for attribute in ("matrix", "sum", "sq_sum"):
        if hasattr(whole, attribute):
            np.testing.assert_allclose(getattr(merged, attribute), getattr(whole, attribute), rtol=1e-12)


def test_only_reducers_with_the_same_options_merge():
    with pytest.raises(TypeError, match="other options"):
        Gram(center=True).merge(Gram())
    with pytest.raises(TypeError, match="cannot merge"):
        ChannelStats().merge(Gram())


def test_sharded_calibration_in_process_matches_one_pass(model, batches):
    """Three shards in this process: the merge path, without Ray."""
    _assert_same_statistics(_collected(model, batches, InProcess(3)), _collected(model, batches, None))


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(DistributedError, match=r"sparc\[distributed\]"):
        engine_for("local")
    assert isinstance(engine_for(None), InProcess)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_cluster_is_named(capsys, tmp_path):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(DistributedError, match=f"cannot reach the Ray cluster at {address}"):
        engine_for(address)
    with pytest.raises(DistributedError, match="not a Ray cluster address"):
        engine_for("nowhere")
    onnx.save(_two_blocks(), tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--ray", address]) == 1
    assert f"cannot reach the Ray cluster at {address}" in capsys.readouterr().err


def test_two_ray_workers_are_two_processes_holding_their_shards(cluster):
    with cluster.shards(list(range(5))) as shards:
        seen = shards.map(_pid_and_items)
        assert [items for _, items in seen] == [[0, 2, 4], [1, 3]]
        pids = {pid for pid, _ in seen}
        assert len(pids) == 2 and os.getpid() not in pids
        shards.map(_remember, "kept")
        assert shards.map(_recall) == ["kept", "kept"]  # state stays on the worker between calls


def _pid_and_items(shard):
    return os.getpid(), shard.items


def _remember(shard, value):
    shard.state["value"] = value


def _recall(shard):
    return shard.state["value"]


def test_calibration_on_two_ray_workers_matches_one_process(cluster, model, batches):
    _assert_same_statistics(_collected(model, batches, cluster), _collected(model, batches, None))


def test_a_worker_error_comes_back_as_itself(cluster, model):
    bad = CalibrationData([{"x": np.zeros((2, WIDTH + 1), np.float32)}] * 2)  # the wrong width
    with pytest.raises(CalibrationError, match="running the model failed"):
        collect(model, {"h": Gram()}, bad, engine=cluster)
    task = cluster.submit(_divide, 1, 0)
    assert cluster.wait([task]) == [task]
    with pytest.raises(ZeroDivisionError):
        task.result()


def _divide(a, b):
    return a / b


def test_compile_calibrating_on_ray_gives_the_same_model(cluster, batches):
    recipe = {"passes": [{"ChannelCrop": {"ratio": 0.25, "importance": "activation", "round_to": 1}}]}
    here = sparc.compile(_two_blocks(), calibration=batches, recipe=recipe, threads=1, latency_rounds=0)
    there = sparc.compile(_two_blocks(), calibration=batches, recipe=recipe, threads=1, latency_rounds=0,
                          ray=cluster)
    assert here.report.passes[-1].modified
    want = {k: v.const_value.numpy() for k, v in here.model.graph.initializers.items()}
    got = {k: v.const_value.numpy() for k, v in there.model.graph.initializers.items()}
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].shape == array.shape, name  # the same channels kept
        np.testing.assert_allclose(got[name], array, rtol=1e-6, atol=1e-7)


def test_map_balances_jobs_over_both_workers_and_keeps_item_order(cluster):
    with cluster.shards(list(range(3))) as shards:  # workers holding a shard set take jobs too
        shards.map(_remember, "kept")
        seen = cluster.map(_pid_after_sleeping, [0.3, 0.01, 0.01, 0.01, 0.01])
        assert shards.map(_recall) == ["kept", "kept"]
    assert [seconds for seconds, _ in seen] == [0.3, 0.01, 0.01, 0.01, 0.01]
    assert seen[0][1] != seen[1][1] and len({pid for _, pid in seen[1:]}) == 1  # the free worker took the rest
    assert InProcess().map(abs, [-1, 2]) == [1, 2]


def _pid_after_sleeping(seconds):
    import time

    time.sleep(seconds)
    return seconds, os.getpid()


@pytest.mark.parametrize("sequential", [True, False])
def test_sparsegpt_solves_on_ray_give_the_same_model(cluster, batches, sequential):
    """SparseGPT's factor-and-prune jobs run on the workers: block by block (while the staged
    calibration holds its shards), or every block's at once (``sequential=False``). The same
    masks; values within float32 rounding (the workers' BLAS runs one thread)."""
    recipe = [{"UnstructuredSparsity": {"density": 0.5, "method": "sparsegpt", "sequential": sequential}}]
    here = sparc.compile(_two_blocks(), calibration=batches, recipe=recipe, threads=1, latency_rounds=0)
    there = sparc.compile(_two_blocks(), calibration=batches, recipe=recipe, threads=1, latency_rounds=0,
                          ray=cluster)
    assert here.report.passes[-1].details["layers"] == 3
    assert there.report.passes[-1].details["solves"] == "factor and prune on 2 workers"
    for name, value in here.model.graph.initializers.items():
        want, got = value.const_value.numpy(), there.model.graph.initializers[name].const_value.numpy()
        np.testing.assert_array_equal(got != 0, want != 0, err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_tune_on_ray_makes_the_same_evaluations(cluster, batches):
    """The first trials (the seeds and the sampler's random start) propose the same recipes in
    any order of completion, so both runs evaluate the same candidates; losses and sizes match
    (speed is timed, so it is not compared)."""
    options = {"calibration": batches, "max_loss": 0.05, "passes": ["ChannelCrop"], "trials": 4, "time_budget": None}
    here = sparc.tune(_two_blocks(), **options)
    there = sparc.tune(_two_blocks(), **options, ray=cluster)
    assert [t.number for t in there.trials] == [t.number for t in here.trials] == [0, 1, 2, 3]
    assert sum(t.measurement is not None for t in here.trials) >= 2
    for got, want in zip(there.trials, here.trials):
        assert (got.recipe, got.error) == (want.recipe, want.error)
        if want.measurement is None:
            assert got.measurement is None
            continue
        assert got.measurement.loss == pytest.approx(want.measurement.loss, rel=1e-6, abs=1e-9)
        assert (got.measurement.params, got.measurement.macs) == (want.measurement.params, want.measurement.macs)
    assert [g.sensitivity for g in there.space.groups] == pytest.approx([g.sensitivity for g in here.space.groups])
