"""The compile report: what each pass did to size, compute, quality and time, and the final latency.

Output error and fidelity are measured per output against the original model on the same
validation batches (:mod:`sparc.measure.outputs`); the pass table shows the worst float
output's relative error and every output's fidelity, and a table per output follows for the
compiled model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from sparc.backends.targets import TargetCheck
from sparc.backends.tvm import TvmBuild
from sparc.measure.cost import ModelStats
from sparc.measure.latency import Latency
from sparc.measure.outputs import OutputError
from sparc.passes.pipeline import PassEntry


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
    tvm: TvmBuild | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    canonical: PassEntry | None = None  # Canonicalize, run before the recipe's passes
    executed_macs: int | None = None  # MACs of one run as the backend executes it (None: as stored)

    @property
    def macs_ratio(self) -> float | None:
        """Executed MACs against the original's (stored MACs where the backend runs them as stored)."""
        macs = self.executed_macs if self.executed_macs is not None else self.final.macs
        return macs / self.original.macs if macs is not None and self.original.macs else None

    @property
    def final(self) -> ModelStats:
        return self.steps[-1].stats if self.steps else self.original

    @property
    def steps(self) -> list[PassEntry]:
        """Canonicalize (when it ran) and the recipe's passes, in order."""
        return ([self.canonical] if self.canonical else []) + self.passes

    @property
    def error(self) -> OutputError | None:
        return self.steps[-1].error if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        plain = _plain(dataclasses.asdict(self))
        for entry, data in zip(self.passes, plain["passes"]):
            data["error"] = _plain(entry.error.to_dict()) if entry.error else None
        if self.canonical is not None:
            plain["canonical"]["error"] = _plain(self.canonical.error.to_dict()) if self.canonical.error else None
        return plain | {
            "final": _plain(dataclasses.asdict(self.final)),
            "error": _plain(self.error.to_dict()) if self.error else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"# sparc compile report: {self.model}",
            "",
            f"backend: {self.backend}, target: {self.target}; validation: {self.validation}",
            "",
            "| step | params | non-zero | MACs | bytes | max rel err | fidelity | time s | calib s | verify s "
            "| peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
            _row("original", self.original, None, None),
        ]
        for entry in self.steps:
            mark = "" if entry.modified else " (no change)"
            lines.append(_row(entry.name + mark, entry.stats, entry.error, entry))
        lines.append("")
        lines.append(_totals(self.original, self.final, self.executed_macs, self.backend))
        if self.error is not None:
            lines += ["", "Output error vs original, per output (each relative to its own scale):", "",
                      *_output_table(self.error), ""]
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
        details = [(e.name, e.details) for e in self.steps if e.details]
        if details:
            lines += ["", "## Pass details", ""]
            for name, detail in details:
                lines.append(f"- **{name}**: {_inline(detail)}")
        notes = (self.tvm.to_markdown() if self.tvm else []) + self.notes
        if notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _row(name: str, stats: ModelStats, error: OutputError | None, entry: PassEntry | None) -> str:
    err = (f"{error.max_rel:.3g}", error.fidelity()) if error else ("", "")
    times = ("", "", "") if entry is None else (
        f"{entry.seconds:.2f}", f"{entry.calibration_seconds:.2f}", f"{entry.verify_seconds:.2f}")
    peak = "" if entry is None or entry.peak_rss is None else f"{entry.peak_rss / 2**20:,.0f}"
    return (
        f"| {name} | {stats.params:,} | {stats.nonzero_params:,} | {_macs(stats)} | "
        f"{stats.bytes:,} | {err[0]} | {err[1]} | {' | '.join(times)} | {peak} |"
    )


def _output_table(error: OutputError) -> list[str]:
    lines = ["| output | dtype | shape | measure | max abs err | max rel err | mean rel err | fidelity |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for o in error.outputs:
        errors = ("exact", "exact", "exact") if o.exact else (f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                                                              f"{o.mean_rel:.3g}")
        lines.append(f"| {o.name} | {o.dtype} | {o.shape} | {o.measure} | {' | '.join(errors)} | {o.fidelity()} |")
    return lines


def _macs(stats: ModelStats) -> str:
    if stats.macs is None:
        return "?"
    partial = f" (+{len(stats.unknown_mac_nodes)} unknown)" if stats.unknown_mac_nodes else ""
    return f"{stats.macs:,}{partial}"


def _totals(original: ModelStats, final: ModelStats, executed: int | None = None, backend: str = "") -> str:
    parts = [
        f"params {final.params / max(original.params, 1):.3f}x",
        f"non-zero {final.nonzero_params / max(original.nonzero_params, 1):.3f}x",
        f"bytes {final.bytes / max(original.bytes, 1):.3f}x",
    ]
    if original.macs and final.macs is not None:
        parts.append(f"MACs {final.macs / original.macs:.3f}x")
    if original.macs and executed is not None and executed != final.macs:
        parts.append(f"MACs executed by {backend} {executed / original.macs:.3f}x "
                     "(it runs the sparse layers as dense MatMuls)")
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
