"""Calibration throughput on Ray: two local workers against one, 1 thread each, on a real model.

The calibration is what SparseGPT and Wanda collect: the Gram matrix XᵀX and per-channel
statistics of every linear layer's input (padding rows left out), over real text grouped into
batches: SmolLM2-135M on windows of the gensim enwiki articles, or all-MiniLM-L6-v2 on the Lee
background stories. Contestants, each one ``collect`` call over the same batches, timed in one
run in interleaved rounds (the order reverses every round):

- ``in-process``: this process, 1 ONNX Runtime thread (the default path, no Ray);
- ``ray-1``: one Ray worker of a local cluster; ``ray-2``: two Ray workers.

A timing is the whole call: the exposing model serialized and put in the object store, the
workers' sessions built, the batches run and reduced, the shares merged. The workers of each
Ray engine stay up between rounds (started by an untimed first call, reported as ``cold``);
the local cluster is given 3 logical CPUs so that both engines' workers stay up, while at most
two processes work at any time (the contestants run one after another). BLAS runs one thread
in every process (the float64 reducer products), so one worker is one core. The two-worker
statistics are checked against the in-process ones (1e-12 of each array's largest entry).
"Cores busy" is the CPU time this process and the contestant's workers used during a call over
its wall time: how much of the machine a contestant got (other work on the machine takes the
rest; the load average before and after is recorded).

Usage: python benchmarks/distributed_calibration.py [--model smollm2|minilm] [--samples 32]
                                                    [--seq 512] [--batch 2] [--rounds 3]
Writes results/distributed_calibration_<model>.{json,md}.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads BLAS
    os.environ[_name] = "1"

import argparse
import resource
import statistics
import time

import numpy as np
from common import write_results

from sparc.analysis.linear import find_linear_layers
from sparc.capture import capture_torch, load_onnx
from sparc.data import CalibrationData
from sparc.distributed import InProcess, RayEngine
from sparc.eval import datasets, quality, zoo
from sparc.measure.execute import collect
from sparc.measure.reducers import ChannelStats, Gram, token_mask
from sparc.passes import Canonicalize

CHECK = 1e-12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "minilm"], default="smollm2")
    parser.add_argument("--samples", type=int, default=32, help="windows or stories (calibration samples)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sample")
    parser.add_argument("--batch", type=int, default=2, help="samples per batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, data, label = MODELS[args.model](args.samples, args.seq, args.batch)
    Canonicalize()(model)
    tokens = int(sum(b["attention_mask"].sum() for b in data))
    load_before = os.getloadavg()
    cluster = RayEngine("local", workers=3)  # owns the cluster; the engines below join it
    engines = {"in-process": InProcess(), "ray-1": RayEngine("local", workers=1),
               "ray-2": RayEngine("local", workers=2)}
    try:
        cold = {name: _timed(model, data, engine)[0] for name, engine in engines.items()}
        print("cold (first call):", {k: round(v, 1) for k, v in cold.items()}, flush=True)
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        cores: dict[str, list[float]] = {name: [] for name in engines}
        results = {}
        for round_ in range(args.rounds):
            order = list(engines) if round_ % 2 == 0 else list(reversed(engines))
            for name in order:
                elapsed, cpu, results[name] = _timed(model, data, engines[name])
                seconds[name].append(elapsed)
                cores[name].append(cpu / elapsed)
                print(f"round {round_ + 1} {name}: {elapsed:.1f} s ({tokens / elapsed:.0f} tokens/s, "
                      f"{cpu / elapsed:.2f} cores busy)", flush=True)
        deviation = _deviation(results["ray-2"], results["in-process"])
    finally:
        for engine in engines.values():
            engine.close()
        cluster.close()
    run = _summary(args, label, tokens, len(data), cold, seconds, deviation, load_before, os.getloadavg())
    run["cores_busy"] = cores
    write_results(f"distributed_calibration_{args.model}", run, _markdown(run))


def _smollm2(samples: int, seq: int, batch: int):
    """SmolLM2 (fp32 ONNX) on windows of the gensim enwiki articles."""
    ids = quality.token_windows(zoo.smollm2_tokenizer(), "\n\n".join(datasets.enwiki_articles()), window=seq,
                                count=samples)
    chunks = [np.concatenate(ids[i : i + batch]) for i in range(0, samples, batch)]
    data = CalibrationData([{"input_ids": c, "attention_mask": np.ones_like(c)} for c in chunks])
    return load_onnx(zoo.smollm2_onnx()), data, "SmolLM2-135M-Instruct (fp32 ONNX)"


def _minilm(samples: int, seq: int, batch: int):
    """MiniLM-L6 captured from torch, on the Lee background stories (padded to ``seq``)."""
    minilm = zoo.minilm()
    data = CalibrationData(minilm.batches(datasets.lee_background()[:samples], batch, seq=seq))
    model = capture_torch(minilm.module, zoo.torch_inputs(data.batches[0]), minilm.dynamic_axes)
    return model, data, "all-MiniLM-L6-v2 (captured from torch)"


MODELS = {"smollm2": _smollm2, "minilm": _minilm}


def _reducers(model) -> dict[str, list]:
    """XᵀX (SparseGPT) and channel statistics (Wanda) of each linear layer's input, padding
    rows left out."""
    mask = token_mask(model)
    reducers: dict[str, list] = {}
    for layer in find_linear_layers(model.graph):
        reducers.setdefault(layer.input.name, [Gram(mask), ChannelStats(mask)])
    return reducers


def _timed(model, data: CalibrationData, engine) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process and the engine's workers, reducers) of one call."""
    reducers = _reducers(model)
    cpu = _cpu_seconds(engine)
    start = time.perf_counter()
    collect(model, reducers, data, threads=1, engine=engine)
    wall = time.perf_counter() - start
    return wall, _cpu_seconds(engine) - cpu, reducers


