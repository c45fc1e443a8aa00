"""ActivationSparsity on SmolLM2-135M: perplexity at 40 / 50 / 60% of every block projection's input zeroed.

The perplexity protocol of ``sparsity.py``: evaluation on 32 windows of 512 tokens of the ovos
Wikipedia leads; calibration on windows of 512 tokens of the gensim enwiki articles (disjoint
text), here 24 windows in batches of 8, of which ``sparc.compile`` holds the last batch out to
verify the pass (so 16 windows calibrate: a quantile needs far fewer samples than SparseGPT's
Hessians). The pass sparsifies the inputs of the 210 linear layers of the 30 blocks (120 Where
nodes: q/k/v and gate/up share theirs); the tied LM head stays dense. Also measured: the
fraction of each Where's outputs that are zero on the first 4 evaluation windows (held-out
text), min / mean / max over the 120 inputs. Perplexity runs in ONNX Runtime (the thresholding
is the same on every backend).

Usage: python benchmarks/activation_sparsity_smollm2.py [--fractions 0.4 0.5 0.6] [--calib 24] [--eval 32]
Writes results/activation_sparsity_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.measure.execute import exposing_runner
from sparc.passes import ActivationSparsity
from sparc.passes.activation_sparsity import ANNOTATION_KEY
from sparc.runtime import OrtRunner

WINDOW = 512
HELD_OUT_WINDOWS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--calib", type=int, default=24, help="calibration windows of 512 (the last 8 verify)")
    parser.add_argument("--eval", type=int, default=32, help="evaluation windows of 512")
    args = parser.parse_args()
    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=WINDOW,
                                    count=args.calib)
    calibration = [{"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), WINDOW), np.int64)}
                   for chunk in (windows[i : i + 8] for i in range(0, len(windows), 8))]
    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=WINDOW, count=args.eval)
    dense = OrtRunner(sparc.capture.load_onnx(path), threads=2)
    dense_ppl = quality.perplexity(lambda f: next(iter(dense.run(f).values())), evaluation)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    runs = []
    for fraction in args.fractions:
        compiled = sparc.compile(path, calibration=calibration, recipe=[ActivationSparsity(fraction=fraction)],
                                 threads=2, latency_rounds=0)
        entry = compiled.report.passes[-1]
        runs.append({"fraction": fraction, "perplexity": quality.perplexity(compiled, evaluation),
                     "pass_seconds": entry.seconds, "layers": entry.details["layers"],
                     "inputs": entry.details["inputs"], "held_out_zero": held_out_zeros(compiled.model, evaluation)})
        runs[-1]["ratio"] = runs[-1]["perplexity"] / dense_ppl
        print(runs[-1], flush=True)
    write_results("activation_sparsity_smollm2", {"dense_perplexity": dense_ppl, "runs": runs},
                  markdown(dense_ppl, runs, args))


def held_out_zeros(model, evaluation) -> dict[str, float]:
    """Min / mean / max over the Where nodes of the fraction of their outputs that are zero."""
    wheres = [n for n in model.graph if n.op_type == "Where" and ANNOTATION_KEY in n.metadata_props]
    runner = exposing_runner(model, [w.outputs[0].name for w in wheres], threads=2)
    zeros = np.zeros(len(wheres))
    for window in evaluation[:HELD_OUT_WINDOWS]:
        outputs = runner.run(quality.window_feeds(window))
        zeros += [np.mean(outputs[w.outputs[0].name] == 0) for w in wheres]
    zeros /= HELD_OUT_WINDOWS
    return {"min": float(zeros.min()), "mean": float(zeros.mean()), "max": float(zeros.max())}


def markdown(dense_ppl: float, runs: list[dict], args) -> str:
    lines = ["# ActivationSparsity on SmolLM2-135M (perplexity, lower is better)", "",
             f"Dense perplexity {dense_ppl:.2f} ({args.eval} windows of {WINDOW} tokens of the ovos Wikipedia "
             f"leads); calibration {args.calib - 8} windows of {WINDOW} from the gensim enwiki articles (8 more verify "
             f"the pass). Held-out zeros: the fraction of each Where's outputs that are zero on "
             f"{HELD_OUT_WINDOWS} evaluation windows, min / mean / max over the {runs[0]['inputs']} inputs of "
             f"{runs[0]['layers']} layers.", "",
             "| fraction | perplexity | × dense | held-out zeros (min / mean / max) | pass s |",
             "|---:|---:|---:|---|---:|", f"| dense | {dense_ppl:.2f} | 1.00 | | |"]
    for r in runs:
        z = r["held_out_zero"]
        lines.append(f"| {r['fraction']:.0%} | {r['perplexity']:.2f} | {r['ratio']:.2f} | "
                     f"{z['min']:.3f} / {z['mean']:.3f} / {z['max']:.3f} | {r['pass_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
