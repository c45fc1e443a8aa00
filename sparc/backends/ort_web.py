"""onnxruntime-web (WebAssembly) under Node.js: run an exported model as a browser would.

``install()`` puts the pinned onnxruntime-web npm package in ``<sparc cache>/ort-web`` (npm,
once); ``run(model_path, feeds)`` runs one batch there with one WebAssembly thread and
returns the outputs by name. Inputs and outputs cross as raw little-endian files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sparc.errors import BackendError

ORT_WEB_VERSION = "1.30.0"
RUNNER = Path(__file__).with_name("ort_web_runner.mjs")
DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
TIMEOUT_SECONDS = 600


def folder() -> Path:
    from sparc.zoo import cache_dir

    return cache_dir() / "ort-web"


def install() -> Path:
    """Install onnxruntime-web (pinned) for Node.js unless present; returns its folder."""
    target = folder()
    package = target / "node_modules" / "onnxruntime-web" / "package.json"
    if package.is_file() and json.loads(package.read_text())["version"] == ORT_WEB_VERSION:
        return target
    npm = _tool("npm")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(target), "--no-audit", "--no-fund", f"onnxruntime-web@{ORT_WEB_VERSION}"],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise BackendError(f"npm could not install onnxruntime-web {ORT_WEB_VERSION}: {done.stderr.strip()[-500:]}")
    return target


def run(model_path: str | Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the ONNX file ``model_path`` on ``feeds`` from onnxruntime-web in Node.js."""
    node = _tool("node")
    target = install()
    runner = target / RUNNER.name
    shutil.copyfile(RUNNER, runner)
    with tempfile.TemporaryDirectory(prefix="sparc-ort-web-") as scratch:
        work = Path(scratch)
        specs = {}
        for index, (name, array) in enumerate(feeds.items()):
            array = np.ascontiguousarray(array)
            dtype = next((k for k, v in DTYPES.items() if array.dtype == v), None)
            if dtype is None:
                raise BackendError(f"input {name!r}: dtype {array.dtype} is not supported by the web runner")
            (work / f"input_{index}.bin").write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())
            specs[name] = {"file": f"input_{index}.bin", "dtype": dtype, "shape": list(array.shape)}
        (work / "inputs.json").write_text(json.dumps(specs))
        done = subprocess.run([node, str(runner), str(Path(model_path).resolve()), str(work)],
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise BackendError(f"onnxruntime-web failed on {model_path}: {done.stderr.strip()[-800:]}")
        listing = json.loads((work / "outputs.json").read_text())
        return {
            name: np.frombuffer((work / spec["file"]).read_bytes(), DTYPES[spec["dtype"]]).reshape(spec["shape"])
            for name, spec in listing.items()
        }


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackendError(f"{name} (Node.js) is not installed; onnxruntime-web runs under Node.js 18+")
    return path
