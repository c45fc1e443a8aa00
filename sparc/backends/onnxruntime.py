"""ONNX Runtime backend: the compiled model runs in a :class:`sparc.runtime.OrtRunner`;
export writes standard ONNX atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from sparc.errors import BackendError
from sparc.ir_utils import PROTOBUF_LIMIT, check_model, weight_bytes
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
