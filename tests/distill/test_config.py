"""DistillConfig / StudentConfig: validation, JSON/YAML round trips, recipe parsing."""

import json

import pytest
import yaml

from hf_optim.config import config_from_dict
from hf_optim.distill import DistillConfig, StudentConfig
from hf_optim.errors import ConfigError, RecipeError
from hf_optim.recipe import Recipe

CONFIGS = [
    DistillConfig(),
    DistillConfig(model="student", teacher="teacher", temperature=4, alpha=1, hidden_weight=0.5,
                  hidden_layer_map=[[0, 0], [1, 3]], attention_weight=1.0, attention_layer_map=[[1, 2]],
                  task_type="causal_lm", kl_chunk_size=512, epochs=1, max_train_samples=10),
    DistillConfig(cache_teacher_outputs=True, task={"name": "mine", "dataset": "data.csv"}),
    StudentConfig(model="teacher", num_layers=3),
    StudentConfig(model="teacher", num_layers=2, layers=[0, 5], hidden_size=256, num_heads=4, intermediate_size=512),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.kind)
def test_round_trip_json_and_yaml(config):
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert type(config).from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


def test_types_are_coerced():
    c = DistillConfig(temperature=3, epochs=1, learning_rate="5e-5")
    assert isinstance(c.temperature, float) and c.learning_rate == 5e-5


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=0), "temperature"),
    (dict(alpha=1.5), "alpha"),
    (dict(hidden_weight=-1), "hidden_weight"),
    (dict(hidden_layer_map=[[1, 2, 3]]), "hidden_layer_map"),
    (dict(attention_layer_map=[[0, 1]]), "attention_layer_map"),
    (dict(cache_teacher_outputs=True, hidden_weight=1.0), "cache_teacher_outputs"),
    (dict(task_type="regression"), "task_type"),
    (dict(kl_chunk_size=0), "kl_chunk_size"),
])
def test_distill_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        DistillConfig(**kwargs)
    assert e.value.field == field and field in str(e.value)


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_layers=0), "num_layers"),
    (dict(num_layers=2, layers="middle"), "layers"),
    (dict(num_layers=2, layers=[1]), "layers"),
    (dict(num_layers=2, layers=[1, 1]), "layers"),
    (dict(num_layers=2, hidden_size=0), "hidden_size"),
])
def test_student_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError) as e:
        StudentConfig(model="t", **kwargs)
    assert e.value.field == field


def test_unknown_field_is_a_type_error_in_code_and_warning_from_disk():
    with pytest.raises(TypeError):
        DistillConfig(temprature=2)
    with pytest.warns(UserWarning, match="temprature"):
        DistillConfig.from_dict({"kind": "distill", "temprature": 2})


def test_recipe_with_student_and_distill_stages(tmp_path):
    data = {"name": "r", "task": "movie-sentiment", "stages": [
        {"name": "teacher", "kind": "finetune", "model": "builtin:minilm-l6"},
        {"name": "student", "kind": "student", "model": "teacher", "num_layers": 3},
        {"name": "distill", "kind": "distill", "model": "student", "teacher": "teacher", "alpha": 0.7}]}
    recipe = Recipe.from_dict(data, base_dir=tmp_path)
    assert [s.config.kind for s in recipe.stages] == ["finetune", "student", "distill"]
    fps = recipe.stage_fingerprints()
    data["stages"][0]["epochs"] = 1  # editing the teacher invalidates both stages that read it
    fps2 = Recipe.from_dict(data, base_dir=tmp_path).stage_fingerprints()
    assert all(fps[k] != fps2[k] for k in fps)
    del data["stages"][2]["teacher"]
    with pytest.raises(RecipeError, match="teacher"):
        Recipe.from_dict(data, base_dir=tmp_path)
    data["stages"][2]["teacher"] = "later"
    with pytest.raises(RecipeError, match="later"):
        Recipe.from_dict(data, base_dir=tmp_path)


def test_shipped_recipe_has_student_and_distill_after_the_teacher():
    from pathlib import Path

    recipe = Recipe.from_yaml(Path(__file__).parents[2] / "recipes" / "movie-sentiment.yaml")
    kinds = [s.config.kind for s in recipe.stages]
    assert kinds.index("finetune") < kinds.index("student") < kinds.index("distill")


@pytest.mark.multiprocess
def test_config_module_is_light():
    import subprocess
    import sys

    code = ("import sys, hf_optim.distill, hf_optim.distill.config; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
