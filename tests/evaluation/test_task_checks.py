"""A model is scored only on the task it answers: label sets must match, and causal LMs get text corpora.

Each case used to report a number with exit 0 (a 5-label model scored 0.0 on the 2-label task) or failed only
after the expensive stages had run.
"""

from __future__ import annotations

import pytest

from hf_optim.errors import DataError, RecipeError
from hf_optim.evaluation.config import EvalConfig
from hf_optim.evaluation.stage import evaluate_model
from hf_optim.export.stage import export_model
from hf_optim.recipe import Recipe
from hf_optim.testing import save_tiny_bert

_FAST = dict(latency_samples=0, throughput_samples=0, measure_memory=False, max_samples=20)


def test_a_five_label_model_on_the_two_label_task_fails_naming_both_label_sets(tmp_path):
    five = save_tiny_bert(tmp_path / "five", num_labels=5)
    with pytest.raises(DataError, match=r"predicts 5 classes but task 'movie-sentiment' has 2.*"
                                        r"\{0: 'negative', 1: 'positive'\}"):
        evaluate_model(five, EvalConfig(model=str(five), task="movie-sentiment", **_FAST), progress=False)
    with pytest.raises(DataError, match="predicts 5 classes but task 'movie-sentiment' has 2"):
        export_model(five, tmp_path / "out", task="movie-sentiment", backend="torch", validation_samples=20)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names, message", [
    (["positive", "negative"], "the same names in another order"),
    (["bad", "good"], "other label names"),
])
def test_renamed_or_reordered_labels_fail(tmp_path, names, message):
    model = save_tiny_bert(tmp_path / "m", id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    with pytest.raises(DataError, match=message + r".*'negative'"):
        evaluate_model(model, EvalConfig(model=str(model), task="movie-sentiment", **_FAST), progress=False)


def test_matching_and_unnamed_labels_are_scored_with_class_counts(tmp_path):
    named = save_tiny_bert(tmp_path / "named", id2label={0: "Negative", 1: "Positive"},
                           label2id={"Negative": 0, "Positive": 1})
    for model in (named, save_tiny_bert(tmp_path / "plain")):  # LABEL_0 / LABEL_1: no names to compare
        out = evaluate_model(model, EvalConfig(model=str(model), task="movie-sentiment", **_FAST), progress=False)
        counts = out["class_counts"]  # the test split is 48 % positive: 9.6 of 20 rows, within one row
        assert out["examples"] == 20 and set(counts) == {"negative", "positive"} and sum(counts.values()) == 20
        assert 9 <= counts["positive"] <= 10


def test_a_causal_lm_on_a_classification_task_fails_at_run_time_with_what_to_set(tiny_llama_dir):
    with pytest.raises(DataError, match="is a causal LM and 'movie-sentiment' a classification task.*task: bbc-news"):
        evaluate_model(tiny_llama_dir, EvalConfig(model=str(tiny_llama_dir), task="movie-sentiment", **_FAST))


def _recipe(*stages, task="movie-sentiment"):
    return {"name": "r", "task": task, "stages": list(stages)}


def test_recipe_validation_refuses_task_kinds_the_model_cannot_answer_before_anything_runs(tmp_path):
    # the builtin causal LM under the recipe's default classification task
    with pytest.raises(RecipeError, match=r"stage 'eval' \(evaluate\): model 'builtin:smollm2-135m' is a causal LM, "
                                          r"but task 'movie-sentiment' is a classification task.*task: bbc-news"):
        Recipe.from_dict(_recipe({"name": "eval", "kind": "evaluate", "model": "builtin:smollm2-135m"}))
    # ... also through a stage that keeps the model kind (quantize), and for export
    with pytest.raises(RecipeError, match=r"stage 'ex' \(export\): model 'q' is a causal LM"):
        Recipe.from_dict(_recipe({"name": "q", "kind": "quantize", "model": "builtin:smollm2-135m", "task": "bbc-news"},
                                 {"name": "ex", "kind": "export", "model": "q"}))
    # the reverse: a fine-tuned classifier measured on a text corpus
    with pytest.raises(RecipeError, match="'t' is a sequence classifier, but 'bbc-news' is a text corpus"):
        Recipe.from_dict(_recipe({"name": "t", "kind": "finetune", "model": "builtin:minilm-l6", "task": "movie-sentiment"},
                                 {"name": "e", "kind": "evaluate", "model": "t"}, task="bbc-news"))
    # a base encoder has no head to score; a model directory is read from its config.json
    with pytest.raises(RecipeError, match="base model without a task head.*fine-tune it first"):
        Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": "builtin:minilm-l6"}))
    five = save_tiny_bert(tmp_path / "clf")
    with pytest.raises(RecipeError, match="sequence classifier, but 'bbc-news'"):
        Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": str(five)}, task="bbc-news"))
    # what is right passes
    Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": "builtin:smollm2-135m"}, task="bbc-news"))
    Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": str(five)}))


def test_the_data_order_is_in_the_fingerprint_of_stages_that_read_a_task(monkeypatch):
    import hf_optim.recipe as recipe_mod

    data = _recipe({"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"},
                   {"name": "s", "kind": "student", "model": "t", "num_layers": 2})
    before = Recipe.from_dict(data).stage_fingerprints()
    monkeypatch.setattr(recipe_mod, "DATA_ORDER", 1)
    after = Recipe.from_dict(data).stage_fingerprints()
    assert before["t"] != after["t"]  # reads the task: the order it reads rows in is part of what it did
    assert Recipe.from_dict(data).stage_fingerprints() == after


def test_nan_logits_are_an_error_not_a_score(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = save_tiny_bert(tmp_path / "nan")
    weights = load_file(model / "model.safetensors")
    weights["classifier.bias"] = torch.full_like(weights["classifier.bias"], float("nan"))
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match="NaN or infinite logits for 20 of 20 examples"):
        evaluate_model(model, EvalConfig(model=str(model), task="movie-sentiment", **_FAST), progress=False)
    with pytest.raises(DataError, match="NaN or infinite logits"):
        export_model(model, tmp_path / "out", task="movie-sentiment", backend="torch", validation_samples=20)


def test_user_datasets_that_cannot_train_a_classifier_are_refused(tmp_path):
    from hf_optim.data import load_task

    one = tmp_path / "one.csv"  # one class: transformers would build a regression head scoring 1.0
    one.write_text("text,label\n" + "".join(f"row {i},1\n" for i in range(40)))
    with pytest.raises(DataError, match="holds one class"):
        load_task({"name": "mine", "dataset": str(one)})
    folder = tmp_path / "splits"  # a class that only the test split has
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(40)))
    (folder / "test.csv").write_text("text,label\nx,0\ny,1\nz,2\n")
    with pytest.raises(DataError, match=r"label\(s\) \[2\] never occur in the train split"):
        load_task({"name": "mine", "dataset": str(folder)})


def test_recipe_validation_follows_layers_and_positions_through_the_stages(tmp_path):
    with pytest.raises(RecipeError, match=r"stage 's' \(student\): model 't' has 6 layers; a student has at most"):
        Recipe.from_dict(_recipe({"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"},
                                 {"name": "s", "kind": "student", "model": "t", "num_layers": 8}))
    with pytest.raises(RecipeError, match=r"stage 'e' \(evaluate\): model 's' reads at most 512 positions; "
                                          r"max_length = 1024"):
        Recipe.from_dict(_recipe({"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"},
                                 {"name": "s", "kind": "student", "model": "t", "num_layers": 3},
                                 {"name": "e", "kind": "evaluate", "model": "s", "max_length": 1024}))
    small = save_tiny_bert(tmp_path / "small")  # a directory: read from its config.json
    with pytest.raises(RecipeError, match="reads at most 128 positions"):
        Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": str(small), "max_length": 256}))
    Recipe.from_dict(_recipe({"name": "e", "kind": "evaluate", "model": str(small), "max_length": 128}))
