"""compile stage: torch.export / TorchScript / torch.compile artifacts, validated, reloadable, evaluable."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hf_optim.export import CompileConfig, compile_model

TEXTS = ["a good and moving film", "bad", "the plot is thin but the actors are great"]


@pytest.mark.parametrize("method, expected_file", [("export", "model.pt2"), ("torchscript", "model.torchscript.pt")])
def test_saved_artifacts_reload_and_match(method, expected_file, bert_dir, tmp_path, clean_cwd):
    from hf_optim.evaluation.classifier import load_classifier

    out = tmp_path / method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rec = compile_model(bert_dir, out, CompileConfig(model=str(bert_dir), method=method, validation_samples=32,
                                                         max_length=64, warmup_lengths=[64]))
    assert (out / expected_file).is_file() and not list(out.glob("*.safetensors"))
    assert json.loads((out / "hf_optim_compile.json").read_text())["method"] == method
    assert rec["validation"]["drop"] == 0.0 and rec["validation"]["max_logit_diff"] < 1e-4
    assert rec["validation"]["latency"]["n"] == 32 and rec["validation"]["latency"]["candidate_p50_ms"] > 0
    assert rec["deprecated"] is (method == "torchscript")
    ref = load_classifier(bert_dir, max_length=64).predict_logits(TEXTS)
    clf = load_classifier(out, max_length=64)  # dispatches on the record
    assert np.abs(clf.predict_logits(TEXTS) - ref).max() < 1e-4
    assert clf.num_parameters() > 0


def test_torch_compile_records_warmup_shapes(bert_dir, tmp_path):
    rec = compile_model(bert_dir, tmp_path / "c", CompileConfig(model=str(bert_dir), method="compile",
                                                                validation_samples=16, max_length=32,
                                                                warmup_batch_sizes=[16], warmup_lengths=[32]))
    assert list(rec["warmup_seconds"]) == ["16x32"] and rec["lengths"] == [32]
    assert rec["validation"]["max_logit_diff"] < 1e-4
    assert (tmp_path / "c" / "model.safetensors").is_file()


@pytest.mark.multiprocess
def test_runner_export_then_evaluate_onnx(bert_dir, tmp_path):
    from hf_optim.recipe import Recipe
    from hf_optim.runner import run

    recipe = Recipe.from_dict({"name": "exp", "task": "movie-sentiment", "stages": [
        {"name": "onnx", "kind": "export", "model": str(bert_dir), "backend": "torch", "optimization": "O2",
         "quantization": "dynamic", "validation_samples": 32},
        {"name": "eval-onnx", "kind": "evaluate", "model": "onnx", "max_samples": 32, "latency_samples": 3,
         "throughput_samples": 8, "measure_memory": True},
    ]}, base_dir=tmp_path)
    result = run(recipe, tmp_path / "run", progress=False)
    stages = {s["name"]: s for s in result.report["stages"]}
    m = stages["onnx"]["metrics"]
    assert m["backend"] == "torch" and "fallback" in m["backend_note"] and m["metric_drop"] <= 0.01
    ev = stages["eval-onnx"]["metrics"]
    assert ev["examples"] == 32 and 0 <= ev["accuracy"] <= 1 and ev["params"] > 0
    assert ev["size"]["weights_mb"] > 0 and "peak_rss_mb" in ev["memory"]
    assert (tmp_path / "run" / "onnx" / "model.onnx").is_file()


def test_runner_stage_over_budget_leaves_no_artifact(bert_dir, tmp_path, monkeypatch):
    from hf_optim.errors import StageError
    from hf_optim.recipe import Recipe
    from hf_optim.runner import run

    def lossy(source_logits, logits, data):
        return {"task": "t", "split": "validation", "examples": 1, "metric": "accuracy", "source": 0.9,
                "candidate": 0.8, "drop": 0.1, "agreement": 0.9, "max_logit_diff": 1.0}

    monkeypatch.setattr("hf_optim.export.validate.compare", lossy)
    recipe = Recipe.from_dict({"name": "exp", "task": "movie-sentiment", "stages": [
        {"name": "pt2", "kind": "compile", "model": str(bert_dir), "method": "export", "validation_samples": 8,
         "max_length": 32, "warmup_lengths": [32]}]}, base_dir=tmp_path)
    with pytest.raises(StageError):
        run(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "pt2").exists() and not list((tmp_path / "run").glob(".tmp-*"))