def _cpu_seconds(engine) -> float:
    """CPU seconds used so far by this process and by the engine's worker processes."""
    total = _own_cpu(None)
    if isinstance(engine, RayEngine):
        with engine.shards(list(range(engine.workers))) as shards:
            total += sum(shards.map(_own_cpu))
    return total


def _own_cpu(shard) -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _deviation(got: dict, want: dict) -> float:
    """The largest |got − want| over every reducer array, relative to that array's largest entry;
    row counts must be equal."""
    worst = 0.0
    for name, group in want.items():
        for g, w in zip(got[name], group):
            assert g.rows == w.rows, name
            for attribute in ("matrix", "sum", "abs_sum", "sq_sum"):
                if hasattr(w, attribute):
                    a, b = getattr(g, attribute), getattr(w, attribute)
                    worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)))
    return worst


def _summary(args, label, tokens, batches, cold, seconds, deviation, load_before, load_after) -> dict:
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "model": label, "samples": args.samples, "seq": args.seq,
        "batches": batches, "tokens": tokens, "rounds": args.rounds, "threads_per_worker": 1,
        "cores": os.cpu_count(), "load_before": list(load_before), "load_after": list(load_after),
        "cold_seconds": cold, "seconds": seconds, "median_seconds": median,
        "tokens_per_second": {name: tokens / s for name, s in median.items()},
        "ratio_ray2_over_ray1": median["ray-1"] / median["ray-2"],
        "ratio_ray2_over_in_process": median["in-process"] / median["ray-2"],
        "per_round_ratio_ray2_over_ray1": [a / b for a, b in zip(seconds["ray-1"], seconds["ray-2"])],
        "max_relative_deviation_ray2_vs_in_process": deviation, "deviation_bound": CHECK,
    }


def _markdown(run: dict) -> str:
    rows = ["| contestant | cold first call s | median s | rounds s | tokens/s | cores busy (CPU s / wall s) |",
            "|---|---:|---:|---|---:|---|"]
    for name, values in run["seconds"].items():
        rows.append(f"| {name} | {run['cold_seconds'][name]:.1f} | {run['median_seconds'][name]:.1f} | "
                    f"{', '.join(f'{v:.1f}' for v in values)} | {run['tokens_per_second'][name]:.0f} | "
                    f"{', '.join(f'{c:.2f}' for c in run['cores_busy'][name])} |")
    ok = "within" if run["max_relative_deviation_ray2_vs_in_process"] <= CHECK else "NOT within"
    setting = (f"{run['tokens']} tokens ({run['samples']} samples of up to {run['seq']}, {run['batches']} batches), "
               f"XᵀX and channel statistics of every linear layer's input; 1 ONNX Runtime thread and 1 BLAS "
               f"thread per worker, {run['cores']} cores; {run['rounds']} interleaved rounds, medians. Load "
               f"average before {run['load_before'][0]:.2f}, after {run['load_after'][0]:.2f}.")
    rounds = ", ".join(f"{r:.2f}" for r in run["per_round_ratio_ray2_over_ray1"])
    ratios = (f"Two Ray workers against one: **{run['ratio_ray2_over_ray1']:.2f}×** (per round: {rounds}); "
              f"against the in-process run: **{run['ratio_ray2_over_in_process']:.2f}×**.")
    check = (f"Two-worker statistics against in-process: largest deviation "
             f"{run['max_relative_deviation_ray2_vs_in_process']:.1e} of an array's largest entry ({ok} {CHECK:g}).")
    return "\n".join([f"# Calibration throughput on Ray: {run['model']}", "", setting, "", *rows, "", ratios, "",
                      check, ""])

if __name__ == "__main__":
    main()
