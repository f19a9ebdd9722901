"""A real run (tiny model: fine-tune-free export + evaluations) ends with report.md; its ONNX artifact gets a card
and is pushed (network replaced) as exactly a folder that ONNX Runtime / Optimum load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hf_optim.compat import has_optimum
from hf_optim.hub import push_artifact

TEXTS = ["a gripping, funny film", "dull and far too long", "fine"]


def test_run_report_card_push_and_reload(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    from hf_optim.export.runtime import OrtClassifier
    from hf_optim.recipe import Recipe
    from hf_optim.runner import run
    from hf_optim.testing import save_tiny_bert

    src = save_tiny_bert(tmp_path / "tiny-bert")
    fast = {"max_samples": 32, "latency_samples": 3, "throughput_samples": 32, "measure_memory": False}
    recipe = Recipe.from_dict({"name": "tiny", "task": "movie-sentiment", "report": {"price_per_hour": 1.0},
                               "stages": [
        {"name": "eval-fp32", "kind": "evaluate", "model": str(src), **fast},
        {"name": "onnx", "kind": "export", "model": str(src), "backend": "torch", "optimization": "O2",
         "quantization": "dynamic", "validation_samples": 32, "max_metric_drop": 1.0},
        {"name": "eval-onnx", "kind": "evaluate", "model": "onnx", **fast},
    ]}, base_dir=tmp_path)
    out = tmp_path / "run"
    result = run(recipe, out, progress=False)
    md = (out / "report.md").read_text()
    assert "![accuracy vs latency](report-accuracy-latency.png)" in md and (out / "report-size.png").is_file()
    rows = result.report["artifacts"]
    assert [r["baseline"] for r in rows] == [True, False]
    onnx_cost = result.report["cost"]["artifacts"][1]
    assert onnx_cost["cost_per_million"] == pytest.approx(1e6 / (rows[1]["throughput_samples_per_s"] * 3600),
                                                          rel=1e-3)
    assert rows[1]["lineage"] == [{"stage": "onnx", "kind": "export", "inputs": {"model": str(src)},
                                   "settings": {"backend": "torch", "optimization": "O2", "quantization": "dynamic",
                                                "validation_samples": 32, "max_metric_drop": 1.0}}]

    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw:
                        uploaded.update(files=[op.path_in_repo for op in operations]) or "ok")
    pushed = push_artifact(out / "onnx", "me/tiny-onnx")
    card = ModelCard.load(out / "onnx" / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == rows[1]["value"]
    hub_copy = tmp_path / "hub-copy"
    hub_copy.mkdir()
    for name in uploaded["files"]:
        shutil.copy(out / "onnx" / name, hub_copy / name)
    assert sorted(p.name for p in hub_copy.iterdir()) == sorted(n for n, _ in pushed.files)
    expected = OrtClassifier.from_dir(out / "onnx").predict_logits(TEXTS)
    assert np.array_equal(OrtClassifier.from_dir(hub_copy).predict_logits(TEXTS), expected)
    if has_optimum():
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer

        model = ORTModelForSequenceClassification.from_pretrained(hub_copy)
        tok = AutoTokenizer.from_pretrained(hub_copy)
        logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
        assert np.abs(logits - expected).max() < 1e-5
    assert json.loads((out / "report.json").read_text())["cost"]["price_per_hour"] == 1.0
