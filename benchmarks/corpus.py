"""The outcome matrix: every pass (and the TVM backend, and tune) on every corpus model.

Each cell compiles one recipe of ``sparc.eval.corpus.RECIPES`` on one corpus model and is
judged by ``sparc.eval.corpus.outcome``: ok (with fidelity, params, MACs, speedup, quality),
no-op with its reason, refused with a clean SparcError, or DEFECT.

Usage: python benchmarks/corpus.py [--models NAME ...] [--recipes NAME ...] [--small] [--merge] [--tag T]
       python benchmarks/corpus.py --absorb T ...   (merge shards run in parallel with --tag T)
Writes results/corpus.{json,md}; with --merge, the stored cells not measured now are kept,
each with the commit it was measured at. The CI subset is ``tests/test_corpus.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common import RESULTS, write_results

from sparc.eval import corpus
from sparc.runtime import OrtRunner

LATENCY_ROUNDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--recipes", nargs="+", default=None, choices=list(corpus.RECIPES))
    parser.add_argument("--small", action="store_true", help="only the CI subset's models")
    parser.add_argument("--tag", default="")
    parser.add_argument("--merge", action="store_true", help="keep the stored cells not measured now")
    parser.add_argument("--absorb", nargs="+", default=None, metavar="TAG",
                        help="merge the cells of results/corpus<TAG>.json (shards run in parallel) into "
                             "results/corpus.json, replacing the same (model, recipe) cells")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite results/corpus<tag>.md from its .json (judgements re-applied)")
    args = parser.parse_args()
    if args.absorb:
        return _absorb(args.absorb)
    if args.markdown_only:
        return _rewrite_markdown(args.tag)
    entries = [corpus.by_name(n) for n in args.models] if args.models else [
        e for e in corpus.ENTRIES if e.small or not args.small]
    recipes = args.recipes or list(corpus.RECIPES)
    kept = _stored_rows(args.tag, {e.name for e in entries}, set(recipes)) if args.merge else []
    rows, commit = [], _commit()
    for entry in entries:
        path = corpus.fetch(entry)
        calibration, evaluation = entry.data()
        dense = OrtRunner(str(path), threads=1)
        reference = [dense.run(f) for f in evaluation]
        for name in recipes:
            row = {"model": entry.name, "recipe": name, "commit": commit} | corpus.outcome(
                entry, path, corpus.RECIPES[name], calibration, evaluation, reference, LATENCY_ROUNDS)
            print(_line(row), flush=True)
            rows.append(row)
            everything = _in_corpus_order(kept + rows)  # written after each cell
            done = [e for e in corpus.ENTRIES if any(r["model"] == e.name for r in everything)]
            write_results(f"corpus{args.tag}", {"rows": everything, "models": _models(done)},
                          _markdown(done, everything), echo=False)


def _absorb(tags: list[str]) -> None:
    cells = {(r["model"], r["recipe"]): r for r in _stored_rows("", set(), set())}
    for tag in tags:
        cells.update({(r["model"], r["recipe"]): r for r in json.loads((RESULTS / f"corpus{tag}.json").read_text())["rows"]})
    rows = _in_corpus_order(list(cells.values()))
    done = [e for e in corpus.ENTRIES if any(r["model"] == e.name for r in rows)]
    write_results("corpus", {"rows": rows, "models": _models(done)}, _markdown(done, rows))


def _stored_rows(tag: str, models: set[str], recipes: set[str]) -> list[dict]:
    """The stored cells this run does not measure again."""
    path = RESULTS / f"corpus{tag}.json"
    stored = json.loads(path.read_text())["rows"] if path.exists() else []
    return [row for row in stored if row["model"] not in models or row["recipe"] not in recipes]


def _in_corpus_order(rows: list[dict]) -> list[dict]:
    order = {e.name: i for i, e in enumerate(corpus.ENTRIES)}
    recipes = {name: i for i, name in enumerate(corpus.RECIPES)}
    return sorted(rows, key=lambda r: (order[r["model"]], recipes.get(r["recipe"], len(recipes))))


def _line(row: dict) -> str:
    detail = row.get("reason") or ", ".join(
        f"{k} {row[k]}" for k in ("fidelity", "params", "macs", "speedup") if row.get(k) is not None)
    quality = row.get("quality")
    return f"{row['model']:22s} {row['recipe']:36s} {row['outcome']:8s} {detail}" + (f" | {quality}" if quality else "")


def _rewrite_markdown(tag: str) -> None:
    data = json.loads((RESULTS / f"corpus{tag}.json").read_text())
    rows = [corpus.flag_growth(row) for row in data["rows"]]
    entries = [corpus.by_name(m["name"]) for m in data["models"]]
    write_results(f"corpus{tag}", data | {"rows": rows}, _markdown(entries, rows))


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent)
    return result.stdout.strip() or "unknown"


def _models(entries) -> list[dict]:
    return [{"name": e.name, "package": e.requirement, "file": e.member, "exporter": e.exporter, "task": e.task}
            for e in entries]


def _commits(rows) -> str:
    """Which commit measured which cells, e.g. 'abc1234: 180 cells; def5678: 15 cells (recipe R)'."""
    by_commit: dict[str, list[dict]] = {}
    for row in rows:
        by_commit.setdefault(row.get("commit", "unknown"), []).append(row)
    parts = []
    for commit, cells in by_commit.items():
        recipes = sorted({r["recipe"] for r in cells})
        scope = f" ({', '.join(recipes)})" if len(recipes) < len(corpus.RECIPES) else ""
        parts.append(f"{commit}: {len(cells)} cells{scope}")
    return "; ".join(parts)


def _markdown(entries, rows) -> str:
    lines = ["# The corpus outcome matrix", "",
             f"Written on {time.strftime('%Y-%m-%d')}. Measured at {_commits(rows)}.", "",
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
    counted = [r for r in rows if r["outcome"] == "ok" and r["recipe"] not in corpus.NOT_COMPRESSING]
    better = sum(corpus.smaller_or_faster(r) for r in counted)
    lines += ["", "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
              f"Smaller or faster: {better} of the {len(counted)} ok cells of compressing recipes "
              f"({100 * better / max(len(counted), 1):.0f}%; params or executed MACs below 0.995× the original's, "
              f"or ≥ {corpus.SPEEDUP_NOISE}× faster; {', '.join(corpus.NOT_COMPRESSING)} not counted).", "",
              "| model | recipe | outcome | fidelity / reason | params | MACs | speedup | quality | s |",
              "|---|---|---|---|---:|---:|---:|---|---:|"]
    for row in rows:
        quality = ", ".join(f"{k} {v}" for k, v in (row.get("quality") or {}).items())
        lines.append(f"| {row['model']} | {row['recipe']} | {row['outcome']} | "
                     f"{row.get('reason') or row.get('fidelity', '')} | {row.get('params', '')} | "
                     f"{row.get('macs', '')} | {row.get('speedup', '')} | {quality} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
