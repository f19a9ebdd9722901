"""The on-disk format (hf_optim.checkpoint): set_module, HfOptimConfig, rebuilding a skeleton from it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from hf_optim.checkpoint import (MODULE_ATTRS, HfOptimConfig, absent_keys, check_loaded_, quantized_keys,
                                 restore_structure_, set_module)
from hf_optim.testing import tiny_bert, tiny_llama

IDS = torch.tensor([[2, 40, 41, 42, 43, 3], [2, 44, 45, 3, 0, 0]])
MASK = (IDS != 0).long()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def test_set_module_swaps_and_restores():
    model = tiny_bert(seed=1).eval()
    before = _logits(model)
    name = "bert.encoder.layer.0.output.dense"
    old = model.get_submodule(name)
    zero = nn.Linear(old.in_features, old.out_features)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    set_module(model, name, zero)
    assert model.get_submodule(name) is zero
    assert not torch.allclose(_logits(model), before)
    set_module(model, name, old)
    assert model.get_submodule(name) is old
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)


def test_set_module_top_level_and_errors():
    model = tiny_bert()
    head = nn.Linear(32, 2)
    set_module(model, "classifier", head)
    assert model.classifier is head
    with pytest.raises(ValueError, match="dotted name"):
        set_module(model, "", head)
    with pytest.raises(AttributeError):
        set_module(model, "bert.no_such.dense", head)


def test_config_round_trips_through_json():
    cfg = HfOptimConfig(scheme="int8_dynamic", linear_shapes={"a.b": {"in_features": 4, "out_features": 2}},
                        module_attrs={"a": {"num_attention_heads": 2}}, provenance={"stage": "q"})
    again = HfOptimConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    assert again.quant_method == "hf_optim" and again.quantizes_at_load


def test_old_import_paths_are_the_same_objects():
    import hf_optim
    from hf_optim.integrations import transformers as integration

    assert integration.HfOptimConfig is HfOptimConfig is hf_optim.HfOptimConfig
    assert integration.restore_structure_ is restore_structure_
    assert integration.MODULE_ATTRS is MODULE_ATTRS


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_a_pruned_and_quantized_model_is_rebuilt_on_a_fresh_skeleton(make):
    from hf_optim.prune.structure import prune_structured_
    from hf_optim.quantize import QuantizeConfig
    from hf_optim.quantize.apply import quantize_model_

    model = make(seed=2).eval()
    prune_structured_(model, heads={0: [1]}, ffn={1: [0, 5, 9]})
    quantize_model_(model, QuantizeConfig(model="tiny-llama", scheme="int8_weight_only", include=[r"layers?\.0\."]))
    cfg = HfOptimConfig.from_dict(json.loads(json.dumps(model.config.quantization_config.to_dict())))
    assert cfg.modules and cfg.linear_shapes  # (Llama needs no head counts: its attention reads the shapes)

    fresh = make(seed=3).eval()
    restore_structure_(fresh, cfg)
    for name, mod in model.named_modules():
        assert type(fresh.get_submodule(name)) is type(mod), name
    assert absent_keys(quantized_keys(fresh), []) == quantized_keys(fresh)
    missing = fresh.load_state_dict(model.state_dict(), strict=False)
    assert not absent_keys(quantized_keys(fresh), model.state_dict())
    assert not missing.unexpected_keys
    check_loaded_(fresh)
    torch.testing.assert_close(_logits(fresh), _logits(model), rtol=0, atol=0)


def test_module_attrs_allow_list():
    model = tiny_bert()
    attn = "bert.encoder.layer.0.attention.self"
    restore_structure_(model, HfOptimConfig(module_attrs={attn: {"num_attention_heads": 2}}))
    assert model.get_submodule(attn).num_attention_heads == 2
    with pytest.raises(ValueError, match="may set only"):
        restore_structure_(model, HfOptimConfig(module_attrs={attn: {"forward": 1}}))
    with pytest.raises(ValueError, match=r"integer in 1\.\.2"):
        restore_structure_(model, HfOptimConfig(module_attrs={attn: {"num_attention_heads": 9}}))
    with pytest.raises(ValueError, match="does not have"):
        restore_structure_(model, HfOptimConfig(linear_shapes={"bert.nope": {"in_features": 2, "out_features": 2}}))
