"""The ready recipes in recipes/: each validates, evaluates what it builds, is documented, and fits its budget."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hf_optim.cli import main
from hf_optim.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# scenario recipe -> the largest export guard (metric drop vs its source) its accuracy budget allows
SCENARIOS = {"latency-sensitive": 0.02, "throughput-sensitive": 0.05, "resource-constrained": 0.10}


def test_the_scenario_recipes_exist():
    assert {p.stem for p in RECIPES} >= set(SCENARIOS) | {"movie-sentiment", "own-model-csv"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_evaluates_every_model_it_builds(path, capsys):
    assert main(["recipe", "check", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    recipe = Recipe.from_yaml(path)
    evaluated = {s.config.model for s in recipe.stages if s.config.kind == "evaluate"}
    built = {s.name for s in recipe.stages if s.config.kind in ("finetune", "distill", "quantize", "export", "prune")}
    # every model-producing stage that no later stage transforms is measured (the report compares them)
    consumed = {getattr(s.config, f) for s in recipe.stages for f in type(s.config).inputs
                if s.config.kind != "evaluate"}
    # a GGUF runs outside Python (llama.cpp): it counts as measured when the checkpoint whose grid it copies is
    # (tests/quantize/test_lm_quantize.py checks that the copy re-rounds nothing)
    evaluated |= {s.name for s in recipe.stages if s.config.kind == "export"
                  and getattr(s.config, "format", "onnx") == "gguf" and s.config.model in evaluated}
    assert (built - consumed) <= evaluated, f"{path.name}: final artifacts not evaluated: {built - consumed - evaluated}"
    # the baseline (the first evaluated artifact) is the starting model: the first stage's output or a builtin model
    baseline = next(s.config.model for s in recipe.stages if s.config.kind == "evaluate")
    assert baseline == recipe.stages[0].name or baseline.startswith("builtin:"), baseline
    assert recipe.description


@pytest.mark.parametrize("name,budget", SCENARIOS.items())
def test_scenario_export_guards_fit_the_budget(name, budget):
    recipe = Recipe.from_yaml(ROOT / "recipes" / f"{name}.yaml")
    exports = [s.config for s in recipe.stages if s.config.kind == "export"]
    assert exports and all(0 < e.max_metric_drop <= budget for e in exports)


def test_own_data_recipe_points_at_real_columns():
    recipe = Recipe.from_yaml(ROOT / "recipes" / "own-model-csv.yaml")
    task = recipe.stages[0].config.task
    with open(task["dataset"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert {task["text_column"], task["label_column"]} <= set(rows[0])
    assert len(rows) >= 3 * task["test_size"]  # train keeps the rest after test and validation are carved out
    assert {r[task["label_column"]] for r in rows} == {"negative", "positive"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_documented(path):
    assert f"recipes/{path.name}" in (ROOT / "docs" / "recipes.md").read_text()
