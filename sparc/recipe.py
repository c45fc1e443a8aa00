"""Recipes: which passes to run, with which options, on which backend and target.

A recipe is a list of passes, a dict, or a YAML/JSON file holding either::

    passes:
      - FoldConstants: {}
      - RemoveUnused
    backend: onnxruntime
    target: cpu
    canonicalize: true   # the default: Canonicalize runs before the passes

Each list entry is a pass object, a pass name, or a one-key mapping ``{Name: {options}}``.
Unknown keys, pass names and options raise :class:`RecipeError` naming them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from sparc.errors import RecipeError
from sparc.passes import FoldConstants, RemoveUnused
from sparc.passes.base import SparcPass, build_pass

RECIPE_KEYS = ("passes", "backend", "target", "canonicalize")


def default_passes() -> list[SparcPass]:
    """The recipe ``sparc compile`` applies when given none."""
    return [FoldConstants(), RemoveUnused()]


@dataclasses.dataclass
class Recipe:
    passes: list[SparcPass]
    backend: str | None = None
    target: str | None = None
    canonicalize: bool = True


def load_recipe(source) -> Recipe:
    """Parse ``source`` (None, a list, a dict or a YAML/JSON path) into a :class:`Recipe`."""
    if source is None:
        return Recipe(default_passes())
    if isinstance(source, Recipe):
        return source
    if isinstance(source, (str, os.PathLike)):
        source = _read_file(Path(source))
    if isinstance(source, Mapping):
        unknown = sorted(set(source) - set(RECIPE_KEYS))
        if unknown:
            raise RecipeError(f"unknown recipe key(s) {unknown}; a recipe has {list(RECIPE_KEYS)}")
        passes = _passes(source.get("passes", []))
        canonicalize = source.get("canonicalize", True)
        if not isinstance(canonicalize, bool):
            raise RecipeError(f"recipe key 'canonicalize' is true or false, not {canonicalize!r}")
        return Recipe(passes, _optional_str(source, "backend"), _optional_str(source, "target"), canonicalize)
    if isinstance(source, Sequence):
        return Recipe(_passes(source))
    raise RecipeError(f"a recipe is a list, a dict or a file path, not {type(source).__name__}")


def _read_file(path: Path):
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}") from None


def _passes(entries) -> list[SparcPass]:
    if entries is None:
        return []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        raise RecipeError(f"'passes' must be a list, got {type(entries).__name__}")
    return [_one_pass(entry, index) for index, entry in enumerate(entries)]


def _one_pass(entry, index: int) -> SparcPass:
    if isinstance(entry, SparcPass):
        return entry
    if isinstance(entry, str):
        return build_pass(entry, {})
    if isinstance(entry, Mapping) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        if options is not None and not isinstance(options, Mapping):
            raise RecipeError(f"pass {name!r}: options must be a mapping, got {options!r}")
        return build_pass(str(name), options)
    raise RecipeError(
        f"recipe entry {index} must be a pass name or {{PassName: {{options}}}}, got {entry!r}"
    )


def _optional_str(source: Mapping, key: str) -> str | None:
    value = source.get(key)
    if value is not None and not isinstance(value, str):
        raise RecipeError(f"recipe {key!r} must be a string, got {value!r}")
    return value
