"""The error types sparc raises for anything a user can cause.

Every error a user can provoke (a bad file, a bad recipe, calibration data that does not
match the model, a pass that cannot apply) is a :class:`SparcError`, so callers and the CLI
catch one type. Messages name the file, node, op, pass or option involved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class SparcError(Exception):
    """Base class of every error sparc raises on purpose."""


class UnsupportedModelError(SparcError):
    """The model cannot be captured or processed.

    ``problems`` lists every offending construct at once (for example each unsupported
    op with the nodes that use it), so a user fixes them all in one round.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class PassError(SparcError):
    """A pass failed, or the model it produced failed verification.

    ``pass_name`` is the failing pass and ``previous`` the passes that ran before it.
    """

    def __init__(self, pass_name: str, previous: Iterable[str], reason: str):
        self.pass_name = pass_name
        self.previous = list(previous)
        self.reason = reason
        after = ", ".join(self.previous) if self.previous else "nothing"
        super().__init__(f"pass {pass_name} (after {after}) failed: {reason}")


class StructureError(SparcError):
    """The graph does not have the structure a pass needs (a pre-norm transformer, attention
    blocks); says why and where."""


class CalibrationError(SparcError):
    """Calibration or validation data does not fit the model, or running it failed."""


class RecipeError(SparcError):
    """A recipe names an unknown pass or option, or gives an invalid value."""


class BackendError(SparcError):
    """A backend could not build, run or export the model."""


class TuneError(SparcError):
    """``sparc.tune`` was given options it cannot search with (budget, metric, data, store)."""


class DistributedError(SparcError):
    """Ray is not installed, a cluster cannot be reached, or a worker died (``sparc[distributed]``)."""
