"""The TVM backend: the model compiled by TVM 0.27 with sparc's own CPU kernels.

``TvmRunner`` compiles the model once per distinct set of input shapes (the Relax ONNX
frontend needs static shapes; dynamic batch and sequence are served by one executable per
shape, compiled on first use) and runs it in the Relax VM. ``export_library`` writes a shared
library for the host or cross-compiled for aarch64 with a JSON sidecar naming inputs and
outputs; :func:`load_library` runs one on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from sparc.errors import BackendError
from sparc.measure.outputs import OutputError
from sparc.runtime import Executable

TARGETS = ("cpu", "aarch64")
AARCH64_COMPILER = "aarch64-linux-gnu-gcc"


@dataclasses.dataclass
class TvmBuild:
    """What the TVM backend did in a compile: the build for the validation shapes, the
    layout kept for each linear layer (``sparc.backends.tvm.choose.Choice``), functions left
    unscheduled, its outputs against ONNX Runtime's, and why it fell back, if it did."""

    inputs: str
    compile_seconds: float
    layouts: list[Any]
    unscheduled: list[str]
    agreement: OutputError | None = None
    fallback: str | None = None

    def to_markdown(self) -> list[str]:
        lines = [f"TVM compile for {self.inputs}: {self.compile_seconds:.1f} s"]
        lines += [f"TVM layout {choice.summary()}" for choice in self.layouts]
        lines.append(f"TVM functions left unscheduled (serial): {', '.join(self.unscheduled) or 'none'}")
        if self.agreement is not None:
            lines.append(f"TVM vs ONNX Runtime outputs: max relative error {self.agreement.max_rel:.2e} "
                         f"({self.agreement.fidelity()})")
        if self.fallback is not None:
            lines.append(self.fallback)
        return lines


def make_target(target: str, threads: int | None):
    """The TVM target: the host CPU with its features, or generic aarch64 with NEON."""
    import tvm
    from tvm.target import codegen

    cores = threads or os.cpu_count() or 1
    if target == "cpu":
        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores})
    if target == "aarch64":
        return tvm.target.Target(
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": cores}
        )
    raise BackendError(f"the tvm backend has no target {target!r}; its targets: {list(TARGETS)}")


SHARE_ALL_CORES = -3  # TVM's affinity mode: the pool's threads may run on any of the given cores


def set_threads(threads: int | None) -> None:
    """Size TVM's (process-wide) thread pool: ``threads`` workers (default: every core this
    process may use), none pinned. TVM's own default is half the hardware threads (it assumes
    hyper-threading), which is one thread on a 2-core VM, and its ``config_threadpool(0, n)``
    keeps that cap; an explicit core list lifts it."""
    import tvm

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    count = int(threads) if threads else len(cores)
    tvm.get_global_func("runtime.config_threadpool")(SHARE_ALL_CORES, count, [str(c) for c in cores])


