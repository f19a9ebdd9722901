"""Sparsity schedules and PruneConfig validation (no torch needed)."""

import pytest

from hf_optim.errors import ConfigError
from hf_optim.prune import PruneConfig
from hf_optim.prune.schedule import is_update_step, resolve_step, sparsity_at, units_to_prune
from hf_optim.recipe import Recipe


def test_cubic_schedule_values():
    # Zhu & Gupta: s_f + (s_i - s_f) * (1 - p)^3 over [start, end]
    assert sparsity_at(0, 0.8, "cubic", 10, 110) == 0.0
    assert sparsity_at(10, 0.8, "cubic", 10, 110) == pytest.approx(0.0)
    assert sparsity_at(60, 0.8, "cubic", 10, 110) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)  # 0.7
    assert sparsity_at(35, 0.8, "cubic", 10, 110) == pytest.approx(0.8 - 0.8 * 0.75 ** 3)
    assert sparsity_at(110, 0.8, "cubic", 10, 110) == 0.8
    assert sparsity_at(500, 0.8, "cubic", 10, 110) == 0.8


def test_linear_and_oneshot_schedule_values():
    assert sparsity_at(60, 0.5, "linear", 10, 110) == pytest.approx(0.25)
    assert sparsity_at(9, 0.5, "oneshot", 10, 110) == 0.0
    assert sparsity_at(10, 0.5, "oneshot", 10, 110) == 0.5
    assert sparsity_at(60, 0.5, "linear", 10, 110, initial=0.1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown schedule"):
        sparsity_at(60, 0.5, "exponential", 10, 110)


def test_update_steps_and_bounds():
    steps = [s for s in range(0, 60) if is_update_step(s, "cubic", 10, 35, 10)]
    assert steps == [10, 20, 30, 35]
    assert [s for s in range(0, 60) if is_update_step(s, "oneshot", 7, 35, 10)] == [7]
    assert resolve_step(0.5, 200) == 100 and resolve_step(1.0, 200) == 200 and resolve_step(30, 200) == 30
    assert units_to_prune(0.25, 12) == 3 and units_to_prune(0.5, 1536) == 768
    assert units_to_prune(0.99, 4) == 3  # never every unit of a layer


@pytest.mark.parametrize("kwargs,field,match", [
    ({"sparsity": 1.0, "granularity": "unstructured"}, "sparsity", r"\[0, 1\)"),
    ({"sparsity": -0.1, "granularity": "unstructured"}, "sparsity", r"\[0, 1\)"),
    ({"heads": 1.5}, "heads", r"\[0, 1\)"),
    ({"granularity": "nm", "n": 4, "m": 2}, "n", "0 < n < m"),
    ({"granularity": "nm", "n": 4, "m": 4}, "n", "0 < n < m"),
    ({"heads": 0.0, "ffn": 0.0}, "heads", "structured pruning needs"),
    ({"ffn": 0.5, "importance": "movement"}, "start_step", "after some training steps"),
    ({"ffn": 0.5, "start_step": 0.5, "end_step": 0.2}, "end_step", "after start_step"),
    ({"granularity": "unstructured", "include": ["(bad"]}, "include", "not a valid regular expression"),
    ({"granularity": "unstructured", "targets": {"attention": 1.2}}, "targets", r"\[0, 1\)"),
])
def test_bad_configs_raise_clear_errors(kwargs, field, match):
    with pytest.raises(ConfigError, match=match) as info:
        PruneConfig(**kwargs).validate()
    assert info.value.field == field


def test_unknown_values_and_fields_are_rejected():
    with pytest.raises(ConfigError, match="granularity"):
        PruneConfig.from_dict({"granularity": "blocks"})
    with pytest.raises(ConfigError, match="importance"):
        PruneConfig.from_dict({"importance": "random"})
    with pytest.raises(TypeError):
        PruneConfig(sparsityy=0.5)


def test_prune_stage_in_a_recipe(tmp_path):
    data = {"name": "r", "task": "movie-sentiment", "stages": [
        {"name": "p", "kind": "prune", "model": "builtin:minilm-l6", "heads": 0.25, "ffn": 0.5}]}
    recipe = Recipe.from_dict(data, base_dir=tmp_path)
    assert recipe.stages[0].config.heads == 0.25 and recipe.stages[0].config.granularity == "structured"
    bad = {"name": "r", "stages": [{"name": "p", "kind": "prune", "heads": 0.25}]}
    with pytest.raises(ConfigError, match="prune.model is required"):
        Recipe.from_dict(bad, base_dir=tmp_path)
