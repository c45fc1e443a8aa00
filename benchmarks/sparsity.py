"""Fine-grained sparsity: SmolLM2-135M perplexity, MiniLM-L6 similarity, export sizes.

SmolLM2-135M: every linear layer of the 30 blocks (the tied LM head stays dense) at 2:4, 4:8,
50% unstructured and 16x1 blocks at 50/70/90% density-removed, each with magnitude, Wanda
and SparseGPT. Calibration: 64 windows of 512 tokens from the gensim enwiki articles.
Evaluation: 32 windows of 512 tokens of the ovos Wikipedia leads (disjoint text). Compile
time is the sparsity pass's wall time, calibration included.

MiniLM-L6: 2:4 and 50% unstructured with each method; calibration 128 Lee background
stories, quality the Pearson r against the 1,225 human-rated Lee pairs.

Export size: each sparsified model fused (FuseSparseOps) and written as ``standard``
(dense weights, stock ONNX) and ``sparc`` (compressed ``ai.sparc.SparseLinear``).

Usage: python benchmarks/sparsity.py [--part smollm2 minilm sizes] [--methods ...]
Writes results/sparsity_smollm2.{json,md} and results/sparsity_minilm.{json,md};
``--part sizes`` only the SmolLM2 export sizes (results/sparsity_sizes.{json,md}).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder
from sparc.passes import BlockSparsity, FuseSparseOps, NMSparsity, UnstructuredSparsity
from sparc.runtime import OrtRunner

METHODS = ("magnitude", "wanda", "sparsegpt")
SMOLLM2_PATTERNS = {
    "2:4": lambda method: NMSparsity(n=2, m=4, method=method),
    "4:8": lambda method: NMSparsity(n=4, m=8, method=method),
    "50% unstructured": lambda method: UnstructuredSparsity(density=0.5, method=method),
    "50% 16x1": lambda method: BlockSparsity(block=(16, 1), density=0.5, method=method),
    "70% 16x1": lambda method: BlockSparsity(block=(16, 1), density=0.3, method=method),
    "90% 16x1": lambda method: BlockSparsity(block=(16, 1), density=0.1, method=method),
}
MINILM_PATTERNS = {key: SMOLLM2_PATTERNS[key] for key in ("2:4", "50% unstructured")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["smollm2", "minilm"], choices=["smollm2", "minilm", "sizes"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--patterns", nargs="+", default=list(SMOLLM2_PATTERNS), choices=list(SMOLLM2_PATTERNS))
    parser.add_argument("--calib", type=int, default=64, help="SmolLM2 calibration windows of 512")
    parser.add_argument("--eval", type=int, default=32, help="SmolLM2 evaluation windows of 512")
    args = parser.parse_args()
    if "smollm2" in args.part:
        smollm2(args)
    if "minilm" in args.part:
        minilm(args)
    if "sizes" in args.part:
        smollm2_sizes(args)


def smollm2_sizes(args) -> None:
    """Export sizes only (magnitude masks, fused), for every SmolLM2 pattern."""
    path = str(zoo.smollm2_onnx())
    rows, data = [], {}
    for name in args.patterns:
        compiled = _compile(path, SMOLLM2_PATTERNS[name]("magnitude"), None, threads=2)
        data[name] = _export_sizes(compiled, None)
        rows.append(f"| {name} | {data[name]['standard']:.1f} | {data[name]['sparc']:.1f} | "
                    f"{data[name]['sparc'] / data[name]['standard']:.2f} |")
        print(rows[-1], flush=True)
    table = ("# SmolLM2-135M export size after FuseSparseOps (MB)\n\n"
             "| pattern | standard | sparc | ratio |\n|---|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    write_results("sparsity_sizes", data, table)


def smollm2(args) -> None:
    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=512, count=args.calib)
    calibration = [
        {"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), 512), np.int64)}
        for chunk in (windows[i : i + 8] for i in range(0, len(windows), 8))
    ]
    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=512, count=args.eval)
    dense = OrtRunner(sparc.capture.load_onnx(path), threads=2)
    dense_ppl = quality.perplexity(lambda f: next(iter(dense.run(f).values())), evaluation)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    runs = []
    for name in args.patterns:
        for method in args.methods:
            compiled = _compile(path, SMOLLM2_PATTERNS[name](method), calibration, threads=2)
            record = _record(name, method, compiled, quality.perplexity(compiled, evaluation))
            record["sizes_mb"] = runs[-1]["sizes_mb"] if runs and runs[-1]["pattern"] == name else \
                _export_sizes(compiled, calibration[:1])  # the same for every method
            runs.append(record)
            print(record, flush=True)
    table = (
        "# Fine-grained sparsity on SmolLM2-135M (perplexity, lower is better)\n\n"
        f"Dense perplexity {dense_ppl:.2f} ({args.eval} windows of 512 tokens of the ovos Wikipedia "
        f"leads); calibration {args.calib} windows of 512 from the gensim enwiki articles. All 210 "
        "block linear layers sparsified; the tied LM head stays dense. Time: the pass's wall "
        "seconds, calibration included. Sizes: exported after FuseSparseOps, MB (measured on "
        "the first method's model of each pattern).\n\n"
        + _table(runs, "perplexity", f"| dense | {dense_ppl:.2f} | | | | | |")
    )
    write_results("sparsity_smollm2", {"dense_perplexity": dense_ppl, "runs": runs}, table)


def minilm(args) -> None:
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:128], 16, seq=128)
    example = zoo.torch_inputs(calibration[0])
    captured = sparc.capture.capture(model.module, example_inputs=example, dynamic_axes=model.dynamic_axes)
    dense = OrtRunner(captured, threads=2)
    dense_r = quality.lee_correlation(encoder(lambda f: next(iter(dense.run(f).values())), model))
    runs = []
    for name, make in MINILM_PATTERNS.items():
        for method in args.methods:
            compiled = _compile(captured, make(method), calibration, threads=2)
            record = _record(name, method, compiled, quality.lee_correlation(encoder(compiled, model)))
            record["sizes_mb"] = _export_sizes(compiled, calibration[:1])
            runs.append(record)
            print(record, flush=True)
    table = (
        "# Fine-grained sparsity on MiniLM-L6 (Lee similarity Pearson r, higher is better)\n\n"
        "Calibration 128 Lee background stories (seq 128); evaluation the 1,225 human-rated "
        "Lee pairs. All 36 encoder linear layers sparsified. Sizes: exported after "
        "FuseSparseOps, MB.\n\n"
        + _table(runs, "quality", f"| dense | {dense_r:.4f} | | | | | |")
    )
    write_results("sparsity_minilm", {"dense_correlation": dense_r, "runs": runs}, table)


def _compile(model, sparsity_pass, calibration, threads):
    return sparc.compile(model, calibration=calibration, recipe=[sparsity_pass], threads=threads,
                         latency_rounds=0)


def _record(pattern: str, method: str, compiled, value: float) -> dict:
    entry = compiled.report.passes[-1]
    return {"pattern": pattern, "method": method, "quality": value, "perplexity": value,
            "pass_seconds": entry.seconds, "details": entry.details}


def _export_sizes(compiled, calibration) -> dict[str, float]:
    """Fuse (checked against the unfused model on ``calibration``), export both formats; MB."""
    fused = sparc.compile(compiled.model, calibration=calibration, recipe=[FuseSparseOps()], latency_rounds=0)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("standard", "sparc"):
            fused.export(Path(tmp) / f"{fmt}.onnx", format=fmt)
            sizes[fmt] = sum(p.stat().st_size for p in Path(tmp).glob(f"{fmt}.onnx*")) / 1e6
    return sizes


def _table(runs: list[dict], key: str, dense_row: str) -> str:
    lines = ["| pattern | method | value | pass s | damping raised | standard MB | sparc MB |",
             "|---|---|---:|---:|---|---:|---:|", dense_row]
    for r in runs:
        raised = r["details"].get("damping_raised", "")
        raised = f"{len(raised)} inputs" if isinstance(raised, dict) else raised
        lines.append(
            f"| {r['pattern']} | {r['method']} | {r[key]:.{2 if key == 'perplexity' else 4}f} | "
            f"{r['pass_seconds']:.0f} | {raised} | {r['sizes_mb']['standard']:.1f} | {r['sizes_mb']['sparc']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
