"""SmolLM2-135M text generation: sparc TVM decode per token against ONNX Runtime dense, with the
perplexity of every variant and its decode peak memory.

Variants (each ``sparc.compile`` of the KV-cache decoder, ``zoo.smollm2_kv_onnx``; SparseGPT
block by block, each block calibrated on the outputs of the already sparsified blocks before
it, over 16 windows of 512 tokens of the gensim enwiki articles; the LM head stays dense, as
the sparsity passes leave graph outputs):

- ``dense``; ``unstructured-0.5``; ``2:4``; ``16x1-0.3`` (16×1 blocks at density 0.3);
- ``act-0.25`` / ``act-0.4`` / ``act-0.5`` / ``act-0.6``: ``ActivationSparsity`` at that fraction.

Quality: perplexity on 16 windows of 512 tokens of the ovos Wikipedia leads (disjoint from the
calibration text), run in ONNX Runtime. Speed: a 128-token prompt of Lee corpus text, 128 new
tokens, greedy; ONNX Runtime dense (growing cache) and every TVM variant (static cache) in
interleaved rounds, one process per thread count; the speed-up is the median per-round ratio of
decode ms/token to ONNX Runtime dense. The dense TVM and ONNX Runtime tokens are checked against
Hugging Face's greedy ``generate``. Memory: each variant in its own process (``--rss VARIANT``),
the peak RSS over 32 decode steps after compiling and warming up.

    python benchmarks/decode.py                      # build, time at 1 and 2 threads, memory
    python benchmarks/decode.py --threads 1 --variants dense 2:4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import sparc
from sparc.capture import load_onnx
from sparc.capture.kv_cache import complete_feeds, find_kv_cache
from sparc.eval import datasets, quality, zoo
from sparc.eval.bench_models import prompt_ids
from sparc.files import cache_dir, write_atomic
from sparc.generation import decoder_for, time_generation
from sparc.measure.memory import PeakMemory
from sparc.measure.outputs import OutputError
from sparc.runtime import OrtRunner

RESULTS = Path(__file__).parent / "results"
VARIANTS = ["dense", "unstructured-0.5", "2:4", "16x1-0.3", "act-0.25", "act-0.4", "act-0.5", "act-0.6",
            "unstructured-0.5+head", "2:4+head", "16x1-0.3+head"]
CAPACITY = 256  # static cache slots: 128 prompt + 128 new tokens


def recipe(variant: str) -> list:
    """The passes of ``variant``; a ``+head`` suffix sparsifies the (tied) LM head too."""
    passes = sparc.passes
    base, head = variant.removesuffix("+head"), variant.endswith("+head")
    if base == "dense" and not head:
        return []
    if base == "unstructured-0.5":
        return [passes.UnstructuredSparsity(density=0.5, method="sparsegpt", include_outputs=head)]
    if base == "2:4":
        return [passes.NMSparsity(n=2, m=4, method="sparsegpt", include_outputs=head)]
    if base == "16x1-0.3":
        return [passes.BlockSparsity(block=(16, 1), density=0.3, method="sparsegpt", include_outputs=head)]
    if base.startswith("act-") and not head:
        return [passes.ActivationSparsity(fraction=float(base[4:]))]
    raise SystemExit(f"unknown variant {variant!r}; variants: {VARIANTS}")


def folder() -> Path:
    path = cache_dir() / "decode-bench"
    path.mkdir(exist_ok=True)
    return path


def model_path(variant: str) -> Path:
    return folder() / f"{variant.replace(':', '-').replace('+', '-')}.onnx"


def export(variant: str, calib: int) -> float:
    """Compile ``variant`` and export it (cached); the compile seconds."""
    seconds_path = model_path(variant).with_suffix(".compile.json")
    if seconds_path.is_file() and model_path(variant).is_file():
        return json.loads(seconds_path.read_text())["compile_s"]
    tokenizer = zoo.smollm2_tokenizer()
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=512, count=calib)
    started = time.perf_counter()
    compiled = sparc.compile(zoo.smollm2_kv_onnx(), calibration=[quality.window_feeds(w) for w in windows],
                             recipe=recipe(variant), validate=False)
    seconds = time.perf_counter() - started
    compiled.export(model_path(variant))
    write_atomic(seconds_path, json.dumps({"compile_s": seconds}))
    return seconds


def build(variant: str, calib: int, evaluation: int) -> dict:
    """Export ``variant`` (cached) and measure, on held-out text (``evaluation`` windows of 512
    tokens of the Wikipedia leads; calibration read enwiki articles), its perplexity and the
    fidelity of its next-token logits at every position to dense's: mean KL(dense ‖ variant)
    in nats and top-1 agreement (every window has 512 positions, so the mean of the windows'
    means is the mean over positions)."""
    info_path = model_path(variant).with_suffix(".quality.json")
    if info_path.is_file():
        return json.loads(info_path.read_text())
    seconds = export(variant, calib)
    tokenizer = zoo.smollm2_tokenizer()
    run, dense_run = _logits_runner(variant), _logits_runner("dense")
    windows = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=512, count=evaluation)
    ppl = quality.perplexity(run, windows)
    kl, top1 = [], []
    for window in windows:
        feeds = quality.window_feeds(window)
        difference = OutputError.of_runs({"logits": run(feeds)}, {"logits": dense_run(feeds)},
                                         {"logits": "logits"}).outputs[0]
        kl.append(difference.kl)
        top1.append(difference.top1)
    info = {"variant": variant, "perplexity": ppl, "kl": float(np.mean(kl)), "top1": float(np.mean(top1)),
            "compile_s": seconds}
    write_atomic(info_path, json.dumps(info))
    return info


def _logits_runner(variant: str):
    """feeds (input_ids, attention_mask) → logits of ``variant`` in ONNX Runtime (empty past)."""
    model = load_onnx(model_path(variant))
    runner, kv = OrtRunner(model), find_kv_cache(model)
    return lambda feeds: runner.run(complete_feeds(feeds, model, kv))["logits"]


def hugging_face_tokens(prompt: list[int], new_tokens: int) -> list[int]:
    import torch

    lm = zoo.smollm2().module.lm
    with torch.no_grad():
        out = lm.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False)
    return out[0, len(prompt):].tolist()


def time_variants(variants: list[str], threads: int, prompt_len: int, new_tokens: int, rounds: int) -> dict:
    tokenizer = zoo.smollm2_tokenizer()
    prompt = prompt_ids(tokenizer, prompt_len)
    decoders = {"ORT dense": decoder_for(model_path("dense"), threads=threads)}
    for variant in variants:
        decoders[f"TVM {variant}"] = decoder_for(model_path(variant), backend="tvm", threads=threads,
                                                capacity=CAPACITY)
    timing = time_generation(decoders, prompt, new_tokens, rounds=rounds, tokenizer=tokenizer)
    reference = hugging_face_tokens(prompt, new_tokens)
    return {
        "threads": threads,
        "timing": timing.to_dict(),
        "markdown": timing.to_markdown(baseline="ORT dense"),
        "speedup": {name: timing.speedup(name, "ORT dense") for name in decoders},
        "matches_hugging_face": {name: timing.tokens[name] == reference for name in ("ORT dense", "TVM dense")
                                 if name in timing.tokens},
    }


def decode_rss(variant: str, steps: int = 32) -> dict:
    """Peak RSS over ``steps`` decode steps of ``variant`` on TVM (after compile and warm-up)."""
    decoder = decoder_for(model_path(variant), backend="tvm", threads=1, capacity=CAPACITY)
    prompt = prompt_ids(zoo.smollm2_tokenizer(), 64)
    decoder.generate(prompt, 2)
    with PeakMemory() as peak:
        decoder.generate(prompt, steps)
    return {"variant": variant, "peak_rss_mb": peak.bytes / 2**20,
            "packed_weight_mb": decoder.runner.constant_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--group", type=int, default=4,
                        help="TVM variants per timing process (each beside ORT dense; a process holds all its models)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the decode peak RSS runs")
    parser.add_argument("--rss", help="(internal) measure one variant's decode memory and print JSON")
    parser.add_argument("--time", type=int, help="(internal) time the variants at this many threads")
    args = parser.parse_args()
    if args.rss:
        print(json.dumps(decode_rss(args.rss)))
        return
    if args.time:
        print(json.dumps(time_variants(args.variants, args.time, args.prompt, args.new_tokens, args.rounds)))
        return
    variants = ["dense", *[v for v in args.variants if v != "dense"]]
    quality_rows = {v: build(v, args.calib, args.eval) for v in variants}
    groups = [variants[i:i + args.group] for i in range(0, len(variants), args.group)]
    timings = [_merged([_cached(f"timing-{t}t-{'-'.join(g)}", ["--time", str(t), "--variants", *g, "--prompt",
                                str(args.prompt), "--new-tokens", str(args.new_tokens), "--rounds", str(args.rounds)])
                        for g in groups]) for t in args.threads]
    memory = {} if args.skip_memory else {v: _cached(f"rss-{v}", ["--rss", v]) for v in variants}
    write_atomic(RESULTS / "decode.json", json.dumps({"quality": quality_rows, "timings": timings, "memory": memory},
                                                     indent=2))
    write_atomic(RESULTS / "decode.md", _markdown(variants, quality_rows, timings, memory, args))
    print((RESULTS / "decode.md").read_text())


def _cached(name: str, arguments: list[str]) -> dict:
    """A child run's result, kept in the benchmark folder so an interrupted run resumes."""
    path = folder() / f"{name.replace(':', '-')}.json"
    if not path.is_file():
        write_atomic(path, json.dumps(_child(arguments)))
    return json.loads(path.read_text())


