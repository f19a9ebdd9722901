"""ExportConfig / CompileConfig: strict construction, JSON/YAML round trips, recipe integration."""

from __future__ import annotations

import json

import pytest
import yaml

from hf_optim.errors import ConfigError
from hf_optim.export import CompileConfig, ExportConfig
from hf_optim.recipe import Recipe, stage_kinds

CONFIGS = [
    ExportConfig(model="m"),
    ExportConfig(model="m", backend="torch", optimization="O3", quantization="static", per_channel=True,
                 calibration_samples=64, max_metric_drop=0.005, validation_samples=None),
    ExportConfig(model="m", task_type="causal-lm", task="bbc-news", quantization="int4", int4_block_size=64),
    CompileConfig(model="m", method="export"),
    CompileConfig(model="m", method="compile", warmup_batch_sizes=[1, 8], warmup_lengths=[64, 128]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}")
def test_round_trip_json_yaml(config):
    assert type(config).from_dict(json.loads(config.to_json())) == config
    assert type(config).from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    assert config.to_dict()["version"] == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"optimization": "O4"}, "optimization"),
    ({"quantization": "int2"}, "quantization"),
    ({"max_metric_drop": -0.1}, "max_metric_drop"),
    ({"int4_block_size": 24}, "int4_block_size"),
    ({"calibration_samples": 0}, "calibration_samples"),
    ({"quantization": "int8_weight_only", "accuracy_level": 5}, "accuracy_level"),
    ({"quantization": "int4", "int4_method": "awq"}, "int4_method"),
    ({"quantization": "int8_weight_only", "int4_method": "hqq"}, "int4_method"),
    ({"quantization": "int4", "int4_method": "hqq", "accuracy_level": 4}, "accuracy_level"),
    ({"quantization": "dynamic", "accuracy_level": 4}, "accuracy_level"),
    ({"task_type": "causal-lm", "task": "bbc-news", "quantization": "static"}, "quantization"),
])
def test_export_config_rejects(kwargs, field):
    with pytest.raises(ConfigError) as e:
        ExportConfig(model="m", **kwargs)
    assert e.value.field == field


def test_compile_config_rejects():
    with pytest.raises(ConfigError, match="warmup_lengths"):
        CompileConfig(model="m", warmup_lengths=[32], max_length=128)
    with pytest.raises(TypeError):
        CompileConfig(model="m", bogus=1)


def test_recipe_accepts_export_and_compile(tmp_path, bert_dir):
    kinds = stage_kinds()
    assert kinds["export"] is ExportConfig and kinds["compile"] is CompileConfig
    recipe = Recipe.from_dict({"name": "r", "task": "movie-sentiment", "stages": [
        {"name": "onnx", "kind": "export", "model": str(bert_dir), "optimization": "O2", "quantization": "dynamic"},
        {"name": "eval-onnx", "kind": "evaluate", "model": "onnx"},
        {"name": "pt2", "kind": "compile", "model": str(bert_dir), "method": "export"},
    ]}, base_dir=tmp_path)
    again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()), base_dir=tmp_path)
    assert again.fingerprint() == recipe.fingerprint()
