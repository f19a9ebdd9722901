"""Packed CPU kernels of the weight-only Linears: the same numbers as dequantize-then-matmul within the bound
bfloat16 activations allow, the stored format unchanged, and the fallback wherever the kernels cannot run.

The bound. The kernels round the input, the per-group scales and zeros and the output to bfloat16 (unit roundoff
``u = 2^-8``) and accumulate in float32; the many-row path rounds the input and the dequantized weight instead.
With ``A = |x| @ ((|q| + |zero_point|) * scale).T`` (what ``|x| @ |W|.T`` is at most), to first order

    |y_kernel - y_exact| <= u |x| @ |W|.T  (input)  +  u A  (scales / zeros or the bf16 weight)
                            + u |x @ (q * scale).T|  (output; the int8 zero-point correction is applied after it)
                            + K 2^-24 A  (float32 sums)  <=  (3 u + K 2^-24) A + u |y_exact|,

which :func:`_bound` evaluates per output element. The measured error is a few times smaller (roundings
cancel); a wrong layout, scale or zero misses it by orders of magnitude.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

import hf_optim  # noqa: F401 - registers the loader
from hf_optim.quantize import QuantizeConfig, kernels
from hf_optim.quantize.apply import quantize_model_
from hf_optim.quantize.modules import Int4WeightOnlyLinear, Int8WeightOnlyLinear, WeightOnlyLinear
from hf_optim.testing import tiny_llama

U = 2.0 ** -8
needs_int4 = pytest.mark.skipif(not kernels._op_works("int4pack"), reason="torch lacks the CPU int4 kernel")
needs_int8 = pytest.mark.skipif(not kernels._op_works("int8pack"), reason="torch lacks the CPU int8 kernel")


def _bound(mod: WeightOnlyLinear, x: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    q = mod.int_weight().float()
    gs = mod.group_size or mod.in_features
    scale = mod.weight_scale.abs().repeat_interleave(gs, 1)[:, :mod.in_features]
    zp = 0.0 if mod.symmetric else mod.weight_zero_point.repeat_interleave(gs, 1)[:, :mod.in_features].abs()
    a = x.abs() @ ((q.abs() + zp) * scale).T
    return (3 * U + mod.in_features * 2.0 ** -24) * a + U * (exact - mod.bias).abs() + 1e-6


def _module(cls, in_f, out_f, seed=0, **kw):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.add_(0.05 * torch.randn(out_f, 1))  # skewed rows: zero points far from the middle
    return cls.from_linear(lin, **kw)


def _both(mod, x):
    """(kernel output, dequantize output) of one module."""
    with torch.no_grad():
        mod.use_kernel = None
        fast = mod(x)
        mod.use_kernel = False
        exact = mod(x)
        mod.use_kernel = None
    return fast, exact


CASES = {  # name: (class, in, out, from_linear kwargs, kernel, kernel group size)
    "int4-g32-sym": (Int4WeightOnlyLinear, 128, 48, dict(group_size=32), "int4pack", 32),
    "int4-g32-asym": (Int4WeightOnlyLinear, 128, 48, dict(group_size=32, symmetric=False), "int4pack", 32),
    "int4-g64-asym": (Int4WeightOnlyLinear, 256, 64, dict(group_size=64, symmetric=False), "int4pack", 64),
    "int4-g128-sym": (Int4WeightOnlyLinear, 256, 32, dict(group_size=128), "int4pack", 128),
    "int4-g128-asym-partial": (Int4WeightOnlyLinear, 192, 32, dict(group_size=128, symmetric=False,
                                                                    partial_groups=True), "int4pack", 64),
    "int4-per-channel": (Int4WeightOnlyLinear, 96, 16, dict(group_size=None), "int4pack", 32),
    "int8-per-channel": (Int8WeightOnlyLinear, 96, 40, {}, "int8pack", None),
    "int8-per-channel-asym": (Int8WeightOnlyLinear, 96, 40, dict(symmetric=False), "int8pack", None),
}


@needs_int4
@needs_int8
@pytest.mark.parametrize("rows", [1, 8, 100])  # 100 > KERNEL_MAX_ROWS: the bfloat16 dequantize-GEMM path
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_dequantize_within_the_bfloat16_bound(name, rows):
    cls, in_f, out_f, kw, kernel, kernel_gs = CASES[name]
    mod = _module(cls, in_f, out_f, **kw)
    if not mod.symmetric:  # the fractional zero points the asymmetric grid gives
        assert (mod.weight_zero_point != mod.weight_zero_point.round()).float().mean() > 0.5
    assert mod.kernel == kernel and f"kernel={kernel}" in repr(mod)
    assert kernels.weight_only_kernel(mod.bits, in_f, out_f, mod.group_size)[1] == kernel_gs
    x = torch.randn(2, rows, in_f)
    fast, exact = _both(mod, x)
    assert fast.shape == exact.shape == (2, rows, out_f) and fast.dtype == torch.float32
    err = (fast - exact).abs()
    assert bool((err <= _bound(mod, x, exact)).all()), float((err / _bound(mod, x, exact)).max())
    assert float(err.norm() / exact.norm()) < 2 * U  # what the bound means in aggregate: bfloat16 precision
    assert isinstance(mod._cache, kernels.PackedWeight)


@needs_int4
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    mod = _module(Int4WeightOnlyLinear, 64, 32, group_size=32, symmetric=False)
    x = torch.randn(3, 64).to(dtype)
    fast, exact = _both(mod, x)
    assert fast.dtype == exact.dtype == dtype
    assert float((fast.float() - exact.float()).norm() / exact.float().norm()) < 4 * U


@pytest.mark.parametrize("cls,in_f,out_f,kw", [
    (Int4WeightOnlyLinear, 64, 32, dict(group_size=16)),                       # group size the op refuses
    (Int4WeightOnlyLinear, 72, 32, dict(group_size=24, partial_groups=True)),  # no accepted size fits the groups
    (Int4WeightOnlyLinear, 64, 24, dict(group_size=32)),                       # outputs not a multiple of 16
    (Int8WeightOnlyLinear, 64, 32, dict(group_size=32)),                       # int8 kernel: per channel only
    (Int8WeightOnlyLinear, 40, 32, {}),                                        # int8: inputs a multiple of 16
])
def test_dequantize_where_no_kernel_applies(cls, in_f, out_f, kw):
    mod = _module(cls, in_f, out_f, **kw)
    assert mod.kernel == "dequantize" and "kernel=dequantize" in repr(mod)
    x = torch.randn(3, in_f)
    with torch.no_grad():
        assert torch.equal(mod(x), nn.functional.linear(x, mod.dequantized_weight(), mod.bias))
    assert mod._cache is None


@needs_int4
def test_opt_outs_and_capability(monkeypatch):
    mod = _module(Int4WeightOnlyLinear, 64, 32, group_size=32)
    x = torch.randn(2, 64)
    exact = nn.functional.linear(x, mod.dequantized_weight(), mod.bias)
    with torch.no_grad():
        monkeypatch.setenv(kernels.KERNEL_ENV, "0")
        assert mod.kernel == "dequantize" and torch.equal(mod(x), exact)
        monkeypatch.setenv(kernels.KERNEL_ENV, "1")
        assert mod.kernel == "int4pack" and not torch.equal(mod(x), exact)
        mod.use_kernel = False
        assert mod.kernel == "dequantize" and torch.equal(mod(x), exact)
        mod.use_kernel = None
        assert torch.equal(mod(x.double()), nn.functional.linear(x.double(), mod.dequantized_weight(torch.float64),
                                                                   mod.bias.double()))  # float64 stays exact
    monkeypatch.setattr(kernels, "_op_works", lambda kernel: False)  # a torch without the op
    kernels.weight_only_kernel.cache_clear()
    try:
        assert _module(Int4WeightOnlyLinear, 64, 32, group_size=32).kernel == "dequantize"
    finally:
        kernels.weight_only_kernel.cache_clear()


@needs_int4
def test_gradients_take_the_dequantize_path():
    mod = _module(Int4WeightOnlyLinear, 64, 32, group_size=32, symmetric=False)
    x = torch.randn(2, 64, requires_grad=True)
    y = mod(x)
    assert torch.equal(y, nn.functional.linear(x, mod.dequantized_weight(), mod.bias))
    y.sum().backward()
    assert x.grad is not None and mod._cache is None


@needs_int4
def test_packed_state_is_not_saved_and_follows_loads():
    mod = _module(Int4WeightOnlyLinear, 64, 32, group_size=32, symmetric=False)
    keys = set(mod.state_dict())
    x = torch.randn(2, 64)
    with torch.no_grad():
        mod(x)
        assert set(mod.state_dict()) == keys == {"weight", "weight_scale", "weight_zero_point", "bias"}
        other = _module(Int4WeightOnlyLinear, 64, 32, seed=1, group_size=32, symmetric=False)
        mod.load_state_dict(other.state_dict())  # in-place copies: the packed weight is rebuilt
        fast, exact = _both(mod, x)
        assert torch.equal(fast, other(x)) and float((fast - exact).norm() / exact.norm()) < 2 * U


def _llama_int4(**cfg):
    model = tiny_llama(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    quantize_model_(model, QuantizeConfig(model="tiny-llama", **cfg))
    return model


# Relative logit error, kernel vs dequantize, tiny Llama (hidden 128, 2 layers, 7 Linears each): measured
# 0.002-0.004 (torch 2.13, x86): about u per layer, as the per-Linear bound (relative ~ u) predicts.
LOGIT_REL_ERR = 0.02


@needs_int4
@needs_int8
@pytest.mark.parametrize("cfg", [dict(scheme="int4_weight_only", group_size=32),
                                 dict(scheme="int4_weight_only", group_size=64, symmetric=False),
                                 dict(scheme="int4_weight_only", group_size=128, symmetric=False),
                                 dict(scheme="int8_weight_only")], ids=["g32", "g64-asym", "g128-asym", "int8"])
def test_tiny_llama_checkpoint_saved_without_kernels_loads_and_generates_alike(cfg, tmp_path, monkeypatch):
    model = _llama_int4(**cfg)
    ids = torch.randint(0, 60, (8, 12), generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv(kernels.KERNEL_ENV, "0")  # the checkpoint as hf_optim wrote it before the kernels
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    monkeypatch.setenv(kernels.KERNEL_ENV, "1")
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    mods = [m for m in again.modules() if isinstance(m, WeightOnlyLinear)]
    assert mods and {m.kernel for m in mods} == {"int8pack" if cfg["scheme"] == "int8_weight_only" else "int4pack"}
    with torch.no_grad():
        after = again(input_ids=ids).logits
    assert float((after - before).norm() / before.norm()) < LOGIT_REL_ERR
    assert set(again.state_dict()) == set(model.state_dict())
    _same_greedy_choices(again, model, ids)


def _same_greedy_choices(fast, exact, ids, new=4):
    """Greedy decoding (KV cache, one row per step through the kernels) picks what the dequantize path picks at
    every step whose choice the logit error cannot flip: the top-1 margin of the exact logits (teacher-forced on
    the exact continuation) above twice the largest logit difference between the paths."""
    with kernels_off(exact):
        ref = exact.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        with torch.no_grad():
            ref_logits = exact(input_ids=ref).logits[:, ids.shape[1] - 1:-1]
    got = fast.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    with torch.no_grad():
        fast_logits = fast(input_ids=ref).logits[:, ids.shape[1] - 1:-1]
    top2 = ref_logits.topk(2, -1).values
    decisive = ((top2[..., 0] - top2[..., 1]) > 2 * float((fast_logits - ref_logits).abs().max())).all(-1)
    assert int(decisive.sum()) >= len(ids) // 2, "too few decisive prompts to compare"
    assert torch.equal(got[decisive], ref[decisive])


class kernels_off:
    """Force the dequantize path on every weight-only Linear of a model (restored on exit)."""

    def __init__(self, model):
        self.mods = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]

    def __enter__(self):
        for m in self.mods:
            m.use_kernel = False

    def __exit__(self, *exc):
        for m in self.mods:
            m.use_kernel = None
