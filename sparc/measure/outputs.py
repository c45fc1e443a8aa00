"""Output error and fidelity of a model against the original, per output.

Every comparison in sparc (the pipeline's checks, ``max_error``, the report, the TVM check,
the target checks) goes through this module, with one tolerance table, ``TOLERANCES``.

Per output, over every element of every batch:

- float outputs: ``max_abs`` = max|y − y₀|, ``mean_abs`` = mean|y − y₀|, ``max_rel`` =
  max|y − y₀| / max|y₀| and ``mean_rel`` = mean|y − y₀| / mean|y₀|, each relative to *that*
  output's own scale (an output of large values never hides the error of a small one);
- integer and boolean outputs (and any output whose measure is ``exact``): the count of
  elements that differ; they must match exactly.

Fidelity, the measure that fits what the output is (``measure_for``, detected from the
graph, overridable per output name):

- ``cosine`` (embeddings, hidden states, anything else): cos(y, y₀) of each row (the last
  axis; each sample flattened for outputs of rank ≥ 4), mean and minimum over rows;
- ``logits``: KL(softmax(y₀) ‖ softmax(y)) over the last axis, mean over rows, in nats, and
  top-1 agreement (argmax equal) over rows; ``probabilities`` and ``log_probabilities`` take
  the values as p (or log p) directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparc.errors import CalibrationError

TOLERANCES = {
    "lossless": 1e-3,  # a clean-up pass against the model it was given
    "backend": 1e-3,  # TVM against ONNX Runtime (float32 reassociation)
    "target": 1e-3,  # onnxruntime-web / aarch64 ONNX Runtime against Python ONNX Runtime
}
MEASURES = ("cosine", "logits", "probabilities", "log_probabilities", "exact")
KL_MEASURES = ("logits", "probabilities", "log_probabilities")
_TRANSPARENT_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Transpose"}
_LINEAR_OPS = {"MatMul", "Gemm"}
_EPSILON = 1e-12
_ROWS = 512


def measure_for(value: ir.Value) -> str:
    """The fidelity measure that fits a graph output, read from the graph.

    1. not a float type: ``exact``;
    2. made (through reshapes, casts, transposes) by Softmax: ``probabilities``; by
       LogSoftmax: ``log_probabilities``;
    3. named ``*logit*``, or made by a linear layer (MatMul/Gemm, or its bias Add) with a
       last dim ≥ 2: ``logits`` (a classifier or LM head);
    4. anything else (normalized embeddings, hidden states, pooled features): ``cosine``.
    """
    if value.dtype is not None and not value.dtype.is_floating_point():
        return "exact"
    if "logit" in (value.name or "").lower():
        return "logits"
    producer = _source(value)
    if producer is None:
        return "cosine"
    if producer.op_type == "Softmax":
        return "probabilities"
    if producer.op_type == "LogSoftmax":
        return "log_probabilities"
    if _is_linear(producer) and _last_dim(value) != 1:
        return "logits"
    return "cosine"


def measures_of(model: ir.Model, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """{output name: measure} for every graph output; ``overrides`` win (names are checked)."""
    found = {v.name: measure_for(v) for v in model.graph.outputs}
    overrides = dict(overrides or {})
    problems = []
    if unknown := sorted(set(overrides) - set(found)):
        problems.append(f"unknown outputs {unknown} (outputs: {list(found)})")
    if bad := sorted(f"{k}={v!r}" for k, v in overrides.items() if v not in MEASURES):
        problems.append(f"unknown measures {bad} (choose from {list(MEASURES)})")
    if problems:
        raise CalibrationError("fidelity overrides: " + "; ".join(problems))
    return found | overrides


def _source(value: ir.Value) -> ir.Node | None:
    node = value.producer()
    while node is not None and node.op_type in _TRANSPARENT_OPS and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    return node


def _is_linear(node: ir.Node) -> bool:
    if node.op_type in _LINEAR_OPS:
        return True
    if node.op_type != "Add":
        return False
    return any(v is not None and v.producer() is not None and v.producer().op_type in _LINEAR_OPS
               for v in node.inputs)


def _last_dim(value: ir.Value) -> int | None:
    if value.shape is None or len(value.shape) == 0:
        return None
    last = value.shape[-1]
    return last if isinstance(last, int) else None


@dataclasses.dataclass
class OutputDifference:
    """One output against the original (see the module docstring)."""

    name: str
    measure: str
    dtype: str
    shape: list[int]
    elements: int
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    finite: bool = True
    mismatched: int | None = None  # exact outputs: elements that differ
    cosine: float | None = None  # mean over rows
    min_cosine: float | None = None
    kl: float | None = None  # mean over rows, nats
    top1: float | None = None  # fraction of rows whose argmax agrees

    @property
    def exact(self) -> bool:
        return self.measure == "exact"

    def within(self, tolerance: float) -> bool:
        """Exact outputs match; float outputs are finite with ``max_rel`` ≤ ``tolerance``."""
        if self.exact:
            return self.mismatched == 0
        return self.finite and self.max_rel <= tolerance

    def fidelity(self) -> str:
        """The fidelity in a few words: ``cos 0.998 (min 0.95)``, ``KL 0.012, top-1 97.5%``."""
        if self.exact:
            return "identical" if self.mismatched == 0 else f"{self.mismatched:,} of {self.elements:,} differ"
        if self.measure == "cosine":
            return f"cos {self.cosine:.4f} (min {self.min_cosine:.4f})"
        return f"KL {self.kl:.3g}, top-1 {100 * self.top1:.1f}%"

    def violation(self, tolerance: float) -> str:
        """Why this output is not ``within(tolerance)``, naming it."""
        if self.exact:
            return f"{self.name!r} ({self.dtype}, compared exactly): {self.fidelity()}"
        if not self.finite:
            return f"{self.name!r} has NaN or Inf"
        return f"{self.name!r}: max relative error {self.max_rel:.3g} > {tolerance:g}"


@dataclasses.dataclass
class OutputError:
    """Every output against the original; the float summaries are the worst output's."""

    outputs: list[OutputDifference]

    @classmethod
    def between(
        cls,
        outputs: Sequence[Sequence[np.ndarray]],
        reference: Sequence[Sequence[np.ndarray]],
        names: Sequence[str] | None = None,
        measures: Mapping[str, str] | None = None,
    ) -> OutputError:
        """Error of ``outputs`` (per batch, per output in ``names`` order) against ``reference``."""
        count = len(reference[0]) if len(reference) else 0
        names = list(names) if names is not None else [f"output {i}" for i in range(count)]
        measures = dict(measures or {})
        accumulators = [_Accumulator(name, measures.get(name)) for name in names]
        for batch, ref_batch in zip(outputs, reference):
            for accumulator, got, want in zip(accumulators, batch, ref_batch):
                accumulator.add(np.asarray(got), np.asarray(want))
        return cls([a.result() for a in accumulators])

    @classmethod
    def of_runs(cls, got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                measures: Mapping[str, str] | None = None) -> OutputError:
        """One batch given as {output name: array}, the names of ``expected`` counting."""
        names = list(expected)
        return cls.between([[got[n] for n in names]], [[expected[n] for n in names]], names, measures)

    def _floats(self) -> list[OutputDifference]:
        return [o for o in self.outputs if not o.exact]

    def _worst(self, field: str) -> float:
        return max((getattr(o, field) for o in self._floats()), default=0.0)

    @property
    def max_abs(self) -> float:
        return self._worst("max_abs")

    @property
    def mean_abs(self) -> float:
        return self._worst("mean_abs")

    @property
    def max_rel(self) -> float:
        return self._worst("max_rel")

    @property
    def mean_rel(self) -> float:
        return self._worst("mean_rel")

    @property
    def finite(self) -> bool:
        return all(o.finite for o in self._floats())

    def exceeding(self, tolerance: float) -> list[OutputDifference]:
        """The outputs that are not within ``tolerance`` (exact ones: any difference)."""
        return [o for o in self.outputs if not o.within(tolerance)]

    def violations(self, tolerance: float) -> str:
        """``exceeding(tolerance)`` as one line naming each output and its error."""
        return "; ".join(o.violation(tolerance) for o in self.exceeding(tolerance))

    def to_dict(self) -> dict:
        """JSON-ready: the worst float output's summaries and every output's fields."""
        worst = {k: getattr(self, k) for k in ("max_abs", "mean_abs", "max_rel", "mean_rel", "finite")}
        return worst | {"outputs": [dataclasses.asdict(o) for o in self.outputs]}

    def fidelity(self) -> str:
        """Each output's fidelity, ``name: measure`` joined (the output name left out for one)."""
        if len(self.outputs) == 1:
            return self.outputs[0].fidelity()
        return "; ".join(f"{o.name}: {o.fidelity()}" for o in self.outputs)


