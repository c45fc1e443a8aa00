"""The side-by-side harness: interleaving, medians and ratios (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from sparc.measure.latency import compare


def test_interleaved_rounds_rotate_the_order():
    calls = []
    result = compare(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, warmup=1
    )
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.baseline == "a" and result.ratios["a"] == 1.0
    assert len(result.timings["b"].samples) == 4


def test_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    import sparc.measure.latency as bench

    times = iter([1.0, 2.0, 3.0, 1.0, 1.0, 8.0])  # rounds: (a=1, b=2), (b=3, a=1), (a=1, b=8)
    monkeypatch.setattr(bench, "_time_once", lambda function, minimum: next(times))
    result = bench.compare({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=0)
    assert result.ratios["b"] == pytest.approx(3.0)
    assert result.timings["b"].median_ms == pytest.approx(3000.0)
    assert result.speedup("b") == pytest.approx(1 / 3)
    assert json.loads(result.to_json())["ratio_to_baseline"]["b"] == pytest.approx(3.0)
    assert "| b | 3000.000" in result.to_markdown()


def test_bad_arguments():
    with pytest.raises(ValueError):
        compare({})
    with pytest.raises(ValueError):
        compare({"a": lambda: None}, rounds=0)
