"""The real packaged models and data, on small slices (tens of seconds on 2 cores)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_optim.data import builtin_model, load_text
from hf_optim.recipe import Recipe
from hf_optim.runner import run

pytestmark = pytest.mark.integration


def test_minilm_finetune_and_evaluate_slice(tmp_path):
    recipe = Recipe.from_dict({
        "name": "slice", "task": "movie-sentiment", "seed": 42,
        "stages": [
            {"name": "teacher", "kind": "finetune", "model": "builtin:minilm-l6", "epochs": 1,
             "learning_rate": 1e-4, "max_train_samples": 640, "max_eval_samples": 200, "batch_size": 32,
             "max_length": 64},
            {"name": "eval", "kind": "evaluate", "model": "teacher", "max_samples": 300, "latency_samples": 10,
             "throughput_samples": 32, "max_length": 64},
        ]})
    result = run(recipe, tmp_path / "run", progress=False)
    ft, ev = (s["metrics"] for s in result.report["stages"])
    assert ft["steps"] == 20
    # 20 steps on real sentences already beat the majority class (~50 %) clearly
    assert ev["accuracy"] > 0.65, ev
    assert ev["params"] == pytest.approx(22.7e6, rel=0.01)
    assert 80 < ev["size"]["weights_mb"] < 95  # float32 MiniLM-L6 with a 2-way head
    assert ev["latency_ms"]["p50"] > 0 and ev["throughput"]["samples_per_s"] > 0
    assert ev["memory"]["model_peak_mb"] > 50  # the weights alone are ~87 MB


def test_smollm2_builtin_loads_and_models_bbc_text():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = builtin_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = load_text("bbc-news")["test"]["text"][0]
    ids = tok(text, return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.exp(loss) < 60, math.exp(loss)  # FIELD-NOTES: ~25 on BBC text; a broken conversion gives >1000
    out = model.generate(ids[:, :32], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 36)
