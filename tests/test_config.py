"""OptimConfig: strict in code, lenient on disk, versioned, JSON/YAML round-trip for every config."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal, Optional

import pytest
import yaml

from hf_optim.config import OptimConfig, config_class, config_from_dict
from hf_optim.data.tasks import TaskSpec
from hf_optim.errors import ConfigError
from hf_optim.evaluation.config import EvalConfig
from hf_optim.finetune import FinetuneConfig
from hf_optim.recipe import stage_kinds


@dataclasses.dataclass
class _Demo(OptimConfig):
    kind = "test-demo"
    version = 2
    rate: float = 0.5
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    limit: Optional[int] = None


def _example_configs():
    """One non-default instance of each core config kind (other packages test their own)."""
    return {
        "finetune": FinetuneConfig(model="builtin:minilm-l6", epochs=1.5, learning_rate=3e-5, max_train_samples=64),
        "evaluate": EvalConfig(model="teacher", split="validation", max_samples=10, threads=1),
        "task": TaskSpec(name="mine", dataset="data.csv", text_column="sentence", metric="f1"),
        "test-demo": _Demo(rate=1, names=("x", "y"), limit=4),
    }


@pytest.mark.parametrize("config", list(_example_configs().values()), ids=lambda c: c.kind)
def test_round_trip_json_and_yaml(config):
    as_json = json.loads(json.dumps(config.to_dict()))
    assert config_from_dict(as_json) == config
    as_yaml = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert type(config).from_dict(as_yaml) == config
    assert as_json["kind"] == config.kind and as_json["version"] == type(config).version


def test_types_are_coerced_and_checked():
    c = _Demo(rate=1, steps=4.0, names=["a"])
    assert isinstance(c.rate, float) and c.rate == 1.0
    assert c.steps == 4 and isinstance(c.steps, int)
    assert c.names == ("a",)
    with pytest.raises(ConfigError, match=r"test-demo.steps = 2.5 .*expected int") as e:
        _Demo(steps=2.5)
    assert e.value.field == "steps"
    with pytest.raises(ConfigError, match=r"mode = 'c'.*'a' \| 'b'"):
        _Demo(mode="c")
    with pytest.raises(ConfigError, match="rate"):
        _Demo(rate=True)  # a bool is not a number here
    assert _Demo(rate="1e-4").rate == 1e-4  # YAML 1.1 reads 1e-4 as a string
    # numbers that mean nothing: infinite or NaN floats, whole floats beyond what a float holds exactly
    for bad in (float("inf"), float("-inf"), float("nan"), ".inf", "nan"):
        with pytest.raises(ConfigError, match="expected float"):
            _Demo(rate=bad)
    with pytest.raises(ConfigError, match=r"steps = 1e\+20 .*expected int"):
        _Demo(steps=1e20)
    assert _Demo(steps=float(2 ** 40)).steps == 2 ** 40


def test_unknown_field_in_code_is_type_error():
    with pytest.raises(TypeError):
        _Demo(rtae=1.0)


def test_from_dict_is_lenient_with_warning_and_strict_on_request():
    with pytest.warns(UserWarning, match="ignoring unknown field.*future_knob"):
        c = _Demo.from_dict({"kind": "test-demo", "version": 1, "rate": 0.1, "future_knob": 3})
    assert c.rate == 0.1
    with pytest.raises(ConfigError, match="unknown field.*future_knob.*allowed fields: limit, mode, names, rate, steps"):
        _Demo.from_dict({"rate": 0.1, "future_knob": 3}, strict=True)


def test_newer_version_and_wrong_kind_are_rejected():
    with pytest.raises(ConfigError, match="version 3 is newer"):
        _Demo.from_dict({"kind": "test-demo", "version": 3})
    with pytest.raises(ConfigError, match="cannot read a 'finetune' config as 'test-demo'"):
        _Demo.from_dict({"kind": "finetune"})


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ConfigError, match="unknown kind 'nope'; known kinds: .*evaluate.*finetune"):
        config_class("nope")


def test_missing_required_field_is_named():
    with pytest.raises(ConfigError, match="missing required field.*model"):
        FinetuneConfig.from_dict({"epochs": 1})


def test_validate_names_field_and_fix():
    with pytest.raises(ConfigError, match=r"finetune.learning_rate = 5.0: must be in \(0, 1\)"):
        FinetuneConfig(model="m", learning_rate=5)
    with pytest.raises(ConfigError, match="not a built-in task"):
        FinetuneConfig(model="m", task="imdb")


def test_replace_never_mutates():
    a = FinetuneConfig(model="m")
    b = a.replace(epochs=3)
    assert a.epochs == 2.0 and b.epochs == 3.0


def test_stage_kinds_are_registered():
    kinds = stage_kinds()
    assert {"finetune", "evaluate"} <= set(kinds)
    assert "task" not in kinds  # a TaskSpec is not a stage
