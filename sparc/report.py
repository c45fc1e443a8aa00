"""The compile report: what each pass did to size, compute, accuracy, and the final latency.

Output error compares a model's outputs with the original model's on the same validation
batches: ``max_abs`` = max|y − y₀|, ``mean_abs`` = mean|y − y₀|, ``max_rel`` = max|y − y₀| /
max|y₀| and ``mean_rel`` = mean|y − y₀| / mean|y₀| (relative to the output's scale, so
near-zero outputs do not blow up), each over every output element of every batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparc.analysis.cost import ModelStats


@dataclasses.dataclass
class OutputError:
    """Output difference against the original model (see the module docstring)."""

    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    finite: bool = True

    @classmethod
    def between(cls, outputs: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]]):
        """Error of ``outputs`` (per batch, per output) against ``reference`` of equal shapes."""
        max_abs = max_ref = 0.0
        sum_abs = sum_ref = 0.0
        count = 0
        finite = True
        for batch, ref_batch in zip(outputs, reference):
            for got, want in zip(batch, ref_batch):
                got = np.asarray(got, dtype=np.float64)
                want = np.asarray(want, dtype=np.float64)
                finite = finite and bool(np.isfinite(got).all())
                diff = np.abs(got - want)
                max_abs = max(max_abs, float(np.nanmax(diff, initial=0.0)))
                max_ref = max(max_ref, float(np.abs(want).max(initial=0.0)))
                sum_abs += float(np.nansum(diff))
                sum_ref += float(np.abs(want).sum())
                count += diff.size
        mean_abs = sum_abs / max(count, 1)
        mean_ref = sum_ref / max(count, 1)
        return cls(
            max_abs=max_abs,
            mean_abs=mean_abs,
            max_rel=max_abs / max_ref if max_ref else max_abs,
            mean_rel=mean_abs / mean_ref if mean_ref else mean_abs,
            finite=finite,
        )


@dataclasses.dataclass
class PassEntry:
    """One pass of the pipeline and the model right after it."""

    name: str
    options: dict[str, Any]
    modified: bool
    seconds: float
    stats: ModelStats
    error: OutputError | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_rss: int | None = None  # bytes, the whole process, while the pass ran


def feed_shapes(feeds) -> str:
    """``name[shape], ...`` of a batch of inputs, as reports name what was run."""
    return ", ".join(f"{k}{list(np.asarray(v).shape)}" for k, v in feeds.items())


@dataclasses.dataclass
class Latency:
    """Original and compiled model timed side by side (see sparc.benchmark)."""

    original_ms: float
    compiled_ms: float
    ratio: float
    threads: int | None
    rounds: int
    inputs: str

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio


@dataclasses.dataclass
class TargetCheck:
    """Outputs of the exported model on ``target`` against Python ONNX Runtime (and, for wasm,
    its latency there beside the original's)."""

    target: str
    runtime: str
    inputs: str
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    latency: Latency | None = None

    def to_markdown(self) -> str:
        line = (f"{self.target} check ({self.runtime}; {self.inputs}): outputs match Python ONNX Runtime, "
                f"max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g} "
                f"(tolerance {self.tolerance:g})")
        if self.latency is not None:
            lat = self.latency
            line += (f"; WebAssembly latency ({lat.threads} thread(s), {lat.rounds} interleaved rounds): "
                     f"original {lat.original_ms:.2f} ms, compiled {lat.compiled_ms:.2f} ms, "
                     f"ratio {lat.ratio:.3f} ({lat.speedup:.2f}x)")
        elif self.target == "arm":
            line += "; emulated, so not timed"
        return line


@dataclasses.dataclass
class Report:
    """Everything a compile measured; ``str(report)`` is the markdown form."""

    model: str
    backend: str
    target: str
    original: ModelStats
    passes: list[PassEntry]
    validation: str
    latency: Latency | None = None
    target_check: TargetCheck | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def final(self) -> ModelStats:
        return self.passes[-1].stats if self.passes else self.original

    @property
    def error(self) -> OutputError | None:
        return self.passes[-1].error if self.passes else None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self)) | {
            "final": _plain(dataclasses.asdict(self.final)),
            "error": _plain(dataclasses.asdict(self.error)) if self.error else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"# sparc compile report: {self.model}",
            "",
            f"backend: {self.backend}, target: {self.target}; validation: {self.validation}",
            "",
            "| step | params | non-zero | MACs | bytes | max rel err | mean rel err | time s | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            _row("original", self.original, None, None, None),
        ]
        for entry in self.passes:
            mark = "" if entry.modified else " (no change)"
            lines.append(_row(entry.name + mark, entry.stats, entry.error, entry.seconds, entry.peak_rss))
        lines.append("")
        lines.append(_totals(self.original, self.final))
        if self.error is not None:
            e = self.error
            lines.append(
                f"output error vs original: max abs {e.max_abs:.3g}, mean abs {e.mean_abs:.3g}, "
                f"max rel {e.max_rel:.3g}, mean rel {e.mean_rel:.3g}"
            )
        if self.latency is not None:
            lat = self.latency
            lines.append(
                f"latency ({lat.inputs}; threads {lat.threads or 'default'}, "
                f"{lat.rounds} interleaved rounds): original {lat.original_ms:.2f} ms, "
                f"compiled {lat.compiled_ms:.2f} ms, ratio {lat.ratio:.3f} "
                f"({lat.speedup:.2f}x)"
            )
        if self.target_check is not None:
            lines.append(self.target_check.to_markdown())
        details = [(e.name, e.details) for e in self.passes if e.details]
        if details:
            lines += ["", "## Pass details", ""]
            for name, detail in details:
                lines.append(f"- **{name}**: {_inline(detail)}")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _row(name: str, stats: ModelStats, error: OutputError | None, seconds: float | None,
         peak: int | None) -> str:
    err = (f"{error.max_rel:.3g}", f"{error.mean_rel:.3g}") if error else ("", "")
    return (
        f"| {name} | {stats.params:,} | {stats.nonzero_params:,} | {_macs(stats)} | "
        f"{stats.bytes:,} | {err[0]} | {err[1]} | {'' if seconds is None else f'{seconds:.2f}'} | "
        f"{'' if peak is None else f'{peak / 2**20:,.0f}'} |"
    )


def _macs(stats: ModelStats) -> str:
    if stats.macs is None:
        return "?"
    partial = f" (+{len(stats.unknown_mac_nodes)} unknown)" if stats.unknown_mac_nodes else ""
    return f"{stats.macs:,}{partial}"


def _totals(original: ModelStats, final: ModelStats) -> str:
    parts = [
        f"params {final.params / max(original.params, 1):.3f}x",
        f"non-zero {final.nonzero_params / max(original.nonzero_params, 1):.3f}x",
        f"bytes {final.bytes / max(original.bytes, 1):.3f}x",
    ]
    if original.macs and final.macs is not None:
        parts.append(f"MACs {final.macs / original.macs:.3f}x")
    return "total vs original: " + ", ".join(parts)


def _inline(detail: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in detail.items())


def _plain(value):
    """JSON-safe copy: numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
