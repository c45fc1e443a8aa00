"""Per-node time from ONNX Runtime's profiler: where a model spends its time.

This ranks the parts of one model against each other (which layer is worth shrinking); it is
never a speed claim, which only :mod:`sparc.measure.latency` makes. The session runs with graph
optimizations off, so every profiled kernel is one node of the graph under its own name. Times
are the median over ``rounds`` runs of each node's kernel time, in milliseconds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.errors import BackendError
from sparc.runtime import make_session, one_line, session_options

KERNEL_SUFFIX = "_kernel_time"


def node_times(model: ir.Model, feeds: Mapping[str, np.ndarray], *, threads: int | None = 1,
               rounds: int = 5) -> dict[str, float]:
    """{node name: median kernel milliseconds per run} over ``rounds`` runs after one warm-up."""
    with tempfile.TemporaryDirectory(prefix="sparc-profile-") as folder:
        options = session_options(threads, "disable")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        try:
            session = make_session(model, options, ["CPUExecutionProvider"])
            for _ in range(rounds + 1):
                session.run(None, dict(feeds))
            path = session.end_profiling()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot profile the model: {one_line(exc)}") from None
        events = json.loads(Path(path).read_text())
    return _median_kernel_ms(events, rounds)


def _median_kernel_ms(events: list[dict], rounds: int) -> dict[str, float]:
    """The last ``rounds`` kernel times of every node (the first run is warm-up), median, in ms."""
    samples: dict[str, list[float]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX):
            samples[name[: -len(KERNEL_SUFFIX)]].append(event["dur"] / 1000.0)
    return {name: statistics.median(times[-rounds:]) for name, times in samples.items()}
