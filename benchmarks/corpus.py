"""The outcome matrix: every pass (and the TVM backend, and tune) on every corpus model.

Each cell compiles one recipe on one model of ``sparc.eval.corpus`` (calibration: the entry's
calibration batches, the last held out) and says one of:
- ``ok``: the compiled model passed the ONNX checker and ran; with its fidelity on the held-out
  batch, parameters and MACs against the original, the latency ratio timed side by side, and
  the entry's task measure on evaluation data no pass saw;
- ``no-op``: the pass changed nothing and the report says why;
- ``refused``: a clean ``SparcError`` naming why the model is out of scope;
- ``DEFECT``: anything else: a crash, an internal error wrapped in a PassError, output that the
  checker or ONNX Runtime rejects, or a no-op without a reason.

Usage: python benchmarks/corpus.py [--models NAME ...] [--recipes NAME ...] [--small]
Writes results/corpus.{json,md}. The CI subset is ``tests/test_corpus.py``.
"""

from __future__ import annotations

import argparse
import time
import traceback

import onnx_ir as ir
from common import write_results

import sparc
from sparc.errors import PassError, SparcError
from sparc.eval import corpus
from sparc.runtime import OrtRunner

RECIPES = {
    "clean-up": [{"FoldConstants": {}}, {"RemoveUnused": {}}],
    "ChannelCrop 0.3": [{"ChannelCrop": {"ratio": 0.3}}],
    "ChannelCrop 0.3 + RecalibrateNorms": [{"ChannelCrop": {"ratio": 0.3}}, {"RecalibrateNorms": {}}],
    "ChannelCrop 0.3 + Reconstruct": [{"ChannelCrop": {"ratio": 0.3}}, {"Reconstruct": {"steps": 20}}],
    "SliceRowsColumns 0.2": [{"SliceRowsColumns": {"ratio": 0.2}}],
    "2:4 Wanda": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}],
    "2:4 Wanda + FuseSparseOps": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}, {"FuseSparseOps": {}}],
    "2:4 Wanda + Distill": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}, {"Distill": {"steps": 20}}],
    "16×1 d0.5 SparseGPT": [{"BlockSparsity": {"block": [16, 1], "density": 0.5, "method": "sparsegpt"}}],
    "unstructured 0.5 OWL": [{"UnstructuredSparsity": {"density": 0.5, "method": "wanda", "owl": 0.05}}],
    "TokenRouter 0.8": [{"TokenRouter": {"keep": 0.8}}],
    "TVM: 16×1 d0.3": {"passes": [{"BlockSparsity": {"block": [16, 1], "density": 0.3}}, {"FuseSparseOps": {}}],
                       "backend": "tvm"},
    "tune (4 trials)": "tune",
}
LATENCY_ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--recipes", nargs="+", default=None, choices=list(RECIPES))
    parser.add_argument("--small", action="store_true", help="only the CI subset's models")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    entries = [corpus.by_name(n) for n in args.models] if args.models else [
        e for e in corpus.ENTRIES if e.small or not args.small]
    rows = []
    for entry in entries:
        path = corpus.fetch(entry)
        calibration, evaluation = entry.data()
        dense = OrtRunner(str(path), threads=1)
        reference = [dense.run(f) for f in evaluation]
        for name in args.recipes or RECIPES:
            row = {"model": entry.name, "recipe": name} | cell(entry, path, RECIPES[name], calibration, evaluation,
                                                             reference)
            print(_line(row), flush=True)
            rows.append(row)
    write_results(f"corpus{args.tag}", {"rows": rows, "models": _models(entries)}, _markdown(entries, rows))


