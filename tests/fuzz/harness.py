"""Run fuzz cases through the ``sparc`` command in a sandbox and classify what happened.

Every case gets a fresh sandbox::

    secret.bin        a file outside the model's folder that escaping locations point at
    in/               the case's model, external data and symlinks (must stay unchanged)
    data/             real calibration data of the seed and one recipe per pass (unchanged)
    out/model.onnx    a previous output, which a failed compile must leave intact
    work/  tmp/       the working folder and TMPDIR (must stay empty)

and runs ``sparc inspect``, ``sparc compile`` with the default recipe, and ``sparc compile``
with a recipe for each pass, all with the seed's calibration data. Outcomes per operation:

- ``ok``: success, and the output passes the ONNX checker;
- ``refused``: a :class:`SparcError` (or a reported failure with exit status 1);
- ``wrapped``: a :class:`PassError` whose cause is an unexpected exception inside a pass;
- ``crash``: any other exception, or the worker process dying;
- ``timeout``: the case took longer than its time limit;
- ``invalid-output``: success, but the output fails the ONNX checker;
- ``stray-file``: a file written, changed or left behind outside the output path, or a
  previous output clobbered by a failed compile.

Cases run in a worker process (started once, restarted after a crash or a timeout) with an
address-space limit, so a runaway allocation fails instead of swapping the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from tests.fuzz import seeds
from tests.fuzz.corpus import Case

BAD = ("crash", "timeout", "invalid-output", "stray-file")
MEMORY_LIMIT = 16 * 2**30
PREVIOUS_OUTPUT = b"a previous compile's output, which a failed compile must leave intact"
OUTPUT_NAMES = {"model.onnx", "model.onnx.data", "report.md", "report.json"}

PASS_RECIPES: dict[str, list] = {
    "FoldConstants": ["FoldConstants"],
    "RemoveUnused": ["RemoveUnused"],
    "InferShapes": ["InferShapes"],
    "SliceRowsColumns": [{"SliceRowsColumns": {"ratio": 0.25}}],
    "ChannelCrop": [{"ChannelCrop": {"ratio": 0.25}}],
    "NMSparsity": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}],
    "BlockSparsity": [{"BlockSparsity": {"density": 0.5}}],
    "UnstructuredSparsity": [{"UnstructuredSparsity": {"density": 0.5, "method": "sparsegpt"}}],
    "FuseSparseOps": [{"NMSparsity": {"n": 2, "m": 4}}, "FuseSparseOps"],
    "TokenRouter": [{"TokenRouter": {"keep": 0.5, "start_block": 1, "router": "norm"}}],
    "Reconstruct": [{"UnstructuredSparsity": {"density": 0.5}}, {"Reconstruct": {"steps": 10, "eval_every": 5}}],
    "Distill": [{"UnstructuredSparsity": {"density": 0.5}}, {"Distill": {"steps": 10, "eval_every": 5}}],
}
OPERATIONS = ["inspect", "compile"] + [f"pass:{name}" for name in PASS_RECIPES]


@dataclasses.dataclass
class Outcome:
    operation: str
    status: str
    error: str = ""
    message: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class CaseResult:
    case_id: str
    seed: str
    kind: str
    detail: str
    outcomes: list[Outcome]


def operations_for(index: int, mode: str) -> list[str]:
    """All operations, or (``rotate``) inspect, the default compile and two pass recipes
    chosen in rotation by the case's position."""
    if mode == "all":
        return list(OPERATIONS)
    passes = OPERATIONS[2:]
    return OPERATIONS[:2] + [passes[(2 * index) % len(passes)], passes[(2 * index + 1) % len(passes)]]


# -- inside the worker ---------------------------------------------------------------------


