"""Zero-padded plain export of models pruned to different sizes per layer: a checkpoint plain ``from_pretrained``
loads (without hf_optim) with the logits of hf_optim's pruned model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hf_optim.errors import ConfigError
from hf_optim.export import ExportConfig
from hf_optim.export.padding import _padded, pad_layers_
from hf_optim.export.weights import grid_of, load_model
from hf_optim.prune.structure import prune_structured_
from hf_optim.quantize import QuantizeConfig, quantize_model_
from hf_optim.quantize.modules import Int4WeightOnlyLinear, Int8WeightOnlyLinear, WeightOnlyLinear
from hf_optim.testing import tiny_llama

from ..report.test_card_runtimes import run_card_snippet

# layer 0 keeps every head and 44 FFN neurons, layer 1 half its heads (one key/value group) and all 64 neurons
_LLAMA = {"heads": {1: [0]}, "ffn": {0: list(range(20))}}
_BERT = {"heads": {0: [0]}, "ffn": {1: list(range(10))}}


def _pruned_dir(model, tokenizer_dir, path, prune):
    from transformers import AutoTokenizer

    prune_structured_(model, **prune)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.multiprocess
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_padded_export_loads_without_hf_optim_with_the_pruned_logits(arch, tiny_llama_dir, tiny_bert_dir, tmp_path,
                                                                     capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hf_optim.cli import main

    if arch == "llama":
        src = _pruned_dir(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tiny_llama_dir, tmp_path / "p", _LLAMA)
        sizes = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
    else:
        src = _pruned_dir(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), tiny_bert_dir,
                          tmp_path / "p", _BERT)
        sizes = {"num_attention_heads": 4, "intermediate_size": 64}
    pruned = load_model(src)  # hf_optim's pruned model: each layer rebuilt with its own shapes
    out = tmp_path / "pub" / "padded"
    assert main(["export", str(src), "-o", str(out), "--format", "compressed-tensors", "--pad-uneven", "-q"]) == 0
    assert "zero-padded" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and {k: config[k] for k in sizes} == sizes
    record = json.loads((out / "hf_optim_export.json").read_text())
    padding = record["report"]["padding"]
    assert record["config"]["pad_uneven"] is True and padding["padding_parameters"] > 0
    assert padding["share"] == pytest.approx(padding["padding_parameters"] / padding["parameters"], abs=1e-6)
    assert (out / "model.safetensors").stat().st_size > (src / "model.safetensors").stat().st_size
    card = (out / "README.md").read_text()
    assert "Zero-padded" in card and f"({padding['share']:.1%}) are padding" in card
    assert "as large as the widest layer" in card and "for the speed of the pruning use hf-optim or ONNX" in card
    assert "Structurally pruned to different sizes per layer (layer 0:" in card
    ids = torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run_card_snippet(card, out.parent, ids, tmp_path), _logits(pruned, ids),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme,kw", [("int8_weight_only", {}),
                                       ("int4_weight_only", {"group_size": 16, "symmetric": False})])
def test_weight_only_grids_are_padded_exactly(scheme, kw, monkeypatch):
    monkeypatch.setenv("HF_OPTIM_INT4_KERNEL", "0")  # the dequantized weights in fp32 on both sides
    model = tiny_llama()
    prune_structured_(model, heads={1: [0]}, ffn={0: list(range(32))})
    quantize_model_(model, QuantizeConfig(model="tiny-llama", scheme=scheme, **kw))
    ids = torch.randint(0, model.config.vocab_size - 3, (2, 10), generator=torch.Generator().manual_seed(2))
    ref = _logits(model, ids)
    padding = pad_layers_(model)
    assert padding.padded_to == {"heads": 4, "kv_heads": 2, "ffn": 64} and padding.max_abs_error == 0
    # layer 0's FFN gains 32 neurons (3 x 32 x 32 weights), layer 1 a key/value group of head size 8 with its 2
    # query heads (q and o: 16 x 32 each, k and v: 8 x 32 each)
    assert padding.padding_parameters == 3 * 32 * 32 + (16 + 8 + 8 + 16) * 32
    for module in model.modules():
        if isinstance(module, WeightOnlyLinear):
            grid = grid_of(module)
            assert torch.isfinite(grid.scale).all() and (grid.scale > 0).all()
            assert grid.zero_point is None or torch.isfinite(grid.zero_point).all()
    assert model.model.layers[1].self_attn.k_proj.out_features == 16
    torch.testing.assert_close(_logits(model, ids), ref, atol=1e-5, rtol=0)


@pytest.mark.multiprocess
def test_a_padded_int8_checkpoint_loads_in_plain_transformers(tmp_path, monkeypatch):
    pytest.importorskip("compressed_tensors")
    monkeypatch.setenv("HF_OPTIM_INT4_KERNEL", "0")  # the reference: the dequantized weights in fp32, as the reader
    from hf_optim.export import save_compressed_tensors

    from .test_compressed_tensors import _isolated_logits

    model = tiny_llama()
    prune_structured_(model, **_LLAMA)
    quantize_model_(model, QuantizeConfig(model="tiny-llama", scheme="int8_weight_only"))
    report = save_compressed_tensors(model, tmp_path / "ct", pad_uneven=True)
    assert report.padding["padded_to"] == {"heads": 4, "kv_heads": 2, "ffn": 64} and report.max_abs_error == 0
    assert model.model.layers[0].mlp.gate_proj.out_features == 44  # the model passed in is not padded
    ids = torch.randint(0, model.config.vocab_size - 3, (2, 10), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_isolated_logits(tmp_path / "ct", ids, tmp_path), _logits(model, ids),
                               atol=1e-5, rtol=0)


def test_a_group_that_padding_fills_keeps_its_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 8, bias=True)
    sym = Int4WeightOnlyLinear.from_linear(linear, group_size=16, partial_groups=True)
    padded, error = _padded(sym, 12, 40)
    weight = padded.dequantized_weight()
    assert error == 0 and weight.shape == (12, 40) and torch.equal(weight[:8, :24], sym.dequantized_weight())
    assert not weight[8:].any() and not weight[:, 24:].any() and not padded.bias[8:].any()
    asym = Int8WeightOnlyLinear.from_linear(linear, group_size=16, symmetric=False,
                                             partial_groups=True)  # fractional zero points
    padded, error = _padded(asym, 8, 40)
    gap = padded.dequantized_weight()[:, 24:32].abs().max()
    assert 0 < error == pytest.approx(float(gap))  # the padded columns of the shared group hold its rounded zero


@pytest.mark.parametrize("fmt", ["onnx", "genai"])
def test_the_option_is_refused_where_it_does_not_apply(fmt):
    with pytest.raises(ConfigError, match="pad_uneven.*applies to format: compressed-tensors or gguf"):
        ExportConfig(model="m", format=fmt, pad_uneven=True)


def test_layouts_other_than_llama_and_bert_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_optim.export.padding import plain_model

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    with pytest.raises(ConfigError, match="Llama- and BERT-family"):
        plain_model(model, pad=True)


def test_a_padded_gguf_file_gives_the_pruned_logits(tmp_path):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from hf_optim.export import save_gguf

    model = tiny_llama()
    prune_structured_(model, **_LLAMA)
    report = save_gguf(copy.deepcopy(model), tmp_path / "m.gguf", qtype="f32", pad_uneven=True)
    assert report.padding and "zero-padded" in report.notes[0]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size - 3, (2, 10), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=0)
