"""compressed-tensors export, read back by compressed-tensors itself and by plain ``from_pretrained`` in a fresh
interpreter that cannot import hf_optim."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from hf_optim.export import save_compressed_tensors
from hf_optim.export.compressed_tensors import pack_to_int32
from hf_optim.export.weights import grid_of
from hf_optim.quantize import QuantizeConfig, quantize_model_
from hf_optim.testing import tiny_llama
from ..isolated import run_without_hf_optim

_READER = r"""
import sys
import torch
from transformers import AutoModelForCausalLM
src, ids_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
ids = torch.load(ids_file, weights_only=True)
with torch.no_grad():
    torch.save(model(ids).logits, out_file)
"""


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


def _isolated_logits(model_dir, ids, tmp_path):
    """Logits from an interpreter that cannot import hf_optim (see ``tests/isolated.py``)."""
    torch.save(ids, tmp_path / "ids.pt")
    run_without_hf_optim(_READER, [str(model_dir), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")], tmp_path)
    return torch.load(tmp_path / "logits.pt", weights_only=True)


@pytest.mark.parametrize("bits,dim", [(4, 1), (4, 0), (8, 1), (8, 0)])
def test_packing_matches_compressed_tensors(bits, dim):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    half = 2 ** (bits - 1)
    q = torch.randint(-half, half, (16, 40), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    ours = pack_to_int32(q, bits) if dim == 1 else pack_to_int32(q.t().contiguous(), bits).t()
    assert torch.equal(ours, helpers.pack_to_int32(q, bits, packed_dim=dim))


@pytest.mark.multiprocess
@pytest.mark.parametrize("scheme,kw,fmt", [
    ("int4_weight_only", {"group_size": 32}, "pack-quantized"),
    ("int4_weight_only", {"group_size": 16}, "pack-quantized"),
    ("int8_weight_only", {}, "pack-quantized"),
    ("int8_weight_only", {"group_size": 32}, "naive-quantized"),
])
def test_plain_from_pretrained_without_hf_optim_matches(base, tmp_path, scheme, kw, fmt, monkeypatch):
    pytest.importorskip("compressed_tensors")
    # the reference: the dequantized weights in fp32, as the reader computes (not the packed bf16 kernels)
    monkeypatch.setenv("HF_OPTIM_INT4_KERNEL", "0")
    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme=scheme, **kw))
    report = save_compressed_tensors(model, tmp_path / "ct", int8_format=fmt)
    assert report.format == f"compressed-tensors {fmt}" and report.max_abs_error == 0
    assert all(t["from_grid"] for t in report.tensors.values())
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt and qc["ignore"] == ["lm_head"]
    weights = qc["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == (4 if scheme.startswith("int4") else 8) and weights["symmetric"] is True
    assert weights["strategy"] == ("group" if kw else "channel") and weights["group_size"] == kw.get("group_size")
    ids = torch.randint(0, base.config.vocab_size - 3, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(_isolated_logits(tmp_path / "ct", ids, tmp_path), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bits,gs", [(4, 32), (8, 32), (8, None)])
def test_asymmetric_grids_get_integer_zero_points_that_compressed_tensors_decompresses(base, tmp_path, bits, gs):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme=f"int{bits}_weight_only",
                                                                group_size=gs, symmetric=False))
    report = save_compressed_tensors(model, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme(**qc["config_groups"]["group_0"])
    state = load_file(tmp_path / "ct" / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    local = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")}
    weight = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    grid = grid_of(model.get_submodule(name))
    err = (weight - grid.dequantized()).abs()
    entry = report.tensors[name]
    assert not entry["from_grid"] and entry["max_abs_error"] == pytest.approx(float(err.max()), rel=1e-5, abs=1e-9)
    # a rounded zero point moves a group by at most half a step
    step = grid.scale.repeat_interleave(grid.q.shape[1] // grid.scale.shape[1], 1)
    assert bool((err <= 0.5 * step + 1e-7).all())


def test_plain_dense_config_when_uniform_and_a_clear_error_when_not(tmp_path):
    model = tiny_llama(intermediate_size=48)  # as a uniform structured pruning leaves it
    report = save_compressed_tensors(model, tmp_path / "dense")
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert "quantization_config" not in config and config["intermediate_size"] == 48
    assert report.format == "compressed-tensors dense"
    uneven = tiny_llama()
    mlp = uneven.model.layers[0].mlp
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = nn.Linear(32, 40, False), nn.Linear(32, 40, False), nn.Linear(40, 32, False)
    with pytest.raises(ValueError, match="needs hf_optim"):
        save_compressed_tensors(uneven, tmp_path / "uneven")


def test_activation_quantized_schemes_are_refused(base, tmp_path):
    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme="int8_dynamic"))
    with pytest.raises(ValueError, match="weight-only"):
        save_compressed_tensors(model, tmp_path / "ct")
