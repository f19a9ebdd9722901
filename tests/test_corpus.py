"""The ``corpus`` field: a causal LM's text, separate from ``task``; recipes that named it as ``task`` keep working
and keep their stage fingerprints."""

from __future__ import annotations

import json

import pytest
import yaml

from hf_optim.errors import ConfigError, RecipeError
from hf_optim.evaluation.config import EvalConfig
from hf_optim.export.config import ExportConfig
from hf_optim.quantize.config import QuantizeConfig
from hf_optim.recipe import Recipe

LM = "builtin:smollm2-135m"
STAGES = [{"name": "e", "kind": "evaluate", "model": LM},
          {"name": "q", "kind": "quantize", "model": LM, "scheme": "int4_weight_only", "method": "gptq"},
          {"name": "x", "kind": "export", "model": LM, "task_type": "causal-lm", "quantization": "int4"}]


def _recipe(top: dict, stage_fields: dict | None = None) -> Recipe:
    return Recipe.from_dict({"name": "lm", **top, "stages": [{**s, **(stage_fields or {})} for s in STAGES]})


def test_corpus_and_the_old_task_spelling_give_the_same_fingerprints():
    old = _recipe({"task": "bbc-news"}).stage_fingerprints()
    assert _recipe({"corpus": "bbc-news"}).stage_fingerprints() == old
    assert _recipe({}, {"corpus": "bbc-news"}).stage_fingerprints() == old
    assert _recipe({}, {"task": "bbc-news"}).stage_fingerprints() == old


def test_the_top_level_corpus_is_each_stages_default_and_the_text_they_read():
    recipe = _recipe({"corpus": "bbc-news"})
    for stage in recipe.stages:
        assert stage.config.corpus == "bbc-news" and stage.config.task == "movie-sentiment"
    assert recipe.stages[0].config.text_corpus == "bbc-news"
    assert recipe.stages[1].config.text_corpus == "bbc-news"


@pytest.mark.parametrize("cls", [EvalConfig, QuantizeConfig, ExportConfig])
def test_a_task_naming_a_corpus_is_read_as_the_corpus(cls):
    assert cls(model="m", task="bbc-news").task == "bbc-news"  # accepted as it was
    from hf_optim.data.tasks import named_corpus

    assert named_corpus(cls(model="m", task="bbc-news")) == named_corpus(cls(model="m", corpus="bbc-news")) == "bbc-news"
    assert named_corpus(cls(model="m")) is None


@pytest.mark.parametrize("cls", [EvalConfig, QuantizeConfig, ExportConfig])
def test_corpus_round_trips_and_is_checked(cls):
    cfg = cls(model="m", corpus="bbc-news")
    assert cls.from_dict(json.loads(cfg.to_json()), strict=True) == cfg
    assert cls.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), strict=True) == cfg
    with pytest.raises(ConfigError) as e:
        cls(model="m", corpus="wiki")
    assert e.value.field == "corpus"


def test_a_recipe_corpus_does_not_turn_a_classifier_stage_into_a_language_model_one():
    # the top-level corpus reaches a classifier's evaluate stage too; its task decides what it measures
    Recipe.from_dict({"name": "mixed", "corpus": "bbc-news", "stages": [
        {"name": "t", "kind": "finetune", "model": "builtin:minilm-l6", "task": "movie-sentiment"},
        {"name": "e", "kind": "evaluate", "model": "t"},
        {"name": "lm", "kind": "evaluate", "model": LM}]})
    with pytest.raises(RecipeError, match="is a causal LM.*corpus: bbc-news"):
        Recipe.from_dict({"name": "r", "stages": [{"name": "lm", "kind": "evaluate", "model": LM}]})