def _merged(parts: list[dict]) -> dict:
    """One thread count's timing from several processes (groups of variants, each timed in
    interleaved rounds beside its own ORT dense, its speed-ups relative to that): the first
    group's ORT dense and each variant's own figures."""
    merged = {"threads": parts[0]["threads"], "timing": {"decode_ms_per_token": {}}, "speedup": {},
              "matches_hugging_face": {}, "markdown": "\n\n".join(p["markdown"] for p in parts), "groups": parts}
    for part in reversed(parts):  # the first group's ORT dense last, so it is kept
        merged["timing"]["decode_ms_per_token"].update(part["timing"]["decode_ms_per_token"])
        merged["speedup"].update(part["speedup"])
        merged["matches_hugging_face"].update(part["matches_hugging_face"])
    return merged


def _child(arguments: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        raise SystemExit(f"{arguments}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(variants, quality_rows, timings, memory, args) -> str:
    dense_ppl = quality_rows["dense"]["perplexity"]
    head = "| variant | perplexity | ppl / dense | KL vs dense (nats) | top-1 vs dense | " + " | ".join(
        f"decode ms/token, {t['threads']}t | vs ORT dense, {t['threads']}t" for t in timings) + \
        " | decode peak RSS MB | TVM constants MB |"
    lines = [f"# SmolLM2-135M decode: {args.prompt}-token prompt, {args.new_tokens} new tokens, batch 1", "",
             f"`python benchmarks/decode.py --threads {' '.join(str(t['threads']) for t in timings)} --rounds "
             f"{args.rounds} --group {args.group}{' --skip-memory' if args.skip_memory else ''} --variants "
             f"{' '.join(variants)}` (each group of {args.group} TVM variants timed beside its own ORT dense). Perplexity, KL(dense ‖ variant) and top-1 agreement of "
             f"the next-token logits at every position: {args.eval} held-out windows of 512 tokens (Wikipedia leads; "
             "calibration read enwiki articles), ONNX Runtime. `+head`: the tied LM head sparsified too.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for variant in ["ORT dense", *variants]:
        name = variant if variant == "ORT dense" else f"TVM {variant}"
        q = quality_rows["dense" if variant == "ORT dense" else variant]
        cells = [name, f"{q['perplexity']:.2f}", f"{q['perplexity'] / dense_ppl:.3f}",
                 f"{q.get('kl', 0.0):.3f}", f"{100 * q.get('top1', 1.0):.1f}%"]
        for t in timings:
            per_token = np.median(t["timing"]["decode_ms_per_token"][name])
            cells += [f"{per_token:.1f}", f"{t['speedup'][name]:.2f}×"]
        m = memory.get(variant) if variant != "ORT dense" else None
        cells += [f"{m['peak_rss_mb']:.0f}", f"{m['packed_weight_mb']:.0f}"] if m else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Greedy tokens identical to Hugging Face's generate: " + ", ".join(
        f"{name} at {t['threads']}t: {ok}" for t in timings for name, ok in t["matches_hugging_face"].items()), ""]
    for t in timings:
        lines += [f"## {t['threads']} thread(s)", "", t["markdown"], ""]
    for t in timings:
        profile = RESULTS / f"decode_profile_dense_{t['threads']}t.md"
        if profile.is_file():  # written by benchmarks/decode_profile.py
            lines += [f"## Where the dense decode step's time goes, {t['threads']} thread(s)", "",
                      "`python benchmarks/decode_profile.py` (see its docstring); ms per step.", "",
                      profile.read_text().split("\n", 2)[2], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
