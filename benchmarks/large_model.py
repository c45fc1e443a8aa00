"""Larger than memory: 2:4 SparseGPT of a random-weight Llama decoder whose fp32 weights exceed
this machine's RAM, compiled out of core (block by block), with its peak RSS and time.

The model (``sparc.eval.synthetic_llama``, preset ``large30``: Llama-2-7B widths with 36 layers,
30.19 GB of fp32 weights) is generated once into the sparc cache. The compile runs in a child
process: ``sparc.compile(path, recipe=[2:4 SparseGPT], out_of_core=True)`` on random token
batches (calibration) and one held-out batch (the staged check against the original), then
``export``. The parent samples the child's RSS every 20 ms; the report's per-pass peaks (the
kernel's exact high-water marks) are read as well, and the larger figure is reported.

``--smollm2`` instead checks that SmolLM2-135M compiled block by block out of core and in memory
give byte-identical weights and the same graph.

    python benchmarks/large_model.py                       # large30 (about an hour)
    python benchmarks/large_model.py --preset mid --keep   # a 0.45 GB model, a minute
    python benchmarks/large_model.py --smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import sparc
from sparc.eval import synthetic_llama
from sparc.files import cache_dir, write_atomic
from sparc.measure.memory import memory_bytes

RESULTS = Path(__file__).parent / "results"
RECIPE = [{"NMSparsity": {"n": 2, "m": 4, "method": "sparsegpt", "precision": "float32"}}]


def token_batches(vocab: int, batches: int, seq: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """``batches`` batches of one sequence of ``seq`` random token ids (no padding)."""
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64),
             "attention_mask": np.ones((1, seq), dtype=np.int64)} for _ in range(batches)]


def compile_child(model: Path, out: Path, vocab: int, batches: int, seq: int, result: Path) -> None:
    """In the child: compile out of core, export, and write what was measured to ``result``."""
    start = time.perf_counter()
    compiled = sparc.compile(model, calibration=token_batches(vocab, batches, seq), recipe=RECIPE, out_of_core=True)
    compiled_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled.export(out)
    export_s = time.perf_counter() - start
    report = compiled.report
    write_atomic(result, json.dumps({
        "compile_s": round(compiled_s, 1), "export_s": round(export_s, 1),
        "pass_peaks_mb": {e.name: round((e.peak_rss or 0) / 2**20) for e in report.steps},
        "pass_seconds": {e.name: round(e.seconds, 1) for e in report.steps},
        "calibration_seconds": {e.name: round(e.calibration_seconds, 1) for e in report.steps},
        "details": report.passes[0].details, "report": str(report),
    }, indent=1, default=str))


class RssSampler:
    """The peak VmRSS of process ``pid``, sampled every 20 ms until it exits."""

    def __init__(self, pid: int):
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                text = self.status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.02)

    def join(self) -> int:
        self._thread.join()
        return self.peak


def run_large(preset: str, batches: int, seq: int, keep: bool) -> dict:
    shape = synthetic_llama.PRESETS[preset]
    folder = synthetic_llama.default_folder(preset)
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    generated_s = None
    if not model.exists():
        start = time.perf_counter()
        synthetic_llama.write_random_llama(model, shape, seed=0)
        generated_s = round(time.perf_counter() - start, 1)
    out_folder = cache_dir() / f"{preset}-llama-2of4"
    shutil.rmtree(out_folder, ignore_errors=True)
    out_folder.mkdir(parents=True)
    result = out_folder / "result.json"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", str(model), str(out_folder / "model.onnx"),
                              str(shape.vocab), str(batches), str(seq), str(result)])
    sampler = RssSampler(child.pid)
    if child.wait() != 0:
        raise SystemExit(f"the compile failed (exit {child.returncode})")
    measured = json.loads(result.read_text())
    sampled = sampler.join()
    data = out_folder / "model.onnx.data"
    summary = {
        "preset": preset, "parameters": shape.parameters(), "weight_bytes": shape.weight_bytes(),
        "largest_block_bytes": 4 * shape.layer_parameters(), "ram_bytes": memory_bytes(),
        "calibration": f"{batches - 1} batch(es) of 1×{seq} random tokens; 1 held out for the check",
        "generated_s": generated_s, "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(max(sampled, max(measured["pass_peaks_mb"].values()) * 2**20) / 2**20),
        "sampled_peak_rss_mb": round(sampled / 2**20), "output_bytes": data.stat().st_size, **measured,
    }
    if not keep:
        shutil.rmtree(out_folder)
    return summary


def check_smollm2() -> dict:
    """SmolLM2 (prefill graph, weights in external data) compiled in memory and out of core."""
    import onnx
    import onnx_ir as ir

    from sparc.capture import load_onnx
    from sparc.eval import datasets, zoo

    folder = cache_dir() / "smollm2-external"
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    if not path.exists():
        ir.save(load_onnx(zoo.smollm2_onnx()), path, external_data="model.onnx.data")
    smollm2 = zoo.smollm2()
    batches = smollm2.batches(datasets.lee_background()[:12], 4, seq=64)
    exported = {}
    for mode in (False, True):
        start = time.perf_counter()
        compiled = sparc.compile(path, calibration=batches, recipe=RECIPE, out_of_core=mode, latency_rounds=0)
        target = folder / f"out-{'core' if mode else 'memory'}.onnx"
        compiled.export(target)
        proto = onnx.load(target)
        exported[mode] = (proto, round(time.perf_counter() - start, 1))
    (a, a_s), (b, b_s) = exported[False], exported[True]
    weights = [{t.name: onnx.numpy_helper.to_array(t).tobytes() for t in p.graph.initializer} for p in (a, b)]
    same_graph = [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
                 [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    return {"weights_identical": weights[0] == weights[1], "graph_identical": same_graph,
            "initializers": len(weights[0]), "in_memory_s": a_s, "out_of_core_s": b_s}


def markdown(summary: dict) -> str:
    gb = 1e9
    return "\n".join([
        f"# Out-of-core 2:4 SparseGPT of a random Llama ({summary['preset']}), 2 cores",
        "",
        "python benchmarks/large_model.py" + ("" if summary["preset"] == "large30" else f" --preset {summary['preset']}"),
        "",
        "| weights | RAM | largest block | peak RSS | compile | export | output |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary['weight_bytes'] / gb:.2f} GB ({summary['parameters']:,} params) | {summary['ram_bytes'] / gb:.1f} GB "
        f"| {summary['largest_block_bytes'] / gb:.2f} GB | {summary['peak_rss_mb'] / 1024:.2f} GiB "
        f"| {summary['compile_s']:.0f} s | {summary['export_s']:.0f} s | {summary['output_bytes'] / gb:.2f} GB |",
        "",
        f"Calibration: {summary['calibration']}. Per pass: seconds {summary['pass_seconds']}, calibration "
        f"seconds {summary['calibration_seconds']}, peak RSS MB {summary['pass_peaks_mb']}; sampled peak "
        f"{summary['sampled_peak_rss_mb']} MB. Pass details: {summary['details']}.",
        "",
    ])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, out, vocab, batches, seq, result = sys.argv[2:]
        compile_child(Path(model), Path(out), int(vocab), int(batches), int(seq), Path(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="large30", choices=sorted(synthetic_llama.PRESETS))
    parser.add_argument("--batches", type=int, default=3, help="random token batches (the last one is held out)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--keep", action="store_true", help="keep the exported model")
    parser.add_argument("--smollm2", action="store_true", help="check block-by-block = in-memory on SmolLM2")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.smollm2:
        found = check_smollm2()
        print(json.dumps(found, indent=1))
        write_atomic(RESULTS / "out_of_core_smollm2.json", json.dumps(found, indent=1))
        return
    summary = run_large(args.preset, args.batches, args.seq, args.keep)
    print(json.dumps({k: v for k, v in summary.items() if k != "report"}, indent=1, default=str))
    print(summary["report"])
    write_atomic(RESULTS / f"large_model_{args.preset}.json", json.dumps(summary, indent=1, default=str))
    write_atomic(RESULTS / f"large_model_{args.preset}.md", markdown(summary))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
