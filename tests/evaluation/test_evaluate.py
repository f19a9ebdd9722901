"""evaluate_model on a tiny classifier: metric equals a direct computation; speed/size fields are sane."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_optim.errors import DataError
from hf_optim.evaluation.bench import dir_size_mb, latency_ms, throughput
from hf_optim.evaluation.classifier import load_classifier
from hf_optim.evaluation.config import EvalConfig
from hf_optim.evaluation.stage import evaluate_model


@pytest.fixture
def toy_task(tmp_path):
    rows = ["text,label"] + [f"the film was {'good' if i % 2 else 'bad'} {i},{i % 2}" for i in range(120)]
    (tmp_path / "toy.csv").write_text("\n".join(rows) + "\n")
    return {"name": "toy", "dataset": str(tmp_path / "toy.csv"), "test_size": 20}


def test_evaluate_model_metric_matches_direct_predictions(tiny_bert_dir, toy_task):
    cfg = EvalConfig(model=str(tiny_bert_dir), task=toy_task, latency_samples=8, throughput_samples=20,
                     throughput_batch_size=16, batch_size=7, measure_memory=False)
    out = evaluate_model(tiny_bert_dir, cfg, progress=False)
    from hf_optim.data import load_task

    test = load_task(toy_task)["test"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with torch.no_grad():  # one example at a time: no padding involved at all
        preds = [model(**tok(t, return_tensors="pt")).logits.argmax(-1).item() for t in test["text"]]
    expected = float(np.mean(np.asarray(preds) == np.asarray(test["label"])))
    assert out["examples"] == 20 and out["metric"] == "accuracy"
    assert out["accuracy"] == pytest.approx(expected)
    assert out["params"] == sum(p.numel() for p in model.parameters())
    lat = out["latency_ms"]
    assert lat["n"] == 8 and 0 < lat["p50"] <= lat["p95"]
    assert out["throughput"]["batch_size"] == 16 and out["throughput"]["samples_per_s"] > 0
    weights = (tiny_bert_dir / "model.safetensors").stat().st_size / 2**20
    assert out["size"]["weights_mb"] == pytest.approx(weights, abs=1e-3)
    assert out["size"]["total_mb"] > out["size"]["weights_mb"]


@pytest.mark.multiprocess
def test_peak_memory_probe_runs_in_a_fresh_process(tiny_bert_dir):
    from hf_optim.evaluation.bench import peak_memory_mb

    ballast = b"\1" * (1200 * 2**20)  # a large parent must not inflate the child's numbers
    mem = peak_memory_mb(tiny_bert_dir, ["a good film"] * 4, batch_size=4)
    assert "error" not in mem, mem
    assert 0 < mem["model_peak_mb"] < mem["peak_rss_mb"] < 1000 < len(ballast) / 2**20
    assert mem["model_peak_mb"] < 200  # a 30k-parameter model: only allocator noise, no library imports


def test_probes_never_import_from_the_working_directory(tiny_bert_dir, tmp_path, monkeypatch):
    from hf_optim.evaluation.bench import peak_memory_mb

    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "imported"
    # a json.py where the user happens to run hf-optim: the probe must not run it
    (planted / "json.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n")
    monkeypatch.chdir(planted)
    mem = peak_memory_mb(tiny_bert_dir, ["a film"], 1)
    assert "error" not in mem, mem
    assert not marker.exists()


def test_bench_helpers_count_calls():
    calls = []

    def predict(batch):
        calls.append(len(batch))

    lat = latency_ms(predict, ["x"] * 10, warmup=2)
    assert lat["n"] == 10 and calls == [1] * 12
    calls.clear()
    tp = throughput(predict, ["x"] * 70, batch_size=32, repeats=2)
    assert calls == [32] + [32, 32, 6] * 2 and tp["n"] == 70


def test_dir_size(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2**20)
    (tmp_path / "config.json").write_bytes(b"\0" * 2**19)
    assert dir_size_mb(tmp_path) == {"weights_mb": 1.0, "total_mb": 1.5}


def test_load_classifier_errors(tmp_path, tiny_llama_dir):
    with pytest.raises(DataError, match="not a model directory"):
        load_classifier(tmp_path)
    with pytest.raises(DataError, match="LlamaForCausalLM model, not a sequence classifier"):
        load_classifier(tiny_llama_dir)
