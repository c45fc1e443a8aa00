"""Where a SmolLM2-135M decode step spends its time: TVM (sparc) against ONNX Runtime, per op kind.

One decode step (batch 1, one new token) at a context of ``--context`` tokens: ONNX Runtime
with its growing cache (past of that length), TVM with the static cache of ``decode.CAPACITY``
slots, the first ``--context`` valid. Per round: ONNX Runtime steps with its profiler on (the
``Node`` events, ``model_run`` for the whole run), TVM steps with the Relax VM's instrument
hook timing every call (kernels and VM builtins), then both without instrumentation for the
step time. Op kinds are read from kernel names (TVM) and op types and shapes (ONNX Runtime);
"outside the ops" is the step time minus the ops' sum (negative where the profiled run was
slower than the plain one; ONNX Runtime's session, TVM's VM
builtins (allocations, reshapes, shape checks) and dispatch; the builtins are not timed one by
one, as the hook's own cost per call is of their size).

    python benchmarks/decode_profile.py --threads 1 --label after
    PYTHONPATH=<checkout of an older sparc> python benchmarks/decode_profile.py --label before
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from decode import CAPACITY, RESULTS, model_path
from sparc.backends.tvm import TvmRunner
from sparc.capture import load_onnx
from sparc.capture.kv_cache import empty_past, find_kv_cache
from sparc.files import write_atomic

VOCAB = 49152
KINDS = ["linear layers", "LM head", "attention matmuls", "softmax", "norms", "rotary (+ K cache concat in TVM)",
         "KV cache concat", "GQA repeat of K/V", "reshape / transpose", "activation threshold", "other element-wise",
         "outside the ops"]
OUTSIDE = "outside the ops"  # step time minus the ops: TVM's VM builtins (allocations, reshapes, checks) and dispatch


def tvm_kind(symbol: str, output_columns: int | None) -> str:
    """The op kind of a Relax VM call, from its symbol (and its output's last axis)."""
    if symbol.startswith("vm.builtin"):
        return OUTSIDE
    if symbol.startswith(("sparc_linear", "sparc_input_sparse")):
        return "LM head" if output_columns is not None and output_columns >= VOCAB else "linear layers"
    rules = [("sparc_attention", "attention matmuls"), ("matmul", "attention matmuls"), ("softmax", "softmax"),
             ("layer_norm", "norms"), ("mean", "norms"), ("power", "norms"), ("negative", "rotary (+ K cache concat in TVM)"),
             ("cos", "rotary (+ K cache concat in TVM)"), ("sin", "rotary (+ K cache concat in TVM)"),
             ("concatenate", "KV cache concat"), ("broadcast_to", "GQA repeat of K/V"), ("abs", "activation threshold")]
    for part, kind in rules:
        if part in symbol:
            return kind
    if all(word in ("fused", "reshape", "transpose", "expand", "dims", "squeeze") or word[-1].isdigit()
           for word in symbol.split("_") if word):
        return "reshape / transpose"
    return "other element-wise"


def ort_kind(op: str, inputs: list[list[int]], output: list[int]) -> str:
    """The op kind of an ONNX Runtime node event, from its op type and shapes (the profiler
    lists non-constant inputs only: a matmul with one listed input has a constant weight)."""
    if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits"):
        if len(inputs) == 1:
            return "LM head" if output and output[-1] >= VOCAB else "linear layers"
        return "attention matmuls"
    table = {"Softmax": "softmax", "SimplifiedLayerNormalization": "norms", "SkipSimplifiedLayerNormalization": "norms",
             "LayerNormalization": "norms", "Pow": "norms", "ReduceMean": "norms", "Sqrt": "norms",
             "Reciprocal": "norms", "RotaryEmbedding": "rotary (+ K cache concat in TVM)",
             "Neg": "rotary (+ K cache concat in TVM)", "Slice": "rotary (+ K cache concat in TVM)",
             "Cos": "rotary (+ K cache concat in TVM)", "Sin": "rotary (+ K cache concat in TVM)",
             "Concat": "KV cache concat", "Expand": "GQA repeat of K/V", "Reshape": "reshape / transpose",
             "Transpose": "reshape / transpose", "Unsqueeze": "reshape / transpose", "Squeeze": "reshape / transpose",
             "Abs": "activation threshold", "Less": "activation threshold"}
    return table.get(op, "other element-wise")


class TvmStep:
    """One TVM decode step on a static cache, plain or with every VM call timed by kind."""

    def __init__(self, variant: str, threads: int, context: int):
        model = load_onnx(model_path(variant))
        kv = find_kv_cache(model)
        self.runner = TvmRunner(model, threads=threads)
        mask = np.zeros((1, CAPACITY + 1), np.int64)
        mask[0, :context] = mask[0, -1] = 1
        feeds = {kv.input_ids: np.array([[42]], np.int64), kv.attention_mask: mask,
                 kv.position_ids: np.array([[context]], np.int64)}
        rng = np.random.default_rng(0)
        for pair in kv.pairs:
            feeds[pair.past] = rng.standard_normal(empty_past(model, pair, 1, CAPACITY).shape).astype(np.float32)
        self.runner.run(feeds)  # compiles
        import tvm

        self.vm = next(iter(self.runner.compiled.values()))
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in self.runner.input_names]

    def step_ms(self, steps: int) -> float:
        """Median plain step time."""
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.vm["main"](*self.args)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def profile(self, steps: int) -> dict[str, float]:
        """ms per step by kind, summed over the calls of a step (mean over ``steps``)."""
        spent: dict[str, float] = collections.defaultdict(float)
        started: list[float] = []

        def instrument(_func, symbol, before, _result, *args):
            if before:
                started.append(time.perf_counter())
                return 0
            symbol = str(symbol)
            columns = int(args[-1].shape[-1]) if symbol.startswith("sparc_") and args else None
            spent[tvm_kind(symbol, columns)] += time.perf_counter() - started.pop()
            return 0

        self.vm.set_instrument(instrument)
        for _ in range(steps):
            self.vm["main"](*self.args)
        self.vm.set_instrument(None)
        return {kind: seconds * 1e3 / steps for kind, seconds in spent.items()}


