"""sparc: graph-compiler passes that make neural networks smaller and faster through sparsity.

    import sparc
    compiled = sparc.compile(model, example_inputs=(x,), calibration=batches,
                             recipe=[sparc.passes.FoldConstants(), sparc.passes.RemoveUnused()])
    y = compiled(x)
    compiled.export("model.onnx")
    compiled.report.to_markdown()    # per pass: params, MACs, output error, latency
"""

from sparc import passes
from sparc.calibrate import CalibrationData
from sparc.compiler import CompiledModel, compile, load
from sparc.errors import (
    BackendError,
    CalibrationError,
    PassError,
    RecipeError,
    SparcError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CalibrationData",
    "CalibrationError",
    "CompiledModel",
    "PassError",
    "RecipeError",
    "SparcError",
    "UnsupportedModelError",
    "compile",
    "load",
    "passes",
]
