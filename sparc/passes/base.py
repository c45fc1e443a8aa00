"""The base of every sparc pass, its context, and the registry recipes look passes up in.

A pass is an ``onnx_ir`` in-place pass with keyword-only options validated in its
constructor (bad values raise :class:`RecipeError` naming the pass and option). It returns an
explicit ``PassResult`` and fills ``self.details`` with what it did, which the pipeline puts
in the report. A pass that needs calibration data reads it from ``self.calibration``: its own
``calibration=`` option when given, else the pipeline's. A recovery pass (``needs_reference``)
reads the model the pipeline was given, before any pass, from ``self.reference``. Calibration
runs on ``self.engine`` (:mod:`sparc.distributed`: this process unless the compile was given
``ray=``). The pipeline binds its data before each run and the details start empty, so one
pass object can serve any number of compiles.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import onnx_ir as ir

from sparc.data import CalibrationData
from sparc.distributed import Engine, InProcess
from sparc.errors import RecipeError

PASSES: dict[str, type[SparcPass]] = {}


def register(cls: type[SparcPass]) -> type[SparcPass]:
    """Class decorator: make a pass available to recipes under its class name."""
    PASSES[cls.__name__] = cls
    return cls


class SparcPass(ir.passes.InPlacePass):
    """Base class: options, calibration access and a report entry.

    Subclasses set ``lossless`` (the pipeline then requires outputs equal to the input model
    within float tolerance) and ``needs_calibration``.
    """

    lossless: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def __init__(self, *, calibration=None, max_error: float | None = None, threads=None):
        super().__init__()
        self._own_calibration = calibration
        self._own_threads = optional_int(self, "threads", threads, low=1)
        self._calibration = calibration
        self.threads = self._own_threads
        self.max_error = optional_number(self, "max_error", max_error, low=0.0)
        self.details: dict[str, Any] = {}
        self.reference: ir.Model | None = None
        self.engine: Engine = InProcess()

    @property
    def name(self) -> str:
        return type(self).__name__

    def options(self) -> dict[str, Any]:
        """The pass's options as given (for the report and for recipes)."""
        return {
            name: getattr(self, name)
            for name in option_names(type(self))
            if name not in ("calibration", "threads")
        }

    def bind(self, calibration: CalibrationData | None, threads: int | None, reference: ir.Model | None = None,
             engine: Engine | None = None) -> None:
        """Called by the pipeline before each run: its calibration data and threads unless the
        pass was given its own, the original model, and the engine calibration runs on (None:
        this process); the details of an earlier run are dropped."""
        self._calibration = self._own_calibration if self._own_calibration is not None else calibration
        self.threads = self._own_threads if self._own_threads is not None else threads
        self.reference = reference
        self.engine = engine if engine is not None else InProcess()
        self.details = {}

    @property
    def calibration(self) -> CalibrationData | None:
        return self._calibration

    def requires(self, model: ir.Model) -> None:
        if self.needs_calibration and self._calibration is None:
            raise RecipeError(
                f"{self.name} needs calibration data: give calibration= to sparc.compile "
                f"(or to the pass), or --calib DATA.npz to sparc compile"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{self.name}({args})"


def option_names(cls: type) -> list[str]:
    """Keyword-only constructor options of ``cls`` and of the classes it derives from."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not issubclass(klass, SparcPass):
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind is param.KEYWORD_ONLY and param.name not in names:
                names.append(param.name)
    return names


def _fail(owner: SparcPass, option: str, message: str) -> RecipeError:
    return RecipeError(f"{owner.name}: option {option!r} {message}")


def optional_number(owner, option: str, value, *, low=None, high=None) -> float | None:
    """Validate an optional real number within [low, high]."""
    if value is None:
        return None
    return number(owner, option, value, low=low, high=high)


def number(owner, option: str, value, *, low=None, high=None, open_low=False) -> float:
    """Validate a real number within [low, high] (or (low, high] with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(owner, option, f"must be a number, got {value!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise _fail(owner, option, f"must be {'>' if open_low else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise _fail(owner, option, f"must be <= {high}, got {value}")
    return float(value)


def optional_int(owner, option: str, value, *, low=None) -> int | None:
    if value is None:
        return None
    return integer(owner, option, value, low=low)


def integer(owner, option: str, value, *, low=None, high=None) -> int:
    """Validate an integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(owner, option, f"must be an integer, got {value!r}")
    if low is not None and value < low:
        raise _fail(owner, option, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise _fail(owner, option, f"must be <= {high}, got {value}")
    return value


def choice(owner, option: str, value, choices) -> str:
    """Validate one of a fixed set of strings."""
    if value not in choices:
        raise _fail(owner, option, f"must be one of {sorted(choices)}, got {value!r}")
    return value


def patterns(owner, option: str, value) -> tuple[str, ...]:
    """Validate a list of glob patterns (a single string is one pattern)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise _fail(owner, option, f"must be a list of name patterns, got {value!r}")
    return tuple(value)


def build_pass(name: str, options: dict | None) -> SparcPass:
    """Instantiate the registered pass ``name`` with ``options``, naming any unknown option."""
    cls = PASSES.get(name)
    if cls is None:
        raise RecipeError(f"unknown pass {name!r}; available passes: {', '.join(sorted(PASSES))}")
    options = dict(options or {})
    accepted = option_names(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise RecipeError(
            f"{name}: unknown option(s) {unknown}; {name} accepts {sorted(accepted)}"
        )
    return cls(**options)
