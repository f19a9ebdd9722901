"""The task a model directory records: written by training stages, carried over by derived ones, read back."""

from __future__ import annotations

import dataclasses
import json
from typing import Union

import pytest

from hf_optim.recipe import Recipe, StageConfig
from hf_optim.registry import register
from hf_optim.runner import MARKER, run
from hf_optim.task_record import TASK_RECORD, inherit_task, record_task, recorded_task


@dataclasses.dataclass
class TrainConfig(StageConfig):
    """Test stage that 'trains' on ``task``: writes a config.json."""

    kind = "test-train-on-task"
    sets_task = True
    model: str = "none"
    task: Union[str, dict] = "movie-sentiment"


@dataclasses.dataclass
class DeriveConfig(StageConfig):
    """Test stage that derives a model (config.json) from its input, or only measures it (``model_out=False``)."""

    kind = "test-derive"
    model: str = "none"
    task: Union[str, dict] = "movie-sentiment"  # e.g. a calibration task: not the model's task
    model_out: bool = True


@register(TrainConfig)
@register(DeriveConfig)
def _stage(config, ctx):
    if getattr(config, "model_out", True):
        (ctx.output_dir / "config.json").write_text("{}")
    else:
        (ctx.output_dir / "metrics.json").write_text("{}")
    return {}


def test_training_stage_records_task_and_derived_stages_carry_it(tmp_path):
    (tmp_path / "none").mkdir()
    recipe = Recipe.from_dict({"name": "t", "task": "movie-sentiment", "stages": [
        {"name": "train", "kind": "test-train-on-task", "model": "none", "task": "bbc-topic"},
        {"name": "quantized", "kind": "test-derive", "model": "train"},  # its own task: the recipe's default
        {"name": "measure", "kind": "test-derive", "model": "quantized", "model_out": False},
        {"name": "untrained", "kind": "test-derive", "model": "none"},
    ]}, base_dir=tmp_path)
    out = tmp_path / "out"
    run(recipe, out, progress=False)
    assert json.loads((out / "train" / TASK_RECORD).read_text()) == {"format": 1, "task": "bbc-topic"}
    assert recorded_task(out / "quantized") == "bbc-topic"  # the model's task, not the stage's default
    assert not (out / "measure" / TASK_RECORD).exists()  # no model there
    assert recorded_task(out / "untrained") is None  # nothing upstream trained it


def test_record_round_trip_and_inherit(tmp_path):
    task = {"name": "toy", "dataset": str(tmp_path / "d.csv"), "text_column": "sentence"}
    for name in "abc":
        (tmp_path / name).mkdir()
    record_task(tmp_path / "a", task)
    assert recorded_task(tmp_path / "a") == task
    assert inherit_task(tmp_path / "a", tmp_path / "b") == task and recorded_task(tmp_path / "b") == task
    assert inherit_task(tmp_path / "c", tmp_path / "b") is None and recorded_task(tmp_path / "b") == task


def test_invalid_task_is_not_recorded(tmp_path):
    from hf_optim.errors import ConfigError

    with pytest.raises(ConfigError, match="not a built-in task"):
        record_task(tmp_path, "imdb")
    assert not (tmp_path / TASK_RECORD).exists()


def test_older_artifacts_fall_back_to_a_training_stage_marker(tmp_path):
    """Directories written before hf_optim_task.json existed: a finetune marker's config.task counts, a
    quantize marker's (a calibration task) does not."""
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / MARKER).write_text(json.dumps({"kind": "finetune", "config": {"task": "bbc-topic"}}))
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / MARKER).write_text(json.dumps({"kind": "quantize", "config": {"task": "movie-sentiment"}}))
    assert recorded_task(tmp_path / "ft") == "bbc-topic"
    assert recorded_task(tmp_path / "q") is None