def cell(entry, path, recipe, calibration, evaluation, reference) -> dict:
    """One compile, classified as in the module docstring."""
    start = time.perf_counter()
    try:
        if recipe == "tune":
            result = sparc.tune(str(path), calibration=calibration, max_loss=0.05, trials=4, time_budget=300,
                                threads=1)
            compiled, note = result.compiled, result.message
        else:
            compiled = sparc.compile(str(path), calibration=calibration, recipe=recipe, threads=1,
                                     latency_rounds=LATENCY_ROUNDS)
            note = ""
        outcome = _judge(compiled, recipe)
        outcome.update(_measures(compiled, entry, evaluation, reference))
        if note:
            outcome["note"] = note
    except PassError as exc:
        outcome = _refusal(exc)
    except SparcError as exc:
        outcome = {"outcome": "refused", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
    except Exception as exc:  # a crash is what this matrix exists to find
        outcome = {"outcome": "DEFECT", "reason": f"crash {type(exc).__name__}: {_first_line(exc)}",
                   "trace": traceback.format_exc(limit=-3)}
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    return outcome


def _judge(compiled, recipe) -> dict:
    """ok, no-op with its reason, or a DEFECT (checker rejection, no-op without a reason)."""
    import onnx

    try:
        onnx.checker.check_model(ir.serde.serialize_model(compiled.model), full_check=False)
    except Exception as exc:
        return {"outcome": "DEFECT", "reason": f"the ONNX checker rejects the output: {_first_line(exc)}"}
    if recipe == "tune" or not isinstance(recipe, list) or len(recipe) > 1 or "FoldConstants" in recipe[0]:
        return {"outcome": "ok"}
    entry = compiled.report.passes[-1]
    if entry.modified:
        return {"outcome": "ok"}
    reason = entry.details.get("skipped") or entry.details.get("reason")
    if reason:
        return {"outcome": "no-op", "reason": str(reason)}
    return {"outcome": "DEFECT", "reason": f"silent no-op: {entry.details}"}


def _measures(compiled, entry, evaluation, reference) -> dict:
    report = compiled.report
    out = {"fidelity": report.error.fidelity() if report.error else "",
           "params": round(report.final.params / max(report.original.params, 1), 3),
           "macs": round(report.macs_ratio, 3) if report.macs_ratio is not None else None,
           "speedup": round(report.latency.speedup, 3) if report.latency else None,
           "backend": report.backend}
    if entry.quality is not None:
        out["quality"] = entry.quality(compiled.run, evaluation, reference)
    return out


def _refusal(exc: PassError) -> dict:
    """A PassError is clean unless an internal exception caused it or its output was invalid."""
    cause = exc.__cause__
    while isinstance(cause, SparcError) and cause.__cause__ is not None:
        cause = cause.__cause__
    message = _first_line(exc)
    if cause is not None and not isinstance(cause, (SparcError, ir.passes.PreconditionError)):
        return {"outcome": "DEFECT", "reason": f"wrapped {type(cause).__name__}: {message}"}
    if "does not run" in message or "checker rejects" in message:
        return {"outcome": "DEFECT", "reason": message}
    return {"outcome": "refused", "reason": f"PassError: {message}"}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:400]


def _line(row: dict) -> str:
    detail = row.get("reason") or ", ".join(
        f"{k} {row[k]}" for k in ("fidelity", "params", "macs", "speedup") if row.get(k) is not None)
    quality = row.get("quality")
    return f"{row['model']:22s} {row['recipe']:36s} {row['outcome']:8s} {detail}" + (f" | {quality}" if quality else "")


def _models(entries) -> list[dict]:
    return [{"name": e.name, "package": e.requirement, "file": e.member, "exporter": e.exporter, "task": e.task}
            for e in entries]


def _markdown(entries, rows) -> str:
    lines = ["# The corpus outcome matrix", "",
             "`python benchmarks/corpus.py`: every recipe on every model of `sparc.eval.corpus` (ONNX files that "
             "pip packages ship, written by other exporters), 1 thread. Fidelity on the held-out calibration batch; "
             "params and MACs (as the backend executes them) against the original; speedup timed side by side "
             f"({LATENCY_ROUNDS} interleaved rounds, batch of the held-out set); quality: the model's task measure "
             "on evaluation data no pass saw.", "",
             "| model | package | exporter | task |", "|---|---|---|---|"]
    lines += [f"| {e.name} | {e.requirement} | {e.exporter} | {e.task} |" for e in entries]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    lines += ["", "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
              "| model | recipe | outcome | fidelity / reason | params | MACs | speedup | quality | s |",
              "|---|---|---|---|---:|---:|---:|---|---:|"]
    for row in rows:
        quality = ", ".join(f"{k} {v}" for k, v in (row.get("quality") or {}).items())
        lines.append(f"| {row['model']} | {row['recipe']} | {row['outcome']} | "
                     f"{row.get('fidelity') or row.get('reason', '')} | {row.get('params', '')} | "
                     f"{row.get('macs', '')} | {row.get('speedup', '')} | {quality} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