class _Accumulator:
    """Streams one output's batches into the sums of ``OutputDifference``."""

    def __init__(self, name: str, measure: str | None):
        self.name = name
        self.measure = measure
        self.dtype = ""
        self.shape: list[int] = []
        self.elements = 0
        self.max_abs = self.max_ref = self.sum_abs = self.sum_ref = 0.0
        self.finite = True
        self.mismatched = 0
        self.rows = 0
        self.cosines: list[np.ndarray] = []
        self.kl_sum = 0.0
        self.agree = 0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        if not self.dtype:
            self.dtype, self.shape = str(want.dtype), list(want.shape)
            floating = np.issubdtype(want.dtype, np.floating)
            self.measure = self.measure or ("cosine" if floating else "exact")
            if not floating and self.measure != "exact":
                self.measure = "exact"
        self.elements += want.size
        if self.measure == "exact":
            self.mismatched += int(np.count_nonzero(got != want)) if got.shape == want.shape else want.size
            return
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        self.finite = self.finite and bool(np.isfinite(got64).all())
        diff = np.abs(got64 - want64)
        self.max_abs = max(self.max_abs, float(np.nanmax(diff, initial=0.0)))
        self.max_ref = max(self.max_ref, float(np.abs(want64).max(initial=0.0)))
        self.sum_abs += float(np.nansum(diff))
        self.sum_ref += float(np.abs(want64).sum())
        if self.measure == "cosine":
            self.cosines.append(_row_cosines(got64, want64))
        else:
            self._add_distribution(got64, want64)

    def _add_distribution(self, got: np.ndarray, want: np.ndarray) -> None:
        """KL and top-1 over rows, ``_ROWS`` rows at a time (an LM's logits are large)."""
        got, want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        for start in range(0, len(want), _ROWS):
            q_rows, p_rows = got[start : start + _ROWS], want[start : start + _ROWS]
            log_q, log_p = _log_distribution(q_rows, self.measure), _log_distribution(p_rows, self.measure)
            p = np.exp(log_p)
            kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=-1)
            self.kl_sum += float(np.nansum(kl))
            self.agree += int(np.count_nonzero(q_rows.argmax(axis=-1) == p_rows.argmax(axis=-1)))
            self.rows += len(kl)

    def result(self) -> OutputDifference:
        diff = OutputDifference(self.name, self.measure or "cosine", self.dtype, self.shape, self.elements)
        if diff.exact:
            diff.mismatched = self.mismatched
            return diff
        count = max(self.elements, 1)
        diff.max_abs, diff.mean_abs = self.max_abs, self.sum_abs / count
        diff.max_rel = self.max_abs / self.max_ref if self.max_ref else self.max_abs
        mean_ref = self.sum_ref / count
        diff.mean_rel = diff.mean_abs / mean_ref if mean_ref else diff.mean_abs
        diff.finite = self.finite
        if diff.measure == "cosine":
            cosines = np.concatenate(self.cosines) if self.cosines else np.ones(1)
            diff.cosine, diff.min_cosine = float(np.nanmean(cosines)), float(np.nanmin(cosines))
        else:
            diff.kl = self.kl_sum / max(self.rows, 1)
            diff.top1 = self.agree / max(self.rows, 1)
        return diff


def _row_cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """cos of each row: the last axis, or each sample flattened for rank ≥ 4 (1 where both are 0)."""
    if want.ndim >= 4:
        got, want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    elif want.ndim == 0:
        got, want = got.reshape(1, 1), want.reshape(1, 1)
    got, want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    dots = np.einsum("ij,ij->i", got, want)
    both_zero = (norms == 0) & ~np.any(got - want, axis=1)
    return np.where(both_zero, 1.0, dots / np.maximum(norms, _EPSILON))


def _log_distribution(values: np.ndarray, measure: str) -> np.ndarray:
    """log p over the last axis: log-softmax of logits, log of probabilities."""
    if measure == "logits":
        shifted = values - values.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    if measure == "log_probabilities":
        return values
    return np.log(np.clip(values, _EPSILON, None))
