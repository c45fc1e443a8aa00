"""sparc: graph-compiler passes that make neural networks smaller and faster through sparsity.

    import sparc
    compiled = sparc.compile(model, example_inputs=(x,), calibration=batches,
                             recipe=[sparc.passes.FoldConstants(), sparc.passes.RemoveUnused()])
    y = compiled(x)
    compiled.export("model.onnx")
    compiled.report.to_markdown()    # per pass: params, MACs, output error, latency

Layers, bottom to top; a module imports only from its own layer and those below
(tests/test_layering.py checks it on the source):

1. ``errors``, ``files``, ``ir_utils``, ``capture`` (ONNX files / torch modules -> IR)
2. ``runtime``: ONNX Runtime sessions over an IR (custom domains lowered by what registered them);
   ``torch_runtime``: the IR run in torch, differentiable (recovery passes train with it);
   ``distributed``: where calibration and tuning work runs (this process, or Ray workers)
3. ``data``: calibration intake and checks
4. ``measure``: running with exposed values (``execute``), streaming ``reducers``, output error
   and fidelity (``outputs``), ``cost`` (params, MACs), ``latency``, ``memory``
5. ``analysis`` (pure graph analyses, never run a model) and ``ops`` (the ``ai.sparc`` domain)
6. ``algorithms`` the passes use (sparsity patterns, SparseGPT, the router MLP)
7. ``passes`` (one per file, ``Pipeline``) and ``backends`` (ONNX Runtime, TVM, targets)
8. ``compiler`` (``sparc.compile``), ``tune`` (``sparc.tune``: the fastest model within a quality
   budget), ``generation`` (``sparc.generate``: text from a KV-cache decoder), ``recipe``,
   ``report``, ``summary`` (``sparc inspect``)
9. ``cli``

Beside the core and never imported by it: ``sparc.eval``, the evaluation harness (model zoo,
datasets, quality metrics, the demo); only the CLI's ``demo`` and ``bench`` commands load it.
"""

from sparc import passes
from sparc.compiler import CompiledModel, compile, load
from sparc.data import CalibrationData
from sparc.errors import (
    BackendError,
    CalibrationError,
    DistributedError,
    PassError,
    RecipeError,
    SparcError,
    TuneError,
    UnsupportedModelError,
)
from sparc.generation import generate
from sparc.tune import TuneResult, tune

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CalibrationData",
    "CalibrationError",
    "CompiledModel",
    "DistributedError",
    "PassError",
    "RecipeError",
    "SparcError",
    "TuneError",
    "TuneResult",
    "UnsupportedModelError",
    "compile",
    "generate",
    "load",
    "passes",
    "tune",
]
