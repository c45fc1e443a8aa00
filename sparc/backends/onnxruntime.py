"""ONNX Runtime backend: the compiled model runs in a :class:`sparc.runtime.OrtRunner`;
export writes standard ONNX atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from sparc.analysis.blocks import find_segments
from sparc.analysis.stages import split_into_stages
from sparc.data import CalibrationData
from sparc.errors import BackendError, StructureError
from sparc.ir_utils import PROTOBUF_LIMIT, check_model, weight_bytes, weight_store
from sparc.measure.staged import StagedRun
from sparc.runtime import one_line


def export_onnx(model: ir.Model, path: str | os.PathLike) -> Path:
    """Write a checker-valid ONNX file atomically; return its path.

    The model (and its external data, used when it would pass protobuf's 2 GB limit) is
    written into a temporary folder beside ``path``, checked, then renamed into place, so a
    failure leaves any existing file untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise BackendError(f"{path}: is a folder; give a file name such as {path / 'model.onnx'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BackendError(f"{path}: the folder {folder} does not exist")
    if weight_store(model.graph) is not None:
        return _export_out_of_core(model, path, folder)  # the checker reads the written file
    problem = check_model(model)
    if problem:
        raise BackendError(f"refusing to export a model the ONNX checker rejects: {problem}")
    external = weight_bytes(model) >= PROTOBUF_LIMIT - 2**26
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(prefix=".sparc-export-", dir=folder) as staging:
        staged = Path(staging) / path.name
        try:
            ir.save(model, staged, external_data=data_name if external else None)
            onnx.checker.check_model(str(staged))
        except Exception as exc:
            raise BackendError(f"{path}: export failed: {one_line(exc)}") from None
        if external:
            os.replace(Path(staging) / data_name, folder / data_name)
        os.replace(staged, path)
    return path


def _export_out_of_core(model: ir.Model, path: Path, folder: Path) -> Path:
    """Export a model whose weights live in its weight store and in memory-mapped source files.

    Every weight not yet in the store is appended to it (one at a time, its source mapping
    released after); the store's file is then moved to become ``path``'s external data (a
    later export copies it from there) and the graph is written referencing it. A failure
    leaves ``folder`` untouched and the store where it was.
    """
    store = weight_store(model.graph)
    if not store.closed:
        _store_every_weight(model, store)
        store.close()
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(prefix=".sparc-export-", dir=folder) as staging:
        staged, data = Path(staging) / path.name, Path(staging) / data_name
        try:
            (os.replace if store.temporary else shutil.copyfile)(store.path, data)
            _point_weights_at(model, data)
            ir.save(model, staged)
            onnx.checker.check_model(str(staged))
        except Exception as exc:
            if store.temporary and data.exists():
                os.replace(data, store.path)
            _point_weights_at(model, store.path)
            raise BackendError(f"{path}: export failed: {one_line(exc)}") from None
        os.replace(data, folder / data_name)
        os.replace(staged, path)
    store.moved_to(folder / data_name)
    _point_weights_at(model, store.path)
    return path


def _store_every_weight(model: ir.Model, store) -> None:
    """Append every initializer not in ``store`` yet, releasing each source mapping after."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and Path(tensor.path) == store.path:
            continue
        value.const_value = store.tensor(tensor.numpy(), value.name)
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


def _point_weights_at(model: ir.Model, data: Path) -> None:
    """Make every initializer (all in one data file) reference the file ``data``."""
    for value in model.graph.initializers.values():
        t = value.const_value
        value.const_value = ir.ExternalTensor(data.name, t.offset, t.length, t.dtype, shape=t.shape, name=t.name,
                                              base_dir=data.parent)


class StagedRunner:
    """Runs an out-of-core model one block at a time (``analysis.stages.staged_outputs``):
    slow, but memory holds one block's weights."""

    def __init__(self, model: ir.Model, *, threads: int | None = None):
        self.model = model
        self.threads = threads
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]

    def run(self, feeds) -> dict:
        outputs = staged_outputs(self.model, CalibrationData([dict(feeds)]), threads=self.threads)[0]
        return dict(zip(self.output_names, outputs))


def staged_outputs(model: ir.Model, data, *, threads: int | None = None) -> list[list]:
    """The graph outputs of ``model`` for every batch of ``data`` (graph-output order), run one
    stage at a time (one block's weights in memory); a model without blocks runs as one stage."""
    try:
        stages = [stage.nodes for stage in split_into_stages(model, find_segments(model))]
    except StructureError:
        model.graph.sort()
        stages = [list(model.graph)]
    run = StagedRun(model, stages, data, threads=threads, outputs=True)
    for _ in stages:
        run.advance()
    return run.outputs()
