"""Deployment targets: the exported models on WebAssembly (onnxruntime-web, Node.js) and on
aarch64 (ONNX Runtime wheel under qemu), against Python ONNX Runtime on this machine.

Models: MiniLM-L6 dense, MiniLM compiled with ChannelCrop (30% of heads and FFN units by
activation importance), MiniLM with TokenRouter (keep 0.5 from block 2, learned), and
SmolLM2-135M sliced by SliceRowsColumns (25%). For each: the max output difference on each
target (absolute, and relative to the output scale), and on WebAssembly the latency of the
compiled model beside its dense original (1 thread, batch 1, sequence 128, interleaved rounds
in one Node.js process). qemu timings are not reported: emulation says nothing about ARM speed.

Usage: python benchmarks/targets.py [--rounds 10]. Writes results/targets.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import write_results
from transformers import AutoTokenizer

import sparc
from sparc.backends.onnxruntime import export_onnx
from sparc.backends.targets import verify
from sparc.capture import capture_torch, load_onnx
from sparc.eval import datasets, quality, zoo
from sparc.passes import ChannelCrop, SliceRowsColumns, TokenRouter


def minilm_models(folder: Path) -> tuple[dict, Path, dict]:
    minilm = zoo.minilm()
    calibration = minilm.batches(datasets.lee_background()[:64], 8, seq=128)
    dense = capture_torch(minilm.module, zoo.torch_inputs(calibration[0]), minilm.dynamic_axes)
    dense_path = export_onnx(dense, folder / "minilm.onnx")
    recipes = {"MiniLM channel crop 0.3": [ChannelCrop(ratio=0.3, importance="activation",
                                                                      bias_compensation=False, reconstruct=False)],
               "MiniLM token router 0.5": [TokenRouter(keep=0.5, start_block=2)]}
    paths = {"MiniLM dense": dense_path}
    for name, recipe in recipes.items():
        compiled = sparc.compile(dense, calibration=calibration, recipe=recipe, latency_rounds=0)
        paths[name] = compiled.export(folder / f"{name.replace(' ', '_')}.onnx")
    feeds = minilm.make_inputs([" ".join(datasets.lee_documents())], seq=128)
    return paths, dense_path, feeds


def smollm2_models(folder: Path) -> tuple[dict, Path, dict]:
    tokenizer = AutoTokenizer.from_pretrained(zoo.smollm2_folder())
    articles = "\n\n".join(datasets.enwiki_articles()[:16])
    windows = quality.token_windows(tokenizer, articles, window=128, count=17)
    dense_path = zoo.smollm2_onnx()
    compiled = sparc.compile(load_onnx(dense_path), calibration=[quality.window_feeds(w) for w in windows[:16]],
                             recipe=[SliceRowsColumns(ratio=0.25)], latency_rounds=0)
    sliced = compiled.export(folder / "smollm2_sliced.onnx")
    return {"SmolLM2 sliced 0.25": sliced}, dense_path, quality.window_feeds(windows[16])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="sparc-targets-") as scratch:
        for setup in (minilm_models, smollm2_models):
            paths, dense_path, feeds = setup(Path(scratch))
            for name, path in paths.items():
                record = {"model": name}
                baseline = None if path == dense_path else dense_path
                wasm = verify(path, "wasm", feeds, baseline=baseline, threads=1, rounds=args.rounds)
                record["wasm"] = {"max_abs": wasm.max_abs_diff, "max_rel": wasm.max_rel_diff,
                                  "latency": None if wasm.latency is None else vars(wasm.latency)}
                arm = verify(path, "aarch64", feeds)
                record["arm"] = {"max_abs": arm.max_abs_diff, "max_rel": arm.max_rel_diff, "runtime": arm.runtime}
                records.append(record)
                print(record, flush=True)
                write_results("targets", records, _table(records, args.rounds))


def _table(records: list[dict], rounds: int) -> str:
    lines = ["# Exported models on WebAssembly and aarch64 vs Python ONNX Runtime", "",
             f"Inputs: batch 1, sequence 128. WebAssembly: onnxruntime-web, 1 thread, {rounds} interleaved rounds "
             "beside the dense original in one Node.js process (ratio = compiled / dense; below 1 is faster). "
             "aarch64: ONNX Runtime's aarch64 wheel under qemu-user, correctness only.", "",
             "| model | wasm max abs | wasm max rel | arm max abs | arm max rel | wasm dense ms | wasm compiled ms "
             "| wasm ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        latency = r["wasm"]["latency"]
        timing = ("| | | " if latency is None else
                  f"| {latency['original_ms']:.1f} | {latency['compiled_ms']:.1f} | {latency['ratio']:.3f} ")
        lines.append(f"| {r['model']} | {r['wasm']['max_abs']:.2e} | {r['wasm']['max_rel']:.2e} | "
                     f"{r['arm']['max_abs']:.2e} | {r['arm']['max_rel']:.2e} {timing}|")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
