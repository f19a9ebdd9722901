"""The `student` and `distill` stages end to end through the runner, on a tiny BERT and a slice of real data."""

import json

import torch

from hf_optim.recipe import Recipe
from hf_optim.runner import run


def test_student_then_distill_stage(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    data = {"name": "tiny-distill", "seed": 0, "task": "movie-sentiment", "stages": [
        {"name": "student", "kind": "student", "model": str(tiny_bert_dir), "num_layers": 1, "layers": "last"},
        {"name": "distill", "kind": "distill", "model": "student", "teacher": str(tiny_bert_dir), "alpha": 0.5,
         "cache_teacher_outputs": True, "epochs": 2, "batch_size": 8, "max_length": 32,
         "max_train_samples": 16, "max_eval_samples": 16}]}
    result = run(Recipe.from_dict(data, base_dir=tmp_path), tmp_path / "out", progress=False)
    stages = {s["name"]: s for s in result.report["stages"]}
    assert stages["student"]["metrics"]["student_params"] < stages["student"]["metrics"]["teacher_params"]
    m = stages["distill"]["metrics"]
    # 2 batches in epoch 1 + 1 validation batch; epoch 2 is served from the cache
    assert m["steps"] == 4 and m["teacher_forward_calls"] == 3
    assert {"final_soft_loss", "final_hard_loss"} <= set(m) and 0 <= m["validation_accuracy"] <= 1
    out = result.stage_dir("distill")
    student = AutoModelForSequenceClassification.from_pretrained(out)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    assert json.loads((out / "hf_optim_stage.json").read_text())["kind"] == "distill"
    # the stage trained the student: it differs from the freshly built one
    fresh = AutoModelForSequenceClassification.from_pretrained(result.stage_dir("student"))
    assert not torch.equal(fresh.classifier.weight, student.classifier.weight)
