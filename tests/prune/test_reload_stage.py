"""Structurally pruned models: physical == masked, reload through plain from_pretrained / pipeline, the stage."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

import hf_optim  # noqa: F401  (registers quant_method "hf_optim" with transformers)
from hf_optim.prune import PruneConfig
from hf_optim.prune.callback import Pruner
from hf_optim.prune.structure import find_unit_groups, prune_structured_, pruned_units, structure_summary
from hf_optim.recipe import Recipe
from hf_optim.runner import run
from hf_optim.testing import save_tiny_bert, tiny_bert, tiny_bert_tokenizer, tiny_llama


def _mask_then_remove(model, **kwargs):
    pruner = Pruner(model, PruneConfig(schedule="oneshot", **kwargs))
    pruner.update(1.0)
    return pruned_units(model)


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_physical_pruning_equals_masking(make):
    model = make(seed=3)
    ids = torch.randint(5, 60, (2, 13))
    pruned = _mask_then_remove(model, heads=0.5, ffn=0.5, ranking="global")
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    prune_structured_(model, **pruned)
    with torch.no_grad():
        physical = model(input_ids=ids).logits
    torch.testing.assert_close(physical, masked, rtol=0, atol=1e-6)
    summary = structure_summary(model)
    assert sum(summary["ffn"]) == 64  # half of 2 x 64 neurons, spread over the layers by the global ranking
    assert summary["params"] < sum(p.numel() for p in make(seed=3).parameters())


def test_bert_reload_is_identical_and_runs_in_a_pipeline(tmp_path):
    model = tiny_bert(seed=2)
    prune_structured_(model, heads={0: [0, 3], 1: [2]}, ffn={0: list(range(0, 64, 2)), 1: [5, 6]})
    model.save_pretrained(tmp_path)
    tok = tiny_bert_tokenizer(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "hf_optim"
    assert cfg["linear_shapes"]["bert.encoder.layer.0.intermediate.dense"]["out_features"] == 32
    assert cfg["module_attrs"]["bert.encoder.layer.0.attention.self"] == {"num_attention_heads": 2,
                                                                         "all_head_size": 16}
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    enc = tok(["the movie was good", "a dull and awful film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc).logits)
    assert reloaded.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert reloaded.bert.encoder.layer[1].output.dense.weight.shape == (32, 62)
    clf = pipeline("text-classification", model=str(tmp_path))
    out = clf(["the movie was good", "a dull and awful film"])
    with torch.no_grad():
        expected = model(**enc).logits.argmax(-1).tolist()
    assert [model.config.label2id[o["label"]] for o in out] == expected
    # a pruned model is still trainable (it is not a quantized inference artifact)
    assert reloaded.is_quantized and reloaded.hf_quantizer.is_trainable


def test_llama_pruned_reloads_and_generates_the_same_tokens(tmp_path):
    model = tiny_llama(seed=4)
    prune_structured_(model, heads={1: [0]}, ffn={0: list(range(40))})
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    a = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    b = reloaded.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    assert reloaded.model.layers[1].self_attn.q_proj.weight.shape == (16, 32)  # one KV group of 2 heads left
    assert [g.n_units for g in find_unit_groups(reloaded) if g.kind == "ffn"] == [24, 64]


@pytest.mark.multiprocess
def test_loading_without_hf_optim_fails_loudly(tmp_path):
    model = tiny_bert(seed=2)
    prune_structured_(model, heads={0: [1]}, ffn={1: [0, 1, 2]})
    model.save_pretrained(tmp_path)
    code = ("import sys\nfrom transformers import AutoModelForSequenceClassification as A\n"
            f"A.from_pretrained({str(tmp_path)!r})\nprint('LOADED')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "LOADED" not in proc.stdout
    assert "hf_optim" in proc.stderr  # transformers names the unknown quant_method
    assert "mismatch" in proc.stderr.lower()


def test_prune_stage_end_to_end(tmp_path):
    teacher = save_tiny_bert(tmp_path / "teacher", seed=5)
    data = {"name": "tiny-prune", "seed": 0, "task": "movie-sentiment", "stages": [
        {"name": "prune", "kind": "prune", "model": str(teacher), "teacher": str(teacher), "heads": 0.5,
         "ffn": 0.5, "importance": "taylor", "start_step": 1, "end_step": 3, "frequency": 1, "epochs": 2,
         "batch_size": 8, "max_length": 32, "max_train_samples": 16, "max_eval_samples": 16},
        {"name": "sparse", "kind": "prune", "model": str(teacher), "granularity": "nm", "epochs": 1,
         "batch_size": 8, "max_length": 32, "max_train_samples": 8, "max_eval_samples": 8}]}
    result = run(Recipe.from_dict(data, base_dir=tmp_path), tmp_path / "out", progress=False)
    m = {s["name"]: s["metrics"] for s in result.report["stages"]}
    p = m["prune"]
    assert p["heads_per_layer"] == [2, 2] and p["ffn_per_layer"] == [32, 32]
    assert p["params_after"] < p["params_before"] and p["heads_pruned"] == 0.5
    assert p["finalize_max_logit_diff"] < 1e-5 and p["reload_max_logit_diff"] <= 1e-4
    assert p["validation_accuracy"] == p["validation_accuracy_masked"]
    loaded = AutoModelForSequenceClassification.from_pretrained(result.stage_dir("prune"))
    assert loaded.bert.encoder.layer[0].intermediate.dense.out_features == 32
    s = m["sparse"]
    assert s["sparsity"] == pytest.approx(0.5) and "saves no time" in s["note"]
    assert s["params_after"] == s["params_before"]
