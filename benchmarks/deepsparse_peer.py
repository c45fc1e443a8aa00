"""DeepSparse 1.8.0 vs sparc's TVM backend on the same sparse ONNX files, against ORT dense.

Models: all-MiniLM-L6-v2 (sentence embedding) and SmolLM2-135M-Instruct prefill (logits for the
whole window), inputs the first ``batch`` Lee documents padded or truncated to 128 tokens.
Masks, applied in torch to every nn.Linear inside the transformer layers (not the embeddings,
not the LM head): 16×1 blocks by magnitude (torch weight W[out, in]: 16 consecutive output rows
of one input column form a block, scored by its L2 norm; the top ``density`` fraction of
blocks of each layer is kept) and unstructured magnitude (the top ``density`` fraction of |w|
of each layer). Each (model, pattern, density) is exported once with the legacy exporter
(``torch.onnx.export(dynamo=False, opset_version=17)``, batch a dynamic axis, seq 128 static,
``ir_version = 8`` since DeepSparse refuses IR 10) to ``$SPARC_CACHE/peer-models/``, and every
runtime reads exactly that file.

Contestants, each in its own process (benchmarks/peer_worker.py; thread pools of two runtimes
in one process slow each other down on 2 cores), all with the same thread count T:
- ORT dense: ONNX Runtime (sparc's venv) on the density-1.0 file, intra-op T, inter-op 1,
  sequential execution. The baseline of every ratio.
- DeepSparse: ``compile_model(file, batch_size=B, num_cores=T)`` in its own venv
  (benchmarks/install_deepsparse.py), on the sparse file.
- sparc TVM: ``TvmRunner(load_onnx(file), threads=T)`` on the sparse file; on the dense row it
  runs the dense file (TVM dense vs ORT dense).

Protocol per configuration (model, pattern, density, batch, threads): ONNX Runtime runs the
sparse file once for reference outputs; the workers start one after another (compiling
alone), each saves its outputs (compared with the reference: max abs error, relative L2 error,
cosine, and top-1 agreement for logits) and does warm-up runs; then ``--rounds`` interleaved
rounds, in each of which every worker in turn (rotating order, only one working at a time,
``--gap`` seconds of idle between turns) makes n runs, n chosen so that an ORT dense turn
lasts about ``--turn`` seconds. Latency = median over rounds of the per-turn median; speedup =
median over rounds of (ORT dense turn median / contestant turn median); sparc/DeepSparse =
median over rounds of (DeepSparse / sparc TVM). Workers are killed after each configuration.
During every turn the script also measures, from /proc/stat and /proc/<pid>/stat, how many
cores everything other than the timed worker kept busy (other users' jobs, hypervisor steal).
A timing is flagged (⚠ in the table) when its runs are erratic (p90/p10 of all runs > 2), when a
sparse runtime runs at under half the speed of ORT dense, when 2 threads are slower than 1
thread for the same file and batch, or when other processes kept more than 0.3 cores busy
beyond the cores the runtime leaves free (2 cores, 1 thread: 1.3 cores) during its turns. The last one matters: at 2 threads on a 2-core machine any other busy process
takes a core away from a thread pool, and DeepSparse's pool then stalls (runs 20-50× slower,
where ONNX Runtime's slows about 3×). ``--quiet-wait S`` makes each turn wait up to S seconds
for the machine to go idle.

Usage: python benchmarks/deepsparse_peer.py [--models minilm smollm2] [--patterns 16x1 unstructured]
           [--densities 1.0 0.5 0.3 0.2 0.1] [--batches 1 8] [--threads 1 2] [--rounds 10]
           [--contestants deepsparse tvm] [--quiet-wait 30]
Quick: --models minilm --patterns 16x1 --densities 0.3 --batches 1 --threads 1 --rounds 3
Needs: python3.11 benchmarks/install_deepsparse.py (once). Writes results/deepsparse_peer.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import write_results
from install_deepsparse import deepsparse_env, venv_python

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peer_worker.py"
MODELS = {"minilm": "embedding", "smollm2": "logits"}  # model -> output name
PATTERNS = ("16x1", "unstructured")
DENSITIES = (1.0, 0.5, 0.3, 0.2, 0.1)
SEQ = 128
MASK_VERSION = 1  # bump when the masks or the export change: cached files are then made again
ERRATIC = 2.0  # p90/p10 of a contestant's runs above which its timing is flagged
BUSY = 0.3  # cores used by other processes during a contestant's turns above which it is flagged


# ---------------------------------------------------------------------------------------------
# Masks and model files


def layer_linears(module) -> dict[str, object]:
    """Every nn.Linear inside the transformer layers: the largest nn.ModuleList of the module."""
    import torch

    lists = [(len(m), name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise SystemExit("no nn.ModuleList of transformer layers in the model")
    _, prefix, layers = max(lists, key=lambda item: item[0])
    return {f"{prefix}.{name}": m for name, m in layers.named_modules() if isinstance(m, torch.nn.Linear)}


def mask(weight, pattern: str, density: float):
    """The 0/1 mask that keeps the top ``density`` fraction of ``weight`` [out, in] by magnitude."""
    import torch

    w = weight.detach().abs()
    if pattern == "16x1":
        out, inp = w.shape
        if out % 16:
            raise SystemExit(f"16x1 blocks need a multiple of 16 output features, got {out}")
        scores = w.reshape(out // 16, 16, inp).pow(2).sum(dim=1).sqrt().flatten()  # [out/16 * in]
    elif pattern == "unstructured":
        scores = w.flatten()
    else:
        raise SystemExit(f"unknown pattern {pattern!r}")
    keep = max(1, round(density * scores.numel()))
    kept = torch.zeros(scores.numel(), dtype=weight.dtype)
    kept[torch.topk(scores, keep, sorted=False).indices] = 1
    if pattern == "16x1":
        return kept.reshape(out // 16, 1, inp).expand(out // 16, 16, inp).reshape(out, inp)
    return kept.reshape(w.shape)


def export(model_key: str, zoo_model, linears: dict, originals: dict, pattern: str, density: float, path: Path) -> dict:
    """Mask the layers' weights, export with the legacy exporter (IR 8), restore the weights.

    Returns what the file holds: the masked layers' density measured in torch and in the file."""
    import onnx
    import torch

    from sparc.eval import datasets, zoo

    meta = {"mask_version": MASK_VERSION, "pattern": pattern, "density": density, "seq": SEQ}
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        with contextlib.suppress(ValueError):
            stored = json.loads(sidecar.read_text())
            if all(stored.get(k) == v for k, v in meta.items()):
                return stored
    kept = total = 0
    with torch.no_grad():
        for name, linear in linears.items():
            weight = originals[name]
            if density < 1.0:
                weight = weight * mask(weight, pattern, density)
            linear.weight.copy_(weight)
            kept += int((weight != 0).sum())
            total += weight.numel()
    example = zoo.torch_inputs(zoo_model.make_inputs(datasets.lee_documents()[:2], seq=SEQ))
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    output = MODELS[model_key]
    axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, output: {0: "batch"}}
    start = time.perf_counter()
    try:
        torch.onnx.export(zoo_model.module, (example["input_ids"], example["attention_mask"]), str(staging),
                          dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask"],
                          output_names=[output], dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(str(staging))
        proto.ir_version = 8
        onnx.save(proto, str(staging))
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        with torch.no_grad():
            for name, linear in linears.items():
                linear.weight.copy_(originals[name])
    meta.update(torch_density=kept / total, file_density=_file_density(proto, linears),
                export_s=round(time.perf_counter() - start, 1), opset=17, ir_version=8)
    sidecar.write_text(json.dumps(meta, indent=2))
    return meta


def _file_density(proto, linears: dict) -> float:
    """Non-zeros / size over the file's MatMul/Gemm weight initializers shaped like the masked layers."""
    from onnx import numpy_helper

    shapes = {tuple(m.weight.shape) for m in linears.values()} | {tuple(m.weight.shape)[::-1] for m in linears.values()}
    used = {name for node in proto.graph.node if node.op_type in ("MatMul", "Gemm") for name in node.input}
    kept = total = 0
    for init in proto.graph.initializer:
        if init.name in used and tuple(init.dims) in shapes:
            array = numpy_helper.to_array(init)
            kept += int(np.count_nonzero(array))
            total += array.size
    return kept / total if total else float("nan")


# ---------------------------------------------------------------------------------------------
# Workers


class Worker:
    """One contestant in its own process, spoken to in JSON lines (see peer_worker.py)."""

    def __init__(self, label: str, kind: str, model: Path, feeds: Path, batch: int, threads: int, logs: Path,
                 timeout: float):
        self.label, self.kind = label, kind
        python = str(venv_python()) if kind == "deepsparse" else sys.executable
        env = deepsparse_env()  # NM_DISABLE_ANALYTICS=1 for every worker
        self.log = logs / f"{label.replace(' ', '_')}.log"
        self._stderr = open(self.log, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [python, str(WORKER), "--kind", kind, "--model", str(model), "--feeds", str(feeds),
             "--batch", str(batch), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env, cwd=HERE)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._answer(timeout)

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return {"ok": False, "error": f"no answer within {timeout:.0f} s"}
        if line is None:
            return {"ok": False, "error": f"the worker exited (code {self.process.poll()}): {self.tail()}"}
        return json.loads(line)

    def ask(self, timeout: float = 3600, **command) -> dict:
        if self.process.poll() is not None:
            return {"ok": False, "error": f"the worker exited (code {self.process.returncode}): {self.tail()}"}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer(timeout)

    def tail(self, lines: int = 6) -> str:
        self._stderr.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()  # only this worker, by its own handle
            self.process.wait()
        self._stderr.close()


# ---------------------------------------------------------------------------------------------
# One configuration


def agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Max abs error, relative L2 error and cosine over all outputs; top-1 agreement for logits."""
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in ours])
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in reference])
    if a.shape != b.shape:
        return {"error": f"output sizes differ: {a.shape} vs {b.shape}"}
    result = {"max_abs": float(np.abs(a - b).max()),
              "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
              "cosine": float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))}
    if reference[0].ndim == 3:  # logits [batch, seq, vocab]
        result["top1"] = float(np.mean(np.argmax(ours[0], -1) == np.argmax(reference[0], -1)))
    return result


def _load_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def run_configuration(config: dict, dense: Path, sparse: Path, feeds: Path, args, work: Path) -> dict:
    """Reference outputs, then the contestants side by side; returns the record of this configuration."""
    batch, threads = config["batch"], config["threads"]
    record = dict(config, contestants={}, errors={})
    logs = work / "logs" / f"{config['model']}-{config['pattern']}-{config['density']}-b{batch}-t{threads}"
    logs.mkdir(parents=True, exist_ok=True)
    start = {"feeds": feeds, "batch": batch, "threads": threads, "logs": logs, "timeout": args.startup_timeout}

    reference_path = work / "reference.npz"
    reference_worker = Worker("ort reference", "ort", sparse, **start)
    try:
        answer = reference_worker.ready if not reference_worker.ready.get("ok") else \
            reference_worker.ask(cmd="outputs", path=str(reference_path))
    finally:
        reference_worker.close()
    if not answer.get("ok"):
        record["errors"]["ort reference"] = answer.get("error")
        print(f"  ORT on the sparse file failed: {answer.get('error')}", flush=True)
        return record
    reference = _load_outputs(reference_path)

    plan = [("ort dense", "ort", dense), ("deepsparse", "deepsparse", sparse), ("sparc tvm", "tvm", sparse)]
    plan = [item for item in plan if item[1] == "ort" or item[1] in args.contestants]
    workers: dict[str, Worker] = {}
    try:
        for label, kind, model in plan:
            if label == "deepsparse" and not venv_python().is_file():
                record["errors"][label] = f"no DeepSparse venv at {venv_python()}: run install_deepsparse.py"
                continue
            worker = Worker(label, kind, model, **start)
            if not worker.ready.get("ok"):
                record["errors"][label] = worker.ready.get("error")
                print(f"  {label} failed to start: {worker.ready.get('error')}", flush=True)
                worker.close()
                continue
            workers[label] = worker
            entry = {"load_s": round(worker.ready["load_s"], 2), "info": worker.ready.get("info", {})}
            out_path = work / f"{label.replace(' ', '_')}.npz"
            answer = worker.ask(cmd="outputs", path=str(out_path))
            # ORT dense runs the dense file: its difference to the reference is what the masks did.
            key = "sparse_vs_dense" if label == "ort dense" else "agreement"
            if answer.get("ok"):
                entry[key] = agreement(_load_outputs(out_path), reference)
                out_path.unlink()
            else:
                entry[key] = {"error": answer.get("error")}
            record["contestants"][label] = entry
            what = "dense vs sparse outputs (ORT)" if key == "sparse_vs_dense" else "vs ORT on the same file"
            print(f"  {label}: ready in {entry['load_s']} s; {what}: {entry[key]}; {entry['info']}", flush=True)
        if "ort dense" not in workers:
            record["errors"].setdefault("ort dense", "did not start")
            return record
        warm = {label: w.ask(cmd="time", n=args.warmup) for label, w in workers.items()}
        for label, answer in warm.items():
            if not answer.get("ok"):
                record["errors"][label] = answer.get("error")
                workers.pop(label).close()
                record["contestants"].pop(label, None)
        if "ort dense" not in workers:
            return record
        base_ms = statistics.median(warm["ort dense"]["ms"])
        runs = max(1, min(args.max_runs, round(args.turn * 1e3 / base_ms)))
        record["runs_per_turn"] = runs
        turns: dict[str, list[float]] = {label: [] for label in workers}
        samples: dict[str, list[float]] = {label: [] for label in workers}
        labels = list(workers)
        others: dict[str, list[float]] = {label: [] for label in workers}
        waited = 0.0
        for r in range(args.rounds):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in order:
                waited += _settle(args)  # the previous worker's pool goes idle; optionally wait for other load
                worker = workers[label]
                before = (time.perf_counter(), _busy_ticks(), _process_ticks(worker.process.pid))
                answer = worker.ask(cmd="time", n=runs)
                after = (time.perf_counter(), _busy_ticks(), _process_ticks(worker.process.pid))
                if not answer.get("ok"):
                    raise RuntimeError(f"{label}: {answer.get('error')}")
                turns[label].append(statistics.median(answer["ms"]))
                samples[label].extend(answer["ms"])
                others[label].append(_other_cores(before, after))
        record["waited_for_quiet_s"] = round(waited, 1)
        for label in labels:
            ms = sorted(samples[label])
            p10, p90 = ms[int(0.1 * (len(ms) - 1))], ms[int(0.9 * (len(ms) - 1))]
            entry = record["contestants"][label]
            entry.update(median_ms=statistics.median(turns[label]), min_ms=ms[0], p10_ms=p10, p90_ms=p90,
                         spread=p90 / p10, turn_ms=turns[label], other_cores=others[label],
                         speedup=statistics.median(a / b for a, b in zip(turns["ort dense"], turns[label])))
        if "deepsparse" in turns and "sparc tvm" in turns:
            record["sparc_over_deepsparse"] = statistics.median(
                a / b for a, b in zip(turns["deepsparse"], turns["sparc tvm"]))
    except RuntimeError as exc:
        record["errors"]["timing"] = str(exc)
        print(f"  timing failed: {exc}", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
        with contextlib.suppress(FileNotFoundError):
            reference_path.unlink()
    return record


def _busy_ticks() -> int | None:
    """Clock ticks all CPUs of the machine spent busy (user, system, irq, steal), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal


def _process_ticks(pid: int) -> int | None:
    """Clock ticks (user + system, all threads) process ``pid`` has used."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _other_cores(before: tuple, after: tuple) -> float | None:
    """Cores kept busy by everything except the timed worker between two samples (others' load, steal)."""
    if None in before or None in after or after[0] <= before[0]:
        return None
    busy = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, busy / os.sysconf("SC_CLK_TCK") / (after[0] - before[0]))


def _settle(args) -> float:
    """Sleep ``--gap`` s; while other processes keep more than ``--busy-limit`` cores busy, wait on
    (up to ``--quiet-wait`` s). Returns the seconds waited beyond the gap."""
    waited = 0.0
    while True:
        start, busy = time.perf_counter(), _busy_ticks()
        time.sleep(args.gap)
        end, busy_end = time.perf_counter(), _busy_ticks()
        if busy is None or waited >= args.quiet_wait:
            return waited
        if (busy_end - busy) / os.sysconf("SC_CLK_TCK") / (end - start) <= args.busy_limit:
            return waited
        waited += args.gap


# ---------------------------------------------------------------------------------------------
# Flags, table, main


def flag(records: list[dict]) -> None:
    """Mark DeepSparse (and sparc TVM) timings that do not look like a working runtime."""
    by_key = {(r["model"], r["pattern"], r["density"], r["batch"], r["threads"]): r for r in records}
    for r in records:
        for label in ("ort dense", "deepsparse", "sparc tvm"):
            entry = r["contestants"].get(label)
            if not entry or "median_ms" not in entry:
                continue
            notes = []
            loads = [x for x in entry.get("other_cores", []) if x is not None]
            spare = max(0, (os.cpu_count() or 1) - r["threads"])  # cores the runtime does not need
            if loads and statistics.median(loads) > spare + BUSY:
                notes.append(f"machine busy (other processes {statistics.median(loads):.1f} cores)")
            if entry["spread"] > ERRATIC:
                notes.append(f"erratic (p90/p10 {entry['spread']:.1f})")
            if label != "ort dense" and entry["speedup"] < 0.5:
                notes.append("under half of ORT dense")
            one = by_key.get((r["model"], r["pattern"], r["density"], r["batch"], 1))
            single = one["contestants"].get(label, {}).get("median_ms") if one and r["threads"] > 1 else None
            if label != "ort dense" and single is not None and entry["median_ms"] > single:
                notes.append(f"{r['threads']} threads slower than 1 ({entry['median_ms']:.1f} vs {single:.1f} ms)")
            entry["flags"] = notes


def _agree_cell(r: dict) -> str:
    parts = []
    for label, short in (("deepsparse", "DS"), ("sparc tvm", "TVM")):
        a = r["contestants"].get(label, {}).get("agreement")
        if not a:
            continue
        if "error" in a:
            parts.append(f"{short} error")
            continue
        text = f"{short} rel {a['rel_l2']:.1e}, cos {a['cosine']:.5f}"
        if "top1" in a:
            text += f", top-1 {a['top1']:.3f}"
        parts.append(text)
    return "; ".join(parts) or "—"


def _speed_cell(r: dict, label: str) -> str:
    entry = r["contestants"].get(label)
    if entry is None or "speedup" not in entry:
        error = r["errors"].get(label) or r["errors"].get("timing")
        return "failed" if error else "—"
    cell = f"{entry['speedup']:.2f}×"
    if entry.get("flags"):
        cell += " ⚠ " + ", ".join(entry["flags"])
    return cell


def markdown(records: list[dict], args) -> str:
    intro = ("`python benchmarks/deepsparse_peer.py`: masks applied in torch to the linear layers inside the "
             "transformer layers (16×1 blocks or unstructured, by magnitude, per layer), one legacy-exported "
             "file (opset 17, IR 8) per model, pattern and density, read by every runtime. Each runtime in its "
             "own process; speedup = median over rounds of ORT dense time / contestant time "
             f"({args.rounds} interleaved rounds, one worker at a time), seq 128, Lee documents. "
             "sparc/DeepSparse > 1 means sparc is faster. Agreement: each runtime's outputs vs ONNX Runtime "
             "on the same file (relative L2 error, cosine, top-1 for logits). ⚠ marks timings that look broken "
             f"(runs with p90/p10 > {ERRATIC}, under half of ORT dense, 2 threads slower than 1, or other processes "
             f"keeping over {BUSY} cores busy beyond those the runtime leaves free, "
             "measured from /proc/stat during its turns).")
    lines = ["# DeepSparse 1.8.0 and sparc TVM vs ONNX Runtime dense, on the same sparse ONNX files", "", intro, ""]
    for model in dict.fromkeys(r["model"] for r in records):
        header = ("| model | pattern | density | batch | threads | ORT dense ms | DeepSparse speedup | "
                  "sparc TVM speedup | sparc/DeepSparse | output agreement |")
        lines += [f"## {model}", "", header, "|---|---|---:|---:|---:|---:|---|---|---:|---|"]
        for r in (r for r in records if r["model"] == model):
            ort = r["contestants"].get("ort dense", {})
            ort_cell = f"{ort.get('median_ms', float('nan')):.1f}" + (" ⚠ " + ", ".join(ort["flags"]) if ort.get("flags") else "")
            ratio = f"{r['sparc_over_deepsparse']:.2f}×" if "sparc_over_deepsparse" in r else "—"
            lines.append(f"| {model} | {r['pattern']} | {r['density']} | {r['batch']} | {r['threads']} | "
                         f"{ort_cell} | {_speed_cell(r, 'deepsparse')} | "
                         f"{_speed_cell(r, 'sparc tvm')} | {ratio} | {_agree_cell(r)} |")
        lines.append("")
    errors = [(r, label, error) for r in records for label, error in r["errors"].items()]
    if errors:
        lines += ["## Errors", ""]
        for r, label, error in errors:
            lines.append(f"- {r['model']} {r['pattern']} {r['density']} b{r['batch']} t{r['threads']}, "
                         f"{label}: {' '.join(str(error).split())[:300]}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES),
                        help="1.0 is the dense row (DeepSparse and TVM on the dense file), run once per model")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--contestants", nargs="+", default=["deepsparse", "tvm"], choices=["deepsparse", "tvm"],
                        help="which runtimes to time against ORT dense")
    parser.add_argument("--warmup", type=int, default=3, help="runs per worker before the rounds")
    parser.add_argument("--turn", type=float, default=0.5, help="seconds of ORT dense work per turn")
    parser.add_argument("--max-runs", type=int, default=20, help="at most this many runs per turn")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each turn")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each turn, wait up to this many seconds for other processes to go idle")
    parser.add_argument("--busy-limit", type=float, default=BUSY,
                        help="cores other processes may keep busy before a turn counts as disturbed")
    parser.add_argument("--startup-timeout", type=float, default=3600, help="seconds a worker may take to load")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: $SPARC_CACHE/peer-models")
    parser.add_argument("--name", default="deepsparse_peer", help="results/<name>.{json,md}")
    args = parser.parse_args()
    if not venv_python().is_file():
        print(f"warning: no DeepSparse venv at {venv_python()}; run python3.11 benchmarks/install_deepsparse.py",
              flush=True)

    import torch

    from sparc.eval import datasets, zoo
    from sparc.files import cache_dir

    torch.set_num_threads(max(args.threads))
    folder = args.models_dir or cache_dir() / "peer-models"
    folder.mkdir(parents=True, exist_ok=True)
    densities = sorted(set(args.densities), reverse=True)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="deepsparse-peer-") as temp:
        work = Path(temp)
        for model_key in args.models:
            zoo_model = zoo.get(model_key)
            linears = layer_linears(zoo_model.module)
            originals = {name: m.weight.detach().clone() for name, m in linears.items()}
            print(f"{model_key}: {len(linears)} linear layers masked", flush=True)
            dense = folder / f"{model_key}-dense.onnx"
            files = {("dense", 1.0): (dense, export(model_key, zoo_model, linears, originals, "dense", 1.0, dense))}
            grid = [("dense", 1.0)] if 1.0 in densities else []
            grid += [(p, d) for p in args.patterns for d in densities if d < 1.0]
            for pattern, density in grid:
                if (pattern, density) not in files:
                    path = folder / f"{model_key}-{pattern}-{density}.onnx"
                    files[(pattern, density)] = (path, export(model_key, zoo_model, linears, originals, pattern, density, path))
                path, meta = files[(pattern, density)]
                print(f"{path.name}: density {meta['torch_density']:.4f} in torch, {meta['file_density']:.4f} "
                      f"in the file", flush=True)
                for batch in args.batches:
                    feeds = work / f"feeds-{model_key}-b{batch}.npz"
                    if not feeds.is_file():
                        np.savez(feeds, **zoo_model.make_inputs(datasets.lee_documents()[:batch], seq=SEQ))
                    for threads in args.threads:
                        config = {"model": model_key, "pattern": pattern, "density": density, "batch": batch,
                                  "threads": threads, "file": str(path), "file_density": meta["file_density"]}
                        print(f"== {model_key} {pattern} {density} batch {batch} threads {threads}", flush=True)
                        record = run_configuration(config, dense, path, feeds, args, work)
                        records.append(record)
                        _print_summary(record)
                        flag(records)
                        write_results(args.name, records, markdown(records, args), echo=False)
            del zoo_model, linears, originals
        logs = Path(folder) / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(work / "logs", logs, dirs_exist_ok=True)
    flag(records)
    write_results(args.name, records, markdown(records, args))
    print(f"worker logs: {logs}")


def _print_summary(record: dict) -> None:
    for label, entry in record["contestants"].items():
        if "median_ms" in entry:
            loads = [x for x in entry.get("other_cores", []) if x is not None]
            load = f", other load {statistics.median(loads):.2f} cores" if loads else ""
            print(f"  {label:11s} {entry['median_ms']:8.2f} ms (min {entry['min_ms']:.2f}, p90/p10 "
                  f"{entry['spread']:.2f}{load})  speedup vs ORT dense {entry['speedup']:.2f}×", flush=True)
    if "sparc_over_deepsparse" in record:
        print(f"  sparc/DeepSparse {record['sparc_over_deepsparse']:.2f}×", flush=True)


if __name__ == "__main__":
    main()