def run_case(case: Case, operations: list[str]) -> list[Outcome]:
    """Run ``operations`` on ``case`` in a fresh sandbox (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="sparc-fuzz-"))
    try:
        _build_sandbox(root, case)
        return [_run_operation(root, operation) for operation in operations]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build_sandbox(root: Path, case: Case) -> None:
    for folder in ("in", "data", "out", "work", "tmp"):
        (root / folder).mkdir()
    (root / "secret.bin").write_bytes(os.urandom(4096))
    for name, payload in case.files.items():
        (root / "in" / name).write_bytes(payload)
    for name, target in case.symlinks.items():
        (root / "in" / name).symlink_to(target)
    _, calibration = seeds.seed_files(case.seed)
    shutil.copy(calibration, root / "data" / "calib.npz")
    for name, passes in PASS_RECIPES.items():
        (root / "data" / f"{name}.json").write_text(json.dumps({"passes": passes}))
    (root / "out" / "model.onnx").write_bytes(PREVIOUS_OUTPUT)


def _argv(root: Path, operation: str) -> list[str]:
    model = str(root / "in" / "model.onnx")
    if operation == "inspect":
        return ["inspect", model]
    out = root / "out"
    argv = ["compile", model, "-o", str(out / "model.onnx"), "--report", str(out / "report.md"),
            "--json", str(out / "report.json"), "--calib", str(root / "data" / "calib.npz"),
            "--batch-size", "2"]
    if operation.startswith("pass:"):
        argv += ["--recipe", str(root / "data" / f"{operation[5:]}.json")]
    return argv


def _run_operation(root: Path, operation: str) -> Outcome:
    from sparc.cli import dispatch
    from sparc.errors import PassError, SparcError

    before = _snapshot(root)
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(root / "work")
    tempfile.tempdir = str(root / "tmp")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = dispatch(_argv(root, operation))
        outcome = Outcome(operation, "ok" if code == 0 else "refused", "" if code == 0 else f"exit {code}")
    except PassError as exc:
        cause = exc.__cause__
        unexpected = cause is not None and not isinstance(cause, SparcError) and type(cause).__name__ != "PreconditionError"
        outcome = Outcome(operation, "wrapped" if unexpected else "refused",
                          f"PassError({type(cause).__name__})" if unexpected else "PassError", str(exc)[:300])
    except SparcError as exc:
        outcome = Outcome(operation, "refused", type(exc).__name__, str(exc)[:300])
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - classifying every failure is the point
        outcome = Outcome(operation, "crash", type(exc).__name__, traceback.format_exc()[-1500:])
    finally:
        os.chdir(cwd)
        tempfile.tempdir = None
    outcome.seconds = time.perf_counter() - start
    _check_files(root, before, outcome)
    return outcome


def _snapshot(root: Path) -> dict[str, str]:
    """relative path → content hash (or symlink target) of everything under ``root``."""
    state = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            state[relative] = "link:" + os.readlink(path)
        elif path.is_file():
            state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[relative] = "dir"
    return state


def _check_files(root: Path, before: dict[str, str], outcome: Outcome) -> None:
    """Enforce the file rules, then put out/ back to its starting state for the next run."""
    after = _snapshot(root)
    changed = sorted(
        path for path in set(before) | set(after)
        if before.get(path) != after.get(path) and not path.startswith("out/")
    )
    out = root / "out"
    strays = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
    previous = (out / "model.onnx").is_file() and (out / "model.onnx").read_bytes() == PREVIOUS_OUTPUT
    problems = []
    if changed:
        problems.append(f"changed outside out/: {changed[:5]}")
    if strays:
        problems.append(f"left in out/: {strays[:5]}")
    if outcome.status == "ok" and outcome.operation != "inspect":
        problems += _check_output(out / "model.onnx", outcome)
    elif not previous:
        problems.append("the previous out/model.onnx was clobbered by a failed run")
    if problems and outcome.status != "invalid-output":
        outcome.message = "; ".join(problems) + (f" ({outcome.status}: {outcome.message})" if outcome.message else "")
        outcome.status = "stray-file"
    shutil.rmtree(out)
    out.mkdir()
    (out / "model.onnx").write_bytes(PREVIOUS_OUTPUT)


def _check_output(path: Path, outcome: Outcome) -> list[str]:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001
        outcome.status = "invalid-output"
        outcome.message = f"{type(exc).__name__}: {str(exc)[:300]}"
    return []


def _worker(connection, memory_limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import sparc.cli  # noqa: F401 - import once, before the first case is timed

    while True:
        message = connection.recv()
        if message is None:
            return
        case, operations = message
        connection.send(run_case(case, operations))


# -- in the parent -------------------------------------------------------------------------


class Runner:
    """A worker process that runs cases one at a time, replaced after a crash or timeout."""

    def __init__(self, timeout: float, memory_limit: int = MEMORY_LIMIT):
        self.timeout = timeout
        self.memory_limit = memory_limit
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker, args=(child, self.memory_limit), daemon=True)
        self._process.start()
        self._connection = parent

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._process.join(10)
            self._process.kill()
        self._process = None

    def run(self, case: Case, operations: list[str]) -> CaseResult:
        if self._process is None or not self._process.is_alive():
            self._start()
        self._connection.send((case, operations))
        outcomes = self._wait(operations)
        return CaseResult(case.id, case.seed, case.kind, case.detail, outcomes)

    def _wait(self, operations: list[str]) -> list[Outcome]:
        deadline = time.monotonic() + self.timeout + 60  # + worker start-up
        while time.monotonic() < deadline:
            try:
                if self._connection.poll(1.0):
                    return self._connection.recv()
            except (EOFError, OSError):
                break
            if not self._process.is_alive():
                break
        alive = self._process.is_alive()
        self._process.kill()
        self._process.join()
        code = self._process.exitcode
        self._process = None
        if alive:
            return [Outcome("case", "timeout", "", f"no result within {self.timeout:.0f} s")]
        return [Outcome("case", "crash", "worker died", f"exit code {code}")]


def run(cases, *, timeout: float = 300.0, mode: str = "rotate", operations: list[str] | None = None,
        progress=None) -> list[CaseResult]:
    """Run every case (``operations``, else those ``mode`` picks); ``progress(result)`` is
    called after each one."""
    results = []
    with Runner(timeout) as runner:
        for index, case in enumerate(cases):
            result = runner.run(case, operations or operations_for(index, mode))
            results.append(result)
            if progress:
                progress(result)
    return results


def bad_outcomes(results: list[CaseResult]) -> list[tuple[CaseResult, Outcome]]:
    return [(r, o) for r in results for o in r.outcomes if o.status in BAD]


def summary_markdown(results: list[CaseResult]) -> str:
    """Counts by mutation kind × outcome, by operation × outcome, and the refusal types."""
    statuses = ["ok", "refused", "wrapped", *BAD]
    lines = [f"{len(results)} cases, {sum(len(r.outcomes) for r in results)} runs\n"]
    lines += _table("kind", {r.kind for r in results}, statuses,
                    lambda key, status: sum(o.status == status for r in results if r.kind == key for o in r.outcomes))
    lines.append("")
    operations = sorted({o.operation for r in results for o in r.outcomes}, key=_operation_order)
    lines += _table("operation", operations, statuses,
                    lambda key, status: sum(o.status == status for r in results for o in r.outcomes if o.operation == key))
    errors: dict[str, int] = {}
    for r in results:
        for o in r.outcomes:
            if o.status in ("refused", "wrapped"):
                errors[o.error] = errors.get(o.error, 0) + 1
    lines += ["", "| error | runs |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in sorted(errors.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def _operation_order(name: str) -> int:
    return OPERATIONS.index(name) if name in OPERATIONS else len(OPERATIONS)


def _table(title, keys, statuses, count) -> list[str]:
    keys = list(keys) if not isinstance(keys, set) else sorted(keys)
    lines = [f"| {title} | " + " | ".join(statuses) + " |", "|---|" + "---:|" * len(statuses)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(str(count(key, s)) for s in statuses) + " |")
    return lines