class TvmRunner(Executable):
    """Runs an IR model compiled by TVM on this machine (target ``cpu``)."""

    def __init__(self, model: ir.Model, *, threads: int | None = None, choose_layouts: bool = True):
        self.model = model
        self.threads = threads
        self.choose_layouts = bool(choose_layouts)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        self.target = make_target("cpu", threads)
        self.compiled: dict[tuple, object] = {}
        self.choices: list = []
        self.unscheduled: list[str] = []
        self.constant_bytes = 0  # the last compiled executable's weights, as stored
        set_threads(threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ``feeds`` (numpy arrays, or device tensors from :meth:`device_tensor`,
        which are passed without a copy); outputs are numpy views of TVM's result tensors."""
        import tvm

        vm = self._machine({name: tuple(feeds[name].shape) for name in self.input_names})
        args = [feeds[name] if isinstance(feeds[name], tvm.runtime.Tensor)
                else tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), tvm.cpu()) for name in self.input_names]
        return _outputs(vm["main"](*args), self.output_names)

    @staticmethod
    def device_tensor(array: np.ndarray):
        """(a TVM tensor holding a copy of ``array``, a writable numpy view of it): a buffer fed
        to every run (a static KV cache) and updated in place, with no copy per run."""
        import tvm

        tensor = tvm.runtime.tensor(np.ascontiguousarray(array), tvm.cpu())
        return tensor, np.from_dlpack(tensor)

    def _machine(self, shapes: dict[str, tuple[int, ...]]):
        from tvm import relax

        from sparc.backends.tvm.lower import compile_model

        key = tuple(sorted(shapes.items()))
        if key not in self.compiled:
            lowered = compile_model(self.model, shapes, self.target, threads=self.threads or 1,
                                    choose=self.choose_layouts)
            self.choices = lowered.choices
            self.unscheduled = lowered.unscheduled
            self.constant_bytes = lowered.constant_bytes
            import tvm

            self.compiled[key] = relax.VirtualMachine(lowered.executable, tvm.cpu())
        return self.compiled[key]

    def prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Compile for ``shapes`` now (instead of at the first run of that shape)."""
        self._machine(shapes)



def export_library(model: ir.Model, path: str | os.PathLike, shapes: dict[str, tuple[int, ...]], *,
                   target: str = "cpu", threads: int | None = None, choose_layouts: bool = True) -> Path:
    """Compile ``model`` for ``shapes`` and write a shared library (+ ``.json`` sidecar), atomically.

    ``target="aarch64"`` cross-compiles with the Debian ``aarch64-linux-gnu-gcc``; layouts are
    then not timed (this machine cannot run the kernels) and stay dense unless a block layout
    stores at most half the blocks (the CPU speedups measured on x86 start well before that).
    """
    import shutil

    from sparc.backends.tvm.lower import compile_model

    path = Path(path)
    if not path.parent.is_dir():
        raise BackendError(f"{path}: the folder {path.parent} does not exist")
    compiler = None
    if target == "aarch64":
        if shutil.which(AARCH64_COMPILER) is None:
            raise BackendError(f"exporting for aarch64 needs {AARCH64_COMPILER} (Debian gcc-aarch64-linux-gnu)")
        from tvm.support import cc

        compiler = cc.cross_compiler(AARCH64_COMPILER)
    lowered = compile_model(model, shapes, make_target(target, threads), threads=threads or 1,
                            choose=choose_layouts and target == "cpu", heuristic=target != "cpu")
    sidecar = {
        "inputs": {v.name: {"shape": list(shapes[v.name]), "dtype": str(v.dtype.numpy())} for v in model.graph.inputs},
        "outputs": [v.name for v in model.graph.outputs],
        "target": target,
        "layouts": [c.summary() for c in lowered.choices],
    }
    with tempfile.TemporaryDirectory(prefix=".sparc-export-", dir=path.parent) as staging:
        staged = Path(staging) / path.name
        if compiler is None:
            lowered.executable.export_library(str(staged))
        else:
            lowered.executable.export_library(str(staged), fcompile=compiler)
        Path(str(staged) + ".json").write_text(json.dumps(sidecar, indent=2))
        os.replace(Path(str(staged) + ".json"), Path(str(path) + ".json"))
        os.replace(staged, path)
    return path


class LibraryRunner(Executable):
    """Runs a library written by :func:`export_library` for this machine."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        import tvm
        from tvm import relax

        path = Path(path)
        sidecar = Path(str(path) + ".json")
        if not path.is_file() or not sidecar.is_file():
            raise BackendError(f"{path}: not a sparc TVM library (needs the library and {sidecar.name})")
        self.info = json.loads(sidecar.read_text())
        self.input_names = list(self.info["inputs"])
        self.output_names = list(self.info["outputs"])
        set_threads(threads)
        try:
            self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
        except Exception as exc:
            raise BackendError(f"{path}: TVM cannot load it on this machine ({str(exc).splitlines()[-1]})") from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        for name, spec in self.info["inputs"].items():
            if tuple(np.asarray(feeds[name]).shape) != tuple(spec["shape"]):
                raise BackendError(f"input {name!r} must have shape {spec['shape']} (the library was "
                                   f"compiled for it), got {list(np.asarray(feeds[name]).shape)}")
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        return _outputs(self.vm["main"](*args), self.output_names)


def load_library(path: str | os.PathLike, *, threads: int | None = None) -> LibraryRunner:
    return LibraryRunner(path, threads=threads)


def _outputs(result, names: list[str]) -> dict[str, np.ndarray]:
    """The VM's result tensors as numpy arrays sharing their memory (a view keeps its tensor alive)."""
    values = [result] if hasattr(result, "numpy") else list(result)
    return {name: np.from_dlpack(value) for name, value in zip(names, values)}
