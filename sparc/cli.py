"""The ``sparc`` command: compile, tune, inspect, bench, generate, verify, demo.

Errors print one line (``error: ...``) and exit with status 1; ``--verbose`` shows the
traceback and the library's log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from sparc.backends.targets import verify
from sparc.capture import load_onnx
from sparc.compiler import compile
from sparc.data import as_calibration
from sparc.errors import SparcError
from sparc.files import write_atomic
from sparc.generation import Sampling, encode, time_generation
from sparc.measure.latency import compare
from sparc.summary import summarize
from sparc.tune import parse_duration, require_matplotlib, tune

EXIT_ERROR = 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except SparcError as exc:
        return _fail(args, str(exc))
    except KeyboardInterrupt:
        return _fail(args, "interrupted")
    except BrokenPipeError:  # output piped into a reader that stopped early (head, sed)
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # a bug in sparc or a dependency: still one line by default
        return _fail(args, f"internal error ({type(exc).__name__}: {exc}); rerun with --verbose")


def dispatch(argv: list[str]) -> int:
    """Run one command and let every exception through (for harnesses such as the fuzzer)."""
    args = _parser().parse_args(argv)
    return args.handler(args)


def _fail(args, message: str) -> int:
    if args.verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparc", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and logs")
    commands = parser.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="run a recipe over a model and export it")
    compile_.add_argument("model", help="ONNX file")
    compile_.add_argument("-o", "--output", required=True, help="output ONNX file")
    compile_.add_argument("--recipe", help="recipe YAML/JSON (default: the default recipe)")
    compile_.add_argument("--calib", help=".npz calibration data (arrays named after inputs)")
    compile_.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    compile_.add_argument("--backend", help="backend (default: the recipe's, else onnxruntime)")
    compile_.add_argument("--target", help="target (default: the recipe's, else cpu)")
    compile_.add_argument("--threads", type=int, default=None, help="intra-op threads")
    compile_.add_argument("--report", help="write the markdown report here")
    compile_.add_argument("--json", help="write the JSON report here")
    compile_.add_argument("--out-of-core", dest="out_of_core", action="store_const", const=True, default=None,
                          help="keep the weights memory-mapped and work block by block (default: when the "
                               "model's external data exceeds half the RAM)")
    compile_.add_argument("--in-memory", dest="out_of_core", action="store_const", const=False,
                          help="load the weights into memory whatever their size")
    compile_.add_argument("--no-validate", action="store_true", help="skip numerical checks")
    compile_.add_argument("--ray", metavar="local|ADDRESS",
                          help="calibrate on Ray: local (a cluster on this machine, one worker per core) or a "
                               "cluster address (needs sparc[distributed])")
    compile_.set_defaults(handler=_compile)

    tune = commands.add_parser("tune", help="find the fastest model within a quality budget, by measurement")
    tune.add_argument("model", help="ONNX file")
    tune.add_argument("-o", "--output", required=True, help="output ONNX file (the chosen model)")
    tune.add_argument("--calib", required=True, help=".npz calibration data; the last batches are held out")
    tune.add_argument("--max-loss", type=float, required=True,
                      help="allowed loss on held-out batches (e.g. 0.01: cosine ≥ 0.99 or KL ≤ 0.01)")
    tune.add_argument("--metric", choices=["cosine", "kl", "top1", "error"],
                      help="loss measure (default: cosine for embeddings, KL for logits, per output)")
    tune.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    tune.add_argument("--backend", default="onnxruntime", help="backend (onnxruntime or tvm)")
    tune.add_argument("--target", default="cpu", help="target (default cpu)")
    tune.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    tune.add_argument("--passes", nargs="+", help="pass families to search (default: all the model allows)")
    tune.add_argument("--time-budget", default="15m", help="search time, e.g. 900, 15m, 1h (default 15m)")
    tune.add_argument("--trials", type=int, help="stop after this many candidates")
    tune.add_argument("--latency-batch", type=int, help="time on this many rows of a held-out batch")
    tune.add_argument("--store", help="trial store file: a rerun with the same store resumes the search")
    tune.add_argument("--report", help="write the markdown report here")
    tune.add_argument("--json", help="write the JSON result here")
    tune.add_argument("--recipe-out", help="write the chosen recipe (YAML, for sparc compile --recipe) here")
    tune.add_argument("--plot", help="write a PNG of the measured front here (needs matplotlib)")
    tune.add_argument("--ray", metavar="local|ADDRESS",
                      help="evaluate candidates as Ray tasks, one per CPU at once: local (a cluster on this "
                           "machine) or a cluster address (needs sparc[distributed])")
    tune.set_defaults(handler=_tune)

    inspect_ = commands.add_parser("inspect", help="op histogram, size, MACs, layer sparsity")
    inspect_.add_argument("model", help="ONNX file")
    inspect_.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                          help="size of a symbolic input dim for MACs (default 1)")
    inspect_.add_argument("--json", action="store_true", help="print JSON")
    inspect_.set_defaults(handler=_inspect)

    bench = commands.add_parser("bench", help="time models side by side")
    bench.add_argument("model", help="ONNX file, zoo:NAME (exported) or torch:NAME (eager)")
    bench.add_argument("--vs", help="baseline to compare against (same forms as MODEL)")
    bench.add_argument("--inputs", help=".npz inputs (first batch is timed)")
    bench.add_argument("--batch", type=int, default=1, help="batch size of made-up inputs")
    bench.add_argument("--seq", type=int, default=128, help="sequence length of made-up inputs")
    bench.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    bench.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    bench.add_argument("--decode", action="store_true",
                       help="time text generation (prefill of --seq tokens, then --new-tokens decode steps) "
                            "of KV-cache decoders instead of one run")
    bench.add_argument("--new-tokens", type=int, default=32, help="decode steps per round with --decode")
    bench.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tvm"],
                       help="backend with --decode (default onnxruntime)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(handler=_bench)

    generate = commands.add_parser("generate", help="generate text with a KV-cache decoder (ONNX file or zoo:NAME)")
    generate.add_argument("model", help="ONNX decoder with past key/value inputs, or zoo:smollm2")
    generate.add_argument("--prompt", required=True, help="the prompt text")
    generate.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    generate.add_argument("--vs", help="a second decoder (e.g. the dense original) timed beside MODEL")
    generate.add_argument("--tokenizer", help="Hugging Face tokenizer folder or tokenizer.json "
                                              "(default: the zoo model's, when MODEL or --vs is zoo:NAME)")
    generate.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tvm"],
                          help="backend (default onnxruntime; tvm compiles the prefill and decode shapes first)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens")
    generate.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed")
    generate.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    generate.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    generate.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds (default 1)")
    generate.add_argument("--json", action="store_true", help="print JSON")
    generate.set_defaults(handler=_generate)

    verify = commands.add_parser("verify", help="run an ONNX file on a target (wasm, aarch64) and compare "
                                 "its outputs with Python ONNX Runtime")
    verify.add_argument("model", help="ONNX file")
    verify.add_argument("--target", required=True, choices=["wasm", "aarch64"],
                        help="wasm: onnxruntime-web in Node.js; aarch64: aarch64 ONNX Runtime under qemu")
    verify.add_argument("--vs", help="original ONNX file to time beside MODEL (wasm)")
    verify.add_argument("--inputs", help=".npz inputs (first --batch rows); default: made-up inputs")
    verify.add_argument("--batch", type=int, default=1, help="batch size of made-up inputs")
    verify.add_argument("--seq", type=int, default=128, help="sequence length of made-up inputs")
    verify.add_argument("--threads", type=int, default=1, help="threads (WebAssembly numThreads; default 1)")
    verify.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds with --vs (wasm)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify)

    demo = commands.add_parser("demo", help="compile the real MiniLM sentence encoder")
    demo.add_argument("--out", default="sparc-demo", help="output folder (default sparc-demo)")
    demo.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    demo.set_defaults(handler=_demo)
    return parser


def _compile(args) -> int:
    output = Path(args.output)
    _check_writable(output, args.report, args.json)
    calibration = None
    if args.calib:
        calibration = as_calibration(args.calib, load_onnx(args.model, mapped=True), batch_size=args.batch_size)
    compiled = compile(
        args.model,
        calibration=calibration,
        recipe=args.recipe,
        backend=args.backend,
        target=args.target,
        validate=not args.no_validate,
        threads=args.threads,
        ray=args.ray,
        out_of_core=args.out_of_core,
    )
    compiled.export(output)
    _write_reports(compiled.report, args.report, args.json)
    print(compiled.report.to_markdown())
    print(f"wrote {output}")
    return 0


def _tune(args) -> int:
    from rich.console import Console

    output = Path(args.output)
    _check_writable(output, args.report, args.json, args.recipe_out, args.plot, args.store)
    if args.plot:
        require_matplotlib()
    calibration = as_calibration(args.calib, load_onnx(args.model, mapped=True), batch_size=args.batch_size)
    console = Console(stderr=True)
    with console.status("tuning") as status:
        result = tune(args.model, calibration=calibration, max_loss=args.max_loss, metric=args.metric,
                      backend=args.backend, target=args.target, threads=args.threads, passes=args.passes,
                      time_budget=parse_duration(args.time_budget), trials=args.trials, store=args.store,
                      latency_batch=args.latency_batch, progress=lambda p: status.update(_progress_line(p)),
                      ray=args.ray)
    result.compiled.export(output)
    result.write(args.report, args.recipe_out, args.plot)
    if args.json:
        write_atomic(args.json, json.dumps(result.to_dict(), indent=2, default=str))
    print(result.to_markdown())
    print(f"wrote {output}")
    return 0


def _progress_line(progress) -> str:
    best = (f"best {progress.best_speedup:.2f}× at loss {progress.best_loss:.4g}" if progress.best_speedup
            else "none within budget yet")
    budget = f" of {progress.budget:.0f} s" if progress.budget else ""
    return f"{progress.phase}: {progress.trials} candidates, {best} ({progress.elapsed:.0f} s{budget})"


def _check_writable(*paths) -> None:
    for path in paths:
        if path is None:
            continue
        folder = Path(path).parent
        if not folder.is_dir():
            raise SparcError(f"{path}: the folder {folder} does not exist")


def _write_reports(report, markdown_path, json_path) -> None:
    if markdown_path:
        write_atomic(markdown_path, report.to_markdown())
    if json_path:
        write_atomic(json_path, report.to_json())


def _inspect(args) -> int:
    summary = summarize(load_onnx(args.model), _dims(args.dim))
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
        return 0
    stats = summary.stats
    print(f"# {args.model}\n")
    print(f"parameters: {stats.params:,} ({stats.nonzero_params:,} non-zero)")
    print(f"bytes: {stats.bytes:,}")
    shapes = ", ".join(f"{k}{v}" for k, v in summary.input_shapes.items())
    unknown = f" ({len(stats.unknown_mac_nodes)} nodes unknown)" if stats.unknown_mac_nodes else ""
    print(f"MACs at {shapes}: {stats.macs:,}{unknown}\n" if stats.macs is not None else "")
    print("| op | count |\n|---|---:|")
    for op, count in summary.ops.items():
        print(f"| {op} | {count} |")
    print("\n| layer | op | weight shape | density | pattern |\n|---|---|---|---:|---|")
    for layer in summary.layers:
        pattern = "" if layer.pattern is None else f"{layer.pattern} {_holds(layer.verified)}"
        print(f"| {layer.name} | {layer.op} | {layer.shape} | {layer.density:.3f} | {pattern} |")
    broken = [layer.name for layer in summary.layers if layer.verified is False]
    if broken:
        print(f"\nerror: {len(broken)} layers do not satisfy their sparsity annotation: {', '.join(broken)}")
        return EXIT_ERROR
    return 0


def _holds(verified: bool | None) -> str:
    return "✓ holds" if verified else "✗ VIOLATED"


def _dims(entries: list[str]) -> dict[str, int]:
    dims = {}
    for entry in entries:
        name, _, size = entry.partition("=")
        if not name or not size.isdigit():
            raise SparcError(f"--dim expects NAME=SIZE, got {entry!r}")
        dims[name] = int(size)
    return dims


def _bench(args) -> int:
    from sparc.eval.bench_models import bench_inputs, runner_for

    specs = [args.vs, args.model] if args.vs else [args.model]
    if args.decode:
        return _bench_decode(args, specs)
    feeds = bench_inputs(specs, args.inputs, batch=args.batch, seq=args.seq)
    contestants = {}
    for spec in specs:
        label = spec if spec not in contestants else f"{spec} (2)"
        run = runner_for(spec, threads=args.threads)
        contestants[label] = lambda run=run: run(feeds)
    shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in feeds.items())
    result = compare(contestants, rounds=args.rounds, threads=args.threads, label=f"inputs: {shapes}")
    print(result.to_json() if args.json else result.to_markdown())
    return 0


def _bench_decode(args, specs: list[str]) -> int:
    from sparc.eval.bench_models import decoder_spec, prompt_ids, tokenizer_for

    tokenizer = tokenizer_for(specs, None, required=False)
    decoders = {}
    for spec in specs:
        label = spec if spec not in decoders else f"{spec} (2)"
        decoders[label] = decoder_spec(spec, backend=args.backend, threads=args.threads)
    prompt = prompt_ids(tokenizer, args.seq)
    timing = time_generation(decoders, prompt, args.new_tokens, rounds=args.rounds, tokenizer=tokenizer)
    print(json.dumps(timing.to_dict(), indent=2) if args.json else timing.to_markdown())
    return 0


def _generate(args) -> int:
    from sparc.eval.bench_models import decoder_spec, tokenizer_for

    specs = [args.model, args.vs] if args.vs else [args.model]
    if len(set(specs)) != len(specs):
        raise SparcError("--vs names the same model as MODEL")
    tokenizer = tokenizer_for(specs, args.tokenizer, required=True)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    decoders = {spec: decoder_spec(spec, backend=args.backend, threads=args.threads) for spec in specs}
    prompt = encode(tokenizer, args.prompt)
    eos = None if args.ignore_eos else getattr(tokenizer, "eos_token_id", None)
    if len(decoders) == 1 and args.rounds == 1:
        result = decoders[args.model].generate(prompt, args.max_new_tokens, sampling, eos)
        text = tokenizer.decode(result.tokens, skip_special_tokens=True)
        if args.json:
            print(json.dumps({**dataclasses.asdict(result), "text": text}, indent=2))
        else:
            print(f"{args.prompt}{text}\n")
            print(f"prompt {result.prompt_tokens} tokens, prefill {result.prefill_ms:.1f} ms; "
                  f"{len(result.tokens)} new tokens, decode {result.decode_ms_per_token:.2f} ms/token "
                  f"({args.backend}, {args.threads} thread(s))")
        return 0
    timing = time_generation(decoders, prompt, args.max_new_tokens, rounds=args.rounds, sampling=sampling,
                             tokenizer=tokenizer)
    if args.json:
        print(json.dumps(timing.to_dict(), indent=2))
        return 0
    for spec in specs:
        print(f"## {spec}\n\n{args.prompt}{timing.texts[spec]}\n")
    print(timing.to_markdown(baseline=args.vs))
    return 0


def _verify(args) -> int:
    from sparc.eval.bench_models import bench_inputs

    feeds = bench_inputs([args.model], args.inputs, batch=args.batch, seq=args.seq)
    check = verify(args.model, args.target, feeds, baseline=args.vs, threads=args.threads, rounds=args.rounds)
    print(json.dumps(dataclasses.asdict(check), indent=2) if args.json else check.to_markdown())
    return 0


def _demo(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from sparc.eval.demo import run_demo

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        result = run_demo(args.out, threads=args.threads, progress=progress)
    print(result.compiled.report.to_markdown())
    print("## Recipes tried\n")
    print(result.trials_table() + "\n")
    print(result.verdict + "\n")
    print(result.table() + "\n")
    out = Path(args.out)
    print(f"wrote {out / 'model.onnx'}, {out / 'report.md'}, {out / 'report.json'} and {out / 'tradeoff.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
