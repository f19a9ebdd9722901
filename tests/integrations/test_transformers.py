"""from_pretrained restores hf_optim checkpoints (quantized and reshaped) bit-identically, or fails loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hf_optim  # noqa: F401 - registers the integration
from hf_optim.integrations.transformers import HfOptimConfig, register
from hf_optim.quantize import QuantizeConfig
from hf_optim.quantize.apply import calibrate, quantize_model_
from hf_optim.quantize.modules import QuantLinear

SCHEMES = ["int8_dynamic", "int8_static", "int8_weight_only", "int4_weight_only", "fp16", "bf16"]
QUERY = "bert.encoder.layer.0.attention.self.query"


def _ids(n=3, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 60, (n, length), generator=g)


def _quantized_bert(base_dir, scheme, ids):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    ranges = calibrate(model, [{"input_ids": ids}]) if scheme == "int8_static" else None
    return quantize_model_(model, QuantizeConfig(model="tiny-bert", scheme=scheme), ranges=ranges)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_save_reload_is_bit_identical(tiny_bert_dir, tmp_path, scheme):
    from transformers import AutoModelForSequenceClassification

    ids = _ids()
    model = _quantized_bert(tiny_bert_dir, scheme, ids)
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "hf_optim" and cfg["scheme"] == scheme
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q").eval()
    with torch.inference_mode():
        after = reloaded(input_ids=ids).logits
    assert torch.equal(before, after)
    assert isinstance(reloaded.config.quantization_config, HfOptimConfig)
    if scheme in ("fp16", "bf16"):
        assert after.dtype == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[scheme])
    else:
        assert type(reloaded.get_submodule(QUERY)).__name__ == type(model.get_submodule(QUERY)).__name__
        assert len(cfg["modules"]) == 13  # 2 layers x 6 Linear + pooler; classifier excluded by default


@pytest.mark.parametrize("scheme", ["int8_dynamic", "int4_weight_only"])
def test_pipeline_and_causal_lm_round_trip(tiny_bert_dir, tiny_llama_dir, tmp_path, scheme):
    from transformers import AutoModelForCausalLM, pipeline

    model = _quantized_bert(tiny_bert_dir, scheme, _ids())
    model.save_pretrained(tmp_path / "bert")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "bert")
    texts = ["a good film", "the worst plot and bad acting"]
    direct = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_bert_dir),
                      top_k=None)(texts)
    loaded = pipeline("text-classification", model=str(tmp_path / "bert"), top_k=None)(texts)
    assert direct == loaded

    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    quantize_model_(lm, QuantizeConfig(model="tiny-llama", scheme=scheme))
    ids = _ids(2, 10)
    with torch.inference_mode():
        before = lm(input_ids=ids).logits
    lm.save_pretrained(tmp_path / "llama")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    with torch.inference_mode():
        assert torch.equal(before, reloaded(input_ids=ids).logits)
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, QuantLinear)
    assert type(reloaded.lm_head) is torch.nn.Linear  # excluded by default


def test_quantize_at_load_matches_in_memory_quantization(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    ids = _ids()
    expected = _quantized_bert(tiny_bert_dir, "int4_weight_only", ids)
    at_load = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, quantization_config=HfOptimConfig(scheme="int4_weight_only")).eval()
    with torch.inference_mode():
        y = at_load(input_ids=ids).logits
        assert torch.equal(y, expected(input_ids=ids).logits)
    assert at_load.config.quantization_config.modules  # the concrete description is filled in for saving
    at_load.save_pretrained(tmp_path / "q")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q").eval()
    with torch.inference_mode():
        assert torch.equal(y, reloaded(input_ids=ids).logits)


def test_static_and_qat_cannot_be_requested_at_load():
    with pytest.raises(ValueError, match="cannot be applied at load time"):
        HfOptimConfig(scheme="int8_static")


def _shrunk_bert(base_dir):
    """Layer 0's FFN cut from 64 to 40 neurons by hand (what structured pruning produces)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    layer = model.bert.encoder.layer[0]
    keep = torch.arange(40)
    inter, out = layer.intermediate.dense, layer.output.dense
    new_inter = torch.nn.Linear(inter.in_features, 40)
    new_out = torch.nn.Linear(40, out.out_features)
    with torch.no_grad():
        new_inter.weight.copy_(inter.weight[keep]); new_inter.bias.copy_(inter.bias[keep])
        new_out.weight.copy_(out.weight[:, keep]); new_out.bias.copy_(out.bias)
    layer.intermediate.dense, layer.output.dense = new_inter, new_out
    model.config.quantization_config = HfOptimConfig(linear_shapes={
        "bert.encoder.layer.0.intermediate.dense": {"in_features": 32, "out_features": 40, "bias": True},
        "bert.encoder.layer.0.output.dense": {"in_features": 40, "out_features": 32, "bias": True}})
    return model


@pytest.mark.parametrize("quantize", [False, True])
def test_reshaped_linears_reload_and_compose_with_quantization(tiny_bert_dir, tmp_path, quantize):
    from transformers import AutoModelForSequenceClassification

    ids = _ids()
    model = _shrunk_bert(tiny_bert_dir)
    if quantize:
        quantize_model_(model, QuantizeConfig(model="tiny-bert", scheme="int8_dynamic"))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.inference_mode():
        assert torch.equal(before, reloaded(input_ids=ids).logits)
    assert reloaded.bert.encoder.layer[0].intermediate.dense.out_features == 40
    # one entry describes both: shapes of float layers, quantized modules carry their own shape
    assert bool(cfg["linear_shapes"]) != quantize
    assert (cfg["modules"] or {}).get("bert.encoder.layer.0.intermediate.dense", {}).get("out_features", 40) == 40


