"""Side-by-side latency measurement: the only way sparc times anything.

Two or more callables are timed in one process, interleaved: every round runs each of them
once, in an order that rotates from round to round, so slow drifts of a noisy machine (other
processes, frequency changes) hit every contestant alike. After warm-up rounds, each
contestant's latency is the median over rounds, and the ratio of B to A is the median of the
per-round ratios.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping


@dataclasses.dataclass
class Timing:
    """Latency of one contestant, in milliseconds."""

    name: str
    median_ms: float
    min_ms: float
    samples: list[float]


@dataclasses.dataclass
class Comparison:
    """Timings of several contestants measured together; ratios are against ``baseline``."""

    timings: dict[str, Timing]
    baseline: str
    ratios: dict[str, float]
    rounds: int
    threads: int | None
    label: str = ""
    machine: str = dataclasses.field(default_factory=platform.processor)

    def speedup(self, name: str) -> float:
        """How many times faster ``name`` is than the baseline (1 / ratio)."""
        return 1.0 / self.ratios[name]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "baseline": self.baseline,
            "rounds": self.rounds,
            "threads": self.threads,
            "machine": self.machine,
            "timings": {
                n: {"median_ms": t.median_ms, "min_ms": t.min_ms} for n, t in self.timings.items()
            },
            "ratio_to_baseline": self.ratios,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        head = f"threads: {self.threads if self.threads else 'default'}, rounds: {self.rounds}"
        lines = [
            *([self.label, ""] if self.label else []),
            head,
            "",
            "| model | median ms | min ms | ratio to " + self.baseline + " | speedup |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, timing in self.timings.items():
            ratio = self.ratios[name]
            lines.append(
                f"| {name} | {timing.median_ms:.3f} | {timing.min_ms:.3f} | {ratio:.3f} | "
                f"{1 / ratio:.2f}x |"
            )
        return "\n".join(lines) + "\n"


def compare(
    contestants: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    label: str = "",
    min_round_seconds: float = 0.0,
) -> Comparison:
    """Time ``contestants`` side by side; the first one is the baseline of the ratios.

    With ``min_round_seconds``, each contestant repeats within a round until that time has
    passed and the round's sample is the mean per call (for very fast models).
    """
    if not contestants:
        raise ValueError("compare needs at least one contestant")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(contestants)
    for _ in range(warmup):
        for name in names:
            contestants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_once(contestants[name], min_round_seconds))
    milliseconds = {n: [x * 1e3 for x in s] for n, s in samples.items()}
    return from_samples(milliseconds, threads=threads, label=label)


def from_samples(samples: Mapping[str, list[float]], *, threads: int | None, label: str = "") -> Comparison:
    """A :class:`Comparison` from per-round times in ms, measured interleaved elsewhere
    (onnxruntime-web under Node.js, say); the first contestant is the baseline."""
    names = list(samples)
    baseline = names[0]
    ratios = {
        n: statistics.median(s / b for s, b in zip(samples[n], samples[baseline])) for n in names
    }
    timings = {n: Timing(n, statistics.median(s), min(s), list(s)) for n, s in samples.items()}
    return Comparison(timings, baseline, ratios, len(samples[baseline]), threads, label)


def _time_once(function: Callable[[], object], min_seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


@dataclasses.dataclass
class Latency:
    """Original and compiled model timed side by side (see sparc.measure.latency)."""

    original_ms: float
    compiled_ms: float
    ratio: float
    threads: int | None
    rounds: int
    inputs: str

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio
