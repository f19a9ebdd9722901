"""What a directory holds, and the predictor protocol (hf_optim.artifacts) over torch, ONNX Runtime and compiled
models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hf_optim.artifacts import (CompiledPredictor, OrtPredictor, TorchPredictor, artifact_format, checkpoint_facts,
                                checkpoint_kind, is_onnx_dir, load_predictor, logits_module, onnx_file)
from hf_optim.errors import ConfigError, DataError
from hf_optim.testing import save_tiny_bert, save_tiny_llama, save_tiny_onnx

TEXTS = ["a great film", "the plot was dull and the acting worse", "fun", "I love this movie so much"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny BERT classifier, its ONNX export (no torch weights), a tiny Llama and a base BERT encoder."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("artifacts")
    bert = save_tiny_bert(root / "bert", seed=4)
    onnx_dir = save_tiny_onnx(bert, root / "bert-onnx")
    model = AutoModelForSequenceClassification.from_pretrained(bert)
    base = root / "base"
    model.bert.save_pretrained(base)
    return {"bert": bert, "onnx": onnx_dir, "llama": save_tiny_llama(root / "llama"), "base": base,
            "empty": (root / "empty").mkdir() or root / "empty"}


def _reference(bert_dir, texts=TEXTS) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()


@pytest.mark.parametrize("name, kind, fmt", [("bert", "sequence-classification", "torch"),
                                             ("llama", "causal-lm", "torch"),
                                             ("onnx", "sequence-classification", "onnx"),
                                             ("base", "base", "torch"),
                                             ("empty", None, None)])
def test_kind_and_format(dirs, name, kind, fmt):
    assert checkpoint_kind(dirs[name]) == kind
    assert artifact_format(dirs[name]) == fmt
    assert is_onnx_dir(dirs[name]) == (name == "onnx")
    facts = checkpoint_facts(dirs[name])
    assert facts["kind"] == kind
    assert facts["num_layers"] == (2 if kind else None)


def test_kind_has_one_home(dirs):
    from hf_optim.data import tasks
    from hf_optim.evaluation.lm import is_causal_lm
    from hf_optim.export.onnx import detect_task_type

    assert tasks.checkpoint_kind is checkpoint_kind and tasks.checkpoint_facts is checkpoint_facts
    assert is_causal_lm(dirs["llama"]) and not is_causal_lm(dirs["bert"])
    assert detect_task_type(dirs["onnx"]) == "sequence-classification"
    assert detect_task_type(dirs["llama"]) == "causal-lm"
    with pytest.raises(DataError, match="BertModel"):
        detect_task_type(dirs["base"])


def test_onnx_file_choice(dirs, tmp_path):
    assert onnx_file(dirs["onnx"]).name == "model.onnx"
    assert artifact_format(dirs["onnx"] / "model.onnx") == "onnx"
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(dirs["onnx"] / "model.onnx", tmp_path / name)
    with pytest.raises(DataError, match="2 ONNX files"):
        onnx_file(tmp_path)
    (tmp_path / "hf_optim_export.json").write_text(json.dumps({"file_name": "b.onnx"}))
    assert onnx_file(tmp_path).name == "b.onnx"


def test_torch_and_onnx_predictors_give_the_model_logits(dirs):
    ref = _reference(dirs["bert"])
    torch_pred = load_predictor(dirs["bert"])
    onnx_pred = load_predictor(dirs["onnx"])
    assert isinstance(torch_pred, TorchPredictor) and isinstance(onnx_pred, OrtPredictor)
    for pred in (torch_pred, onnx_pred):
        got = pred.predict_logits(TEXTS)
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), 2)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        np.testing.assert_allclose(pred(TEXTS), ref, atol=1e-4)
        assert pred.max_positions == 128
    # predict() takes token ids; an ONNX graph gets the token_type_ids it needs as zeros
    enc = torch_pred.encode(TEXTS)
    no_types = {k: v for k, v in enc.items() if k != "token_type_ids"}
    np.testing.assert_allclose(onnx_pred.predict(no_types), ref, atol=1e-4)
    assert torch_pred.num_parameters() > 0 and onnx_pred.num_parameters() > 0


def test_compiled_predictor_pads_to_its_lengths(dirs):
    ref = _reference(dirs["bert"])
    torch_pred = load_predictor(dirs["bert"])
    seen = []
    module = logits_module(torch_pred.model)

    def fn(*args):
        seen.append(args[0].shape[1])
        return module(*args)

    pred = CompiledPredictor(fn, torch_pred.tokenizer, ["input_ids", "attention_mask", "token_type_ids"],
                             lengths=[16, 32], max_length=64)
    np.testing.assert_allclose(pred.predict_logits(TEXTS), ref, atol=1e-4)
    assert seen == [16]
    ids = np.full((1, 20), 5, dtype=np.int64)
    assert pred.predict({"input_ids": ids, "attention_mask": np.ones_like(ids)}).shape == (1, 2)
    assert seen[-1] == 32                                  # the next length it was built for


def test_a_compile_artifact_loads_as_a_compiled_predictor(dirs, tmp_path):
    import warnings

    out = tmp_path / "compiled"
    shutil.copytree(dirs["onnx"], out, ignore=shutil.ignore_patterns("*.onnx"))
    torch_pred = load_predictor(dirs["bert"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(logits_module(torch_pred.model), tuple(torch.ones(2, 32, dtype=torch.long)
                                                                        for _ in names), check_trace=False)
    torch.jit.save(traced, str(out / "model.torchscript.pt"))
    record = {"format": 1, "kind": "compile", "method": "torchscript", "file_name": "model.torchscript.pt",
              "input_names": names, "lengths": [32], "params": 7,
              "config": {"max_length": 32, "warmup_lengths": [32], "warmup_batch_sizes": [1], "mode": "default"}}
    (out / "hf_optim_compile.json").write_text(json.dumps(record))
    assert artifact_format(out) == "compiled" and checkpoint_kind(out) == "sequence-classification"
    pred = load_predictor(out)
    assert isinstance(pred, CompiledPredictor) and pred.num_parameters() == 7
    np.testing.assert_allclose(pred.predict_logits(TEXTS), _reference(dirs["bert"]), atol=1e-4)


def test_load_predictor_refusals(dirs, tmp_path):
    with pytest.raises(DataError, match="LlamaForCausalLM model, not a sequence classifier"):
        load_predictor(dirs["llama"])
    with pytest.raises(DataError, match="not a model directory"):
        load_predictor(dirs["empty"])
    with pytest.raises(DataError, match="does not exist"):
        load_predictor(tmp_path / "missing")
    bare = load_predictor(dirs["onnx"], tokenizer=None)
    with pytest.raises(ConfigError, match="no tokenizer"):
        bare.predict_logits(TEXTS)
    with pytest.raises(ConfigError, match="not an output"):
        load_predictor(dirs["onnx"], output="hidden", tokenizer=None)


def test_old_names_are_the_predictors():
    from hf_optim.evaluation.classifier import TorchClassifier
    from hf_optim.export.compile import CompiledClassifier
    from hf_optim.export.runtime import OrtClassifier

    assert (TorchClassifier, OrtClassifier, CompiledClassifier) == (TorchPredictor, OrtPredictor, CompiledPredictor)