def test_module_attrs_are_restored(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    attn = "bert.encoder.layer.1.attention.self"
    heads = model.bert.encoder.layer[1].attention.self.num_attention_heads
    model.config.quantization_config = HfOptimConfig(module_attrs={attn: {"num_attention_heads": heads - 1}})
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert reloaded.bert.encoder.layer[1].attention.self.num_attention_heads == heads - 1
    # config.json is data: only the head counts pruning records, as integers no larger than the architecture's
    for i, (attrs, pattern) in enumerate([
        ({"forward": 1}, r"sets 'forward'; a checkpoint may set only num_attention_heads"),
        ({"no_such_attr": 1}, r"sets 'no_such_attr'"),
        ({"num_attention_heads": heads + 1}, rf"must be an integer in 1..{heads}"),
        ({"num_attention_heads": "2"}, r"must be an integer"),
        ({"num_key_value_heads": 1}, r"has no integer attribute 'num_key_value_heads'"),
    ]):
        model.config.quantization_config = HfOptimConfig(module_attrs={attn: attrs})
        model.save_pretrained(tmp_path / f"bad{i}")
        with pytest.raises(ValueError, match=pattern):
            AutoModelForSequenceClassification.from_pretrained(tmp_path / f"bad{i}")
    model.config.quantization_config = HfOptimConfig(module_attrs={"bert.encoder.layer.1.attention.output.LayerNorm":
                                                                   {"eps": 100.0}})
    model.save_pretrained(tmp_path / "eps")
    with pytest.raises(ValueError, match="sets 'eps'"):  # once: accuracy 1.0 -> 0.5, silently
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "eps")


def _tamper(src, dst, fn):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    fn(cfg["quantization_config"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_tampered_checkpoints_fail_loudly(tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    q = tmp_path / "q"
    _quantized_bert(tiny_bert_dir, "int8_static", _ids()).save_pretrained(q)
    cases = {
        "unknown scheme": (lambda c: c["modules"][QUERY].update(scheme="int3_magic"), r"unknown scheme 'int3_magic'"),
        "wrong shape": (lambda c: c["modules"][QUERY].update(out_features=16), r"size mismatch|mismatched"),
        "newer format": (lambda c: c.update(format_version=99), r"format_version 99 is newer"),
        "unknown module": (lambda c: c["modules"].update({"bert.nope": c["modules"][QUERY]}), r"does not have"),
        "bad group": (lambda c: c["modules"][QUERY].update(group_size=5), r"does not divide"),
    }
    for i, (name, (fn, pattern)) in enumerate(cases.items()):
        with pytest.raises((ValueError, RuntimeError), match=pattern):
            AutoModelForSequenceClassification.from_pretrained(_tamper(q, tmp_path / f"t{i}", fn))
    for key in ("weight_scale", "input_scale"):
        broken = _tamper(q, tmp_path / f"missing-{key}", lambda c: None)
        sd = load_file(broken / "model.safetensors")
        del sd[f"{QUERY}.{key}"]
        save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=f"{key}.* is missing"):
            AutoModelForSequenceClassification.from_pretrained(broken)
    for i, (value, pattern) in enumerate([(1e30, r"weight_scale holds 1e\+30.*exceed the float16 range"),
                                          (-1.0, r"weight_scale .*invalid")]):
        broken = _tamper(q, tmp_path / f"scale-{i}", lambda c: None)
        sd = load_file(broken / "model.safetensors")
        sd[f"{QUERY}.weight_scale"][0] = value  # one channel's scale: the model once loaded with it silently
        save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=pattern):
            AutoModelForSequenceClassification.from_pretrained(broken)


@pytest.mark.multiprocess
def test_plain_transformers_without_hf_optim_fails_loudly(tiny_bert_dir, tmp_path):
    for scheme in ("int8_dynamic", "int4_weight_only"):
        _quantized_bert(tiny_bert_dir, scheme, _ids()).save_pretrained(tmp_path / scheme)
    code = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForSequenceClassification
        for scheme in ("int8_dynamic", "int4_weight_only"):
            try:
                AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r} + "/" + scheme)
            except Exception as e:
                print(scheme, "FAILED", type(e).__name__)
            else:
                print(scheme, "LOADED")
        assert "hf_optim" not in sys.modules
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["int8_dynamic", "FAILED", "RuntimeError", "int4_weight_only", "FAILED", "RuntimeError"]


@pytest.mark.multiprocess
def test_registration_is_idempotent_and_import_is_light():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    register()
    register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["hf_optim"] is HfOptimConfig
    assert AUTO_QUANTIZER_MAPPING["hf_optim"].__name__ == "HfOptimQuantizer"
    code = ("import sys, hf_optim; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M; assert 'hf_optim' in M; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_config_json_round_trip():
    cfg = HfOptimConfig(scheme="int8_dynamic", modules={QUERY: {"scheme": "int8_dynamic", "in_features": 32,
                                                                "out_features": 32, "bias": True, "group_size": None}},
                        linear_shapes={"a.b": {"in_features": 3, "out_features": 4, "bias": False}},
                        module_attrs={"a": {"num_heads": 2}})
    again = HfOptimConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    assert "HfOptimConfig" in repr(again)