class OrtStep:
    """One ONNX Runtime decode step on a growing cache of ``context`` tokens."""

    def __init__(self, variant: str, threads: int, context: int):
        model = load_onnx(model_path(variant))
        kv = find_kv_cache(model)
        self.path, self.threads = str(model_path(variant)), threads
        rng = np.random.default_rng(0)
        self.feeds = {kv.input_ids: np.array([[42]], np.int64), kv.attention_mask: np.ones((1, context + 1), np.int64),
                      kv.position_ids: np.array([[context]], np.int64)}
        for pair in kv.pairs:
            self.feeds[pair.past] = rng.standard_normal(empty_past(model, pair, 1, context).shape).astype(np.float32)
        self.plain = self._session(profile=False)

    def _session(self, profile: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.enable_profiling = profile
        if profile:
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="sparc-ort-profile-"), "decode")
        session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        session.run(None, self.feeds)
        return session

    def step_ms(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.plain.run(None, self.feeds)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def profile(self, steps: int) -> dict[str, float]:
        """ms per step by kind from the profiler's node events (the warm-up run left out)."""
        session = self._session(profile=True)
        for _ in range(steps):
            session.run(None, self.feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        first_timed = runs[1]["ts"] if len(runs) > 1 else 0  # runs[0] is the warm-up in _session
        spent: dict[str, float] = collections.defaultdict(float)
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < first_timed:
                continue
            args = event.get("args", {})
            inputs = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
            outputs = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
            spent[ort_kind(args.get("op_name", ""), inputs, outputs[0] if outputs else [])] += event["dur"] / 1e3
        return {kind: ms / steps for kind, ms in spent.items()}


def measure(variant: str, threads: int, context: int, rounds: int, steps: int) -> dict:
    """Per kind, the median over rounds of ms per step, both runtimes (interleaved rounds)."""
    contestants = {"ORT": OrtStep(variant, threads, context), "TVM": TvmStep(variant, threads, context)}
    kinds = {name: collections.defaultdict(list) for name in contestants}
    step = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, contestant in contestants.items():
            profile = contestant.profile(steps)
            step[name].append(contestant.step_ms(steps))
            for kind in KINDS[:-1]:  # all but OUTSIDE
                kinds[name][kind].append(profile.get(kind, 0.0))
    result = {}
    for name in contestants:
        per_kind = {kind: statistics.median(values) for kind, values in kinds[name].items()}
        total = statistics.median(step[name])
        per_kind[OUTSIDE] = total - sum(per_kind.values())  # negative: the instrumented ops ran slower
        result[name] = {"step_ms": total, "kinds": per_kind}
    return result


def markdown(runs: dict) -> str:
    """One table: per kind, ms/step of ONNX Runtime and TVM in every run (label)."""
    labels = list(runs)
    columns = [(label, name) for label in labels for name in ("ORT", "TVM")]
    head = ["op kind"] + [f"{name} ({label})" for label, name in columns]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(columns) + "|"]
    for kind in KINDS:
        lines.append("| " + " | ".join([kind] + [f"{runs[label][name]['kinds'].get(kind, 0):.2f}"
                                                for label, name in columns]) + " |")
    sums = [sum(v for k, v in runs[label][name]["kinds"].items() if k != OUTSIDE) for label, name in columns]
    lines.append("| sum of the ops (instrumented) | " + " | ".join(f"{v:.2f}" for v in sums) + " |")
    lines.append("| **step (uninstrumented)** | " + " | ".join(f"**{runs[label][name]['step_ms']:.2f}**"
                                                           for label, name in columns) + " |")
    ratios = ", ".join(f"{label}: {runs[label]['ORT']['step_ms'] / runs[label]['TVM']['step_ms']:.2f}×"
                       for label in labels)
    return "\n".join(lines) + f"\n\nTVM step speed vs ORT in the same run: {ratios}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="dense")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="now", help="name of this run in the results (e.g. before, after)")
    args = parser.parse_args()
    path = RESULTS / f"decode_profile_{args.variant.replace(':', '-')}_{args.threads}t.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[args.label] = measure(args.variant, args.threads, args.context, args.rounds, args.steps)
    write_atomic(path, json.dumps(runs, indent=2))
    text = markdown(runs)
    write_atomic(path.with_suffix(".md"), f"# {args.variant} decode step by op kind, {args.threads} thread(s), "
                                          f"context {args.context} (ms per step)\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
