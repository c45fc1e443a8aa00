"""Recipes: lists, dicts and YAML/JSON files; every mistake is named."""

from __future__ import annotations

import json

import pytest

from sparc.errors import RecipeError
from sparc.passes import FoldConstants, RemoveUnused
from sparc.recipe import load_recipe


def test_yaml_and_json_recipes(tmp_path):
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(
        "passes:\n  - FoldConstants: {input_size_limit: 100}\n  - RemoveUnused\n"
        "backend: onnxruntime\ntarget: cpu\n"
    )
    recipe = load_recipe(yaml_path)
    assert [p.name for p in recipe.passes] == ["FoldConstants", "RemoveUnused"]
    assert recipe.passes[0].input_size_limit == 100
    assert (recipe.backend, recipe.target) == ("onnxruntime", "cpu")
    json_path = tmp_path / "r.json"
    json_path.write_text(json.dumps({"passes": [{"RemoveUnused": {}}]}))
    assert [p.name for p in load_recipe(json_path).passes] == ["RemoveUnused"]


def test_python_objects_and_default():
    recipe = load_recipe([FoldConstants(), "RemoveUnused"])
    assert isinstance(recipe.passes[1], RemoveUnused)
    assert [p.name for p in load_recipe(None).passes] == ["FoldConstants", "RemoveUnused"]


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"passes": ["FoldConstant"]}, "unknown pass 'FoldConstant'; available passes: .*FoldConstants"),
        ({"passes": [{"FoldConstants": {"input_size": 3}}]}, r"FoldConstants: unknown option\(s\) \['input_size'\]"),
        ({"passes": [{"FoldConstants": {"input_size_limit": -1}}]}, "option 'input_size_limit' must be >= 0"),
        ({"passes": [{"FoldConstants": {"input_size_limit": "many"}}]}, "must be an integer"),
        ({"passes": [{"FoldConstants": 3}]}, "options must be a mapping"),
        ({"pases": []}, r"unknown recipe key\(s\) \['pases'\]"),
        ({"passes": "FoldConstants"}, "'passes' must be a list"),
        ({"backend": 3}, "recipe 'backend' must be a string"),
        ([{"A": {}, "B": {}}], "recipe entry 0 must be a pass name"),
        (42, "a recipe is a list, a dict or a file path"),
    ],
)
def test_recipe_mistakes_are_named(recipe, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("passes: [FoldConstants\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{passes")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(broken_json)
