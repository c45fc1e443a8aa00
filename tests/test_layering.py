"""The package's layering, read from the source (ast): no import cycle, no upward import,
the evaluation harness never imported by the core, and no function-level import of sparc
modules except those that load an optional dependency (TVM, the model packages)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "sparc"
# bottom to top, as in sparc/__init__.py; a module imports only from its layer and below
LAYERS = [
    ["sparc.errors", "sparc.files", "sparc.ir_utils", "sparc.capture", "sparc.capture.*"],
    ["sparc.runtime", "sparc.torch_runtime", "sparc.distributed"],
    ["sparc.data"],
    ["sparc.measure", "sparc.measure.*"],
    ["sparc.analysis", "sparc.analysis.*", "sparc.ops", "sparc.ops.*"],
    ["sparc.algorithms", "sparc.algorithms.*"],
    ["sparc.passes", "sparc.passes.*", "sparc.backends", "sparc.backends.*"],
    ["sparc.compiler", "sparc.generation", "sparc.recipe", "sparc.report", "sparc.summary", "sparc.tune"],
    ["sparc.cli", "sparc"],
]
HARNESS = "sparc.eval*"
LAZY_ALLOWED = ["sparc.backends.tvm*", "sparc.eval*"]  # optional dependencies: tvm, the model packages


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported sparc module, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sparc":
            for alias in node.names:  # `from sparc.x import y` names module sparc.x.y when y is one
                child = f"{node.module}.{alias.name}"
                found.append((child if child in MODULES else node.module, id(node) in inside))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in inside) for a in node.names if a.name.split(".")[0] == "sparc"]
    return found


def _layer(module: str) -> int | None:
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    return None


def test_every_module_has_a_layer_or_is_the_harness():
    unplaced = [m for m in MODULES if _layer(m) is None and not fnmatch.fnmatchcase(m, HARNESS)]
    assert not unplaced, f"modules without a layer: {unplaced}"


def test_no_import_cycle():
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        for target, _ in _imports(path):
            if target != module and not module.startswith(target + "."):  # a package's own __init__
                graph.add_edge(module, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not fnmatch.fnmatchcase(m, HARNESS)))
def test_imports_go_down_the_layers(module):
    own = _layer(module)
    upward = [t for t, _ in _imports(MODULES[module])
              if (_layer(t) is not None and _layer(t) > own) or (fnmatch.fnmatchcase(t, HARNESS) and module != "sparc.cli")]
    assert not upward, f"{module} (layer {own}) imports from above: {upward}"


def test_the_core_never_imports_the_harness_and_analyses_never_run_models():
    for module, path in MODULES.items():
        targets = [t for t, _ in _imports(path)]
        if module.startswith("sparc.analysis"):
            assert not [t for t in targets if t.startswith(("sparc.runtime", "sparc.measure"))], module


def test_function_level_imports_only_load_optional_dependencies():
    lazy = [(m, t) for m, p in MODULES.items() for t, inside in _imports(p)
            if inside and not any(fnmatch.fnmatchcase(t, pattern) for pattern in LAZY_ALLOWED)]
    assert not lazy, f"function-level imports of core modules: {lazy}"


def test_the_private_dependency_apis_sparc_relies_on_still_exist():
    """pyproject bounds onnx-ir and onnxscript because of these; an upgrade that drops one
    fails here by name rather than deep inside a pass."""
    from onnx_ir.passes.common import _c_api_utils
    from onnxscript.rewriter.rules.fusion import _layer_norm, _rms_normalization

    assert callable(_c_api_utils.call_onnx_api) and _c_api_utils._BIG_TENSOR_SIZE_LIMIT > 0
    assert _layer_norm._layer_norm_rule is not None and _rms_normalization.rms_normalization_rules
