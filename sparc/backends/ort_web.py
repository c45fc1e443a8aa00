"""onnxruntime-web (WebAssembly) under Node.js: run exported models as a browser would.

``install()`` copies ``web/package.json`` and its lockfile into ``<sparc cache>/web`` and runs
``npm ci`` there once per lockfile (pinned onnxruntime-web, and playwright-core for the browser
demo); nothing is downloaded at run time. ``run(models, feeds)`` runs one or more ONNX files on
the same feeds in one Node.js process with an explicit WebAssembly thread count, returns each
model's outputs and, with ``rounds``, their latencies timed side by side (interleaved, rotating
order, see :mod:`sparc.measure.latency`). Tensors cross as raw little-endian files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sparc.errors import BackendError
from sparc.files import cache_dir
from sparc.measure.latency import Comparison, from_samples

WEB = Path(__file__).with_name("web")
RUNNER = WEB / "runner.mjs"
DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
INSTALL_TIMEOUT_SECONDS = 900
RUN_TIMEOUT_SECONDS = 1800


@dataclasses.dataclass
class WebRun:
    """Outputs per model (by output name) and, when timed, the side-by-side comparison."""

    outputs: dict[str, dict[str, np.ndarray]]
    timing: Comparison | None


def folder() -> Path:
    return cache_dir() / "web"


def version() -> str:
    """The pinned onnxruntime-web version (from ``web/package.json``)."""
    return json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]


def install() -> Path:
    """``npm ci`` the pinned packages into the sparc cache unless that lockfile is installed."""
    target = folder()
    lock = (WEB / "package-lock.json").read_bytes()
    stamp = target / ".installed-lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest and (target / "node_modules").is_dir():
        return target
    npm = _tool("npm")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(WEB / name, target / name)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(target)],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise BackendError(f"npm ci could not install {target / 'package.json'}: {done.stderr.strip()[-500:]}")
    stamp.write_text(digest)
    return target


def run(models: Mapping[str, str | Path], feeds: Mapping[str, np.ndarray], *, threads: int = 1,
        rounds: int = 0, warmup: int = 2) -> WebRun:
    """Run every ONNX file of ``models`` (name → path) on ``feeds`` in onnxruntime-web.

    ``threads`` is the WebAssembly thread count (``ort.env.wasm.numThreads``). With
    ``rounds`` > 0 the models are also timed side by side; the first is the baseline.
    """
    if threads < 1:
        raise BackendError(f"onnxruntime-web needs at least 1 thread, got {threads}")
    node = _tool("node")
    runner = install() / RUNNER.name
    shutil.copyfile(RUNNER, runner)
    with tempfile.TemporaryDirectory(prefix="sparc-ort-web-") as scratch:
        work = Path(scratch)
        job = {"models": {name: {"path": str(Path(path).resolve()), "external": _external_files(path)}
                          for name, path in models.items()},
               "inputs": _write_inputs(work, feeds), "threads": threads, "rounds": rounds, "warmup": warmup}
        (work / "job.json").write_text(json.dumps(job))
        done = subprocess.run([node, str(runner), str(work)], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise BackendError(f"onnxruntime-web failed on {', '.join(map(str, models.values()))}: "
                               f"{done.stderr.strip()[-800:]}")
        listing = json.loads((work / "outputs.json").read_text())
        outputs = {name: {output: _read(work, spec) for output, spec in specs.items()}
                   for name, specs in listing.items()}
        timing = None
        if rounds > 0:
            samples = json.loads((work / "timings.json").read_text())
            timing = from_samples(samples, threads=threads, label=f"onnxruntime-web {version()} (WebAssembly, Node.js)")
        return WebRun(outputs, timing)


def _external_files(path: str | Path) -> list[str]:
    """The external data files an ONNX file's initializers name (onnxruntime-web is handed
    their bytes; it cannot open files itself)."""
    import onnx_ir as ir

    graph = ir.load(str(path)).graph
    return sorted({v.const_value.location for v in graph.initializers.values()
                   if isinstance(v.const_value, ir.ExternalTensor)})


def _write_inputs(work: Path, feeds: Mapping[str, np.ndarray]) -> dict:
    specs = {}
    for index, (name, array) in enumerate(feeds.items()):
        array = np.ascontiguousarray(array)
        dtype = next((k for k, v in DTYPES.items() if array.dtype == v), None)
        if dtype is None:
            raise BackendError(f"input {name!r}: dtype {array.dtype} is not supported by the web runner "
                               f"(supported: {', '.join(DTYPES)})")
        (work / f"input_{index}.bin").write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())
        specs[name] = {"file": f"input_{index}.bin", "dtype": dtype, "shape": list(array.shape)}
    return specs


def _read(work: Path, spec: dict) -> np.ndarray:
    if spec["dtype"] not in DTYPES:
        raise BackendError(f"onnxruntime-web returned an output of type {spec['dtype']}, which sparc cannot read")
    return np.frombuffer((work / spec["file"]).read_bytes(), DTYPES[spec["dtype"]]).reshape(spec["shape"])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackendError(f"{name} (Node.js) is not installed; onnxruntime-web runs under Node.js 18+")
    return path
