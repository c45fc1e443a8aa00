"""One contestant of benchmarks/deepsparse_peer.py, in its own process.

Loads one runtime on one ONNX file, runs it once on the feeds, and then serves commands, one
JSON line per command on stdin, one JSON line per answer on stdout:

    {"cmd": "time", "n": N}          -> {"ok": true, "ms": [N per-run times in milliseconds]}
    {"cmd": "outputs", "path": P}    -> {"ok": true, "path": P}   (np.savez(P, *outputs), graph order)
    {"cmd": "quit"}                  -> exits

The first line it writes is {"ok": true, "ready": true, "load_s": ..., "first_run_ms": ..., "info": {...}}
(runtime version; DeepSparse's fraction of supported ops; TVM's chosen layouts per kind) or
{"ok": false, "error": "..."}. Everything the runtimes print goes to stderr: the answers have
stdout to themselves. Imports only the standard library and numpy at start, so the same file
runs in sparc's venv (``ort``, ``tvm``) and in DeepSparse's (``deepsparse``, ``ort``).

Usage (normally started by deepsparse_peer.py):
    python benchmarks/peer_worker.py --kind {ort,deepsparse,tvm} --model m.onnx --feeds f.npz \
        --batch B --threads T
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np


def _ort(path: str, shapes: dict, threads: int, batch: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    return (lambda feeds: session.run(None, {k: feeds[k] for k in inputs})), {"version": ort.__version__}


def _deepsparse(path: str, shapes: dict, threads: int, batch: int):
    os.environ["NM_DISABLE_ANALYTICS"] = "1"
    import deepsparse
    from deepsparse import compile_model

    engine = compile_model(path, batch_size=batch, num_cores=threads)
    inputs = list(engine.input_names)
    info = {"version": deepsparse.__version__}
    try:
        info["fraction_of_supported_ops"] = float(engine.fraction_of_supported_ops)
    except Exception as exc:  # noqa: BLE001 - informative only
        info["fraction_of_supported_ops"] = repr(exc)
    return (lambda feeds: engine.run([feeds[k] for k in inputs])), info


def _tvm(path: str, shapes: dict, threads: int, batch: int):
    from sparc.backends.tvm import TvmRunner
    from sparc.capture import load_onnx

    runner = TvmRunner(load_onnx(path), threads=threads)
    runner.prepare(shapes)
    outputs = runner.output_names
    layouts: dict[str, int] = {}
    for choice in runner.choices:
        layouts[choice.layout.describe()] = layouts.get(choice.layout.describe(), 0) + 1
    info = {"layouts": layouts, "unscheduled": len(runner.unscheduled)}

    def run(feeds):
        results = runner.run(feeds)
        return [results[k] for k in outputs]

    return run, info


KINDS = {"ort": _ort, "deepsparse": _deepsparse, "tvm": _tvm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--feeds", required=True, help=".npz of the model inputs (named as in the graph)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args()

    # Answers go to a private copy of stdout; whatever the runtimes print (Python or C) goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(**message) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    try:
        with np.load(args.feeds) as data:
            feeds = {k: np.ascontiguousarray(data[k]) for k in data.files}
        start = time.perf_counter()
        run, info = KINDS[args.kind](args.model, {k: v.shape for k, v in feeds.items()}, args.threads, args.batch)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        outputs = run(feeds)
        first_ms = (time.perf_counter() - start) * 1e3
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()
        reply(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        return
    reply(ok=True, ready=True, load_s=load_s, first_run_ms=first_ms, pid=os.getpid(), info=info)

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            if command["cmd"] == "time":
                times = []
                for _ in range(int(command["n"])):
                    start = time.perf_counter()
                    run(feeds)
                    times.append((time.perf_counter() - start) * 1e3)
                reply(ok=True, ms=times)
            elif command["cmd"] == "outputs":
                outputs = run(feeds)
                np.savez(command["path"], *[np.asarray(o) for o in outputs])
                reply(ok=True, path=command["path"])
            else:
                reply(ok=False, error=f"unknown command {command['cmd']!r}")
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exc()
            reply(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])


if __name__ == "__main__":
    main()
