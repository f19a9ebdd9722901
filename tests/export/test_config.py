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
    ExportConfig(model="m", task_type="causal-lm", task="bbc-news", quantization="int4", group_size=64,
                 symmetric=False, min_weights=1024),
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
    ({"group_size": 24}, "group_size"),
    ({"calibration_samples": 0}, "calibration_samples"),
    ({"quantization": "int8_weight_only", "accuracy_level": 5}, "accuracy_level"),
    ({"quantization": "int4", "method": "awq"}, "method"),
    ({"quantization": "int8_weight_only", "method": "hqq"}, "method"),
    ({"quantization": "int4", "method": "hqq", "accuracy_level": 4}, "accuracy_level"),
    ({"int4_block_size": 24}, "group_size"),                    # the old name still reads, as the new field
    ({"quantization": "dynamic", "accuracy_level": 4}, "accuracy_level"),
    ({"task_type": "causal-lm", "task": "bbc-news", "quantization": "static"}, "quantization"),
])
def test_export_config_rejects(kwargs, field):
    with pytest.raises(ConfigError) as e:
        ExportConfig(model="m", **kwargs)
    assert e.value.field == field


OLD_NAMES = {"int4_block_size": ("group_size", 64), "int4_symmetric": ("symmetric", False),
             "int4_min_size": ("min_weights", 1024), "int4_method": ("method", "hqq")}


@pytest.mark.parametrize("old", list(OLD_NAMES))
def test_old_weight_only_names_still_load_with_a_future_warning(old):
    new, value = OLD_NAMES[old]
    current = ExportConfig(model="m", quantization="int4", **{new: value})
    with pytest.warns(FutureWarning, match=f"export.{old} is renamed {new}"):
        assert ExportConfig(model="m", quantization="int4", **{old: value}) == current           # keyword
    for text in (json.dumps({"model": "m", "quantization": "int4", old: value}),              # JSON, YAML
                 yaml.safe_dump({"model": "m", "quantization": "int4", old: value})):
        with pytest.warns(FutureWarning, match=f"renamed {new}"):
            assert ExportConfig.from_dict(yaml.safe_load(text), strict=True) == current
    with pytest.raises(ConfigError, match=f"set only {new}"):
        ExportConfig.from_dict({"model": "m", old: value, new: value})
    assert new in current.to_dict() and old not in current.to_dict()


def test_a_stage_written_with_either_spelling_has_the_same_fingerprint():
    def stage(**fields):
        return Recipe.from_dict({"name": "r", "stages": [
            {"name": "x", "kind": "export", "model": "builtin:smollm2-135m", "task": "bbc-news",
             "quantization": "int4", **fields}]}).stage_fingerprints()["x"]

    old = {"int4_block_size": 128, "int4_symmetric": False, "int4_min_size": 1024, "int4_method": "rtn"}
    with pytest.warns(FutureWarning):
        assert stage(**old) == stage(**{OLD_NAMES[k][0]: v for k, v in old.items()})
    cfg = ExportConfig(model="m", quantization="int4", group_size=128, symmetric=False)
    assert {"int4_block_size", "int4_symmetric"} <= set(cfg.fingerprint_dict())        # the names first recorded
    assert not {"group_size", "symmetric"} & set(cfg.fingerprint_dict())


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
