"""Writing user-visible files safely: a temporary name in the target folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from sparc.errors import SparcError


def cache_dir() -> Path:
    """Where sparc keeps what it makes once (converted models, npm packages, the aarch64
    rootfs, TVM layout timings): ``$SPARC_CACHE``, else ``~/.cache/sparc``."""
    root = Path(os.environ.get("SPARC_CACHE", Path.home() / ".cache" / "sparc"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SparcError(f"{path}: the folder {folder} does not exist")
    payload = data.encode() if isinstance(data, str) else data
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return path
