"""``method: checkpoint``: an hf_optim int4 grid (RTN or GPTQ, symmetric or not) written into ONNX Runtime's
``MatMulNBits`` unchanged: one node per quantized Linear, initializers that decode to hf_optim's integers, and
logits that reproduce the torch model (tiny Llama, hidden 64, so groups of 32 and 64 divide every layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_optim  # noqa: F401 - registers the loader
from hf_optim.errors import ConfigError, HfOptimError
from hf_optim.export import ExportConfig, export_model
from hf_optim.quantize import QuantizeConfig

from .conftest import save_quantized_llama

CASES = {
    "rtn-g32-sym": dict(group_size=32),
    "rtn-g32-asym": dict(group_size=32, symmetric=False),
    "rtn-g64-asym": dict(group_size=64, symmetric=False),
    "gptq-g64-asym-tuned": dict(group_size=64, symmetric=False, method="gptq", gptq_tune_steps=2),
    # QuantizeConfig.integer_zero_points: the grid MatMulNBits holds exactly
    "rtn-g32-asym-intzp": dict(group_size=32, symmetric=False, integer_zero_points=True),
    "gptq-g64-asym-tuned-intzp": dict(group_size=64, symmetric=False, method="gptq", gptq_tune_steps=2,
                                      gptq_refit=True, integer_zero_points=True),
}
LAYERS = 2 * 7  # q, k, v, o, gate, up, down per layer; the head stays float


def _save_quantized(path, case: str):
    from hf_optim.testing import tiny_llama

    model = tiny_llama(hidden_size=64, intermediate_size=128)
    config = QuantizeConfig(model="tiny-llama", scheme="int4_weight_only", **CASES[case])
    return save_quantized_llama(path, model, config)


@pytest.fixture(autouse=True, scope="module")
def _fp32_reference():
    """The torch reference computes with the dequantized fp32 weights, as MatMulNBits with fp32 compute does (the
    packed bf16 kernels of the torch modules would add bf16 rounding to the comparison)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_OPTIM_INT4_KERNEL", "0")
        yield


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(case, quantized dir, grids, graph with fp32 compute, graph with int8 compute)."""
    from hf_optim.export.matmulnbits import apply_checkpoint_grid, float_checkpoint
    from hf_optim.export.onnx import export_onnx

    tmp = tmp_path_factory.mktemp(request.param)
    src = _save_quantized(tmp / "quantized", request.param)
    grids = float_checkpoint(src, tmp / "float", 4)
    path = export_onnx(tmp / "float", tmp / "onnx", "causal-lm", "torch")
    fp32, rec = apply_checkpoint_grid(path, tmp / "nbits.onnx", grids)
    int8, rec4 = apply_checkpoint_grid(path, tmp / "nbits4.onnx", grids, accuracy_level=4)
    return request.param, src, grids, (fp32, rec), (int8, rec4)


def _torch_model(src, round_zero_points: bool):
    from transformers import AutoModelForCausalLM

    from hf_optim.quantize.modules import QuantLinear

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    if round_zero_points:  # the grid MatMulNBits holds: integral zero points
        for m in model.modules():
            if isinstance(m, QuantLinear) and not m.symmetric:
                m.weight_zero_point.copy_(m.weight_zero_point.round())
    return model


def _logits(model_or_path, ids: np.ndarray) -> np.ndarray:
    if not isinstance(model_or_path, torch.nn.Module):
        from hf_optim.export.runtime import make_session

        sess = make_session(model_or_path)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values"):
                feeds[i.name] = np.zeros((ids.shape[0], 2, 0, 16), dtype=np.float32)
        return sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        return model_or_path(input_ids=torch.from_numpy(ids)).logits.numpy()


def test_one_matmulnbits_per_quantized_linear_decoding_to_the_grid(exported):
    import onnx

    from hf_optim.export.matmulnbits import decode_matmulnbits
    from hf_optim.quantize.modules import Int4WeightOnlyLinear

    case, src, grids, (path, rec), _ = exported
    model = _torch_model(src, round_zero_points=False)
    quantized = {n for n, m in model.named_modules() if isinstance(m, Int4WeightOnlyLinear)}
    assert set(grids) == quantized and len(quantized) == LAYERS
    graph = onnx.load(str(path)).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == rec["matmuls"] == LAYERS
    assert rec["block_size"] == [CASES[case]["group_size"]]
    inits = {i.name: i for i in graph.initializer}
    decoded = set()
    for node in nodes:
        name = node.input[1].rsplit(".MatMulNBits.B", 1)[0]
        grid, got = grids[name], decode_matmulnbits(node, inits)
        decoded.add(name)
        assert torch.equal(got["q"], grid.q)
        assert torch.equal(got["scales"], grid.scale)  # block == group: one scale each, bit for bit
        if grid.zero_point is None:
            assert got["zero_points"] is None and len(node.input) == 3
        else:
            assert torch.equal(got["zero_points"], grid.zero_point.round().to(torch.int16))
    assert decoded == quantized
    # no float copy of a quantized weight is left in the graph
    assert not any(i.data_type == onnx.TensorProto.FLOAT and list(i.dims) == [g.q.shape[1], g.q.shape[0]]
                   for i in graph.initializer for g in grids.values())


def test_logits_match_the_torch_model(exported):
    """fp32 compute (accuracy level unset) reproduces the torch model on the integral-zero-point grid to float
    rounding (measured: 3e-7 of the logits' range). Level 4 (int8 activations, one scale per block of
    ``block_size`` inputs) moves each input by up to half a step, ``amax(block) / 254``, uniformly: a relative
    error of ``crest / (127 * sqrt(12))`` per MatMul output, with the block's crest factor amax / rms ~3: ~0.7 %.
    The 14 MatMuls' errors are independent and add in quadrature, sqrt(14) * 0.7 % ~ 2.6 %: bounded by 3 %
    (measured: 0.6-0.75 %)."""
    case, src, grids, (fp32, rec), (int8, rec4) = exported
    ids = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(3)).numpy()
    rounded = _logits(_torch_model(src, round_zero_points=True), ids)
    exact = _logits(_torch_model(src, round_zero_points=False), ids)
    scale = float(np.abs(rounded).max())
    assert np.abs(_logits(fp32, ids) - rounded).max() <= 1e-5 * scale
    assert np.abs(_logits(int8, ids) - rounded).max() <= 0.03 * scale
    if CASES[case].get("symmetric", True):
        assert "zero_point_rounding" not in rec and np.array_equal(rounded, exact)
    elif CASES[case].get("integer_zero_points"):
        r = rec["zero_point_rounding"]
        assert r["fractional_groups"] == r["max_shift"] == r["weight_rel_error"] == 0 and r["groups"] > 0
        assert np.array_equal(rounded, exact)
    else:  # rounding a zero point moves every weight of its group by up to half a step
        r = rec["zero_point_rounding"]
        assert r["fractional_groups"] > 0 and r["clamped_groups"] == 0 and 0 < r["max_shift"] <= 0.5
        assert 0 < r["weight_rel_error"] < 0.2
        assert np.abs(rounded - exact).max() > 0


def test_export_stage_writes_the_checkpoint_grid(exported, tmp_path, clean_cwd):
    import json

    case, src, grids, _, _ = exported
    if case != "rtn-g32-asym":
        pytest.skip("one end-to-end export is enough")
    out = tmp_path / "out"
    rec = export_model(src, out, ExportConfig(model=str(src), task="bbc-news", quantization="int4",
                                              method="checkpoint", accuracy_level=4, max_metric_drop=0.05))
    assert rec["int4_matmuls"] == rec["ops"]["MatMulNBits"] == LAYERS
    grid = rec["checkpoint_grid"]
    assert grid["matmuls"] == grid["layers"] == LAYERS and grid["accuracy_level"] == 4
    assert grid["zero_point_rounding"]["groups"] == sum(g.scale.numel() for g in grids.values())
    assert abs(rec["validation"]["drop"]) < 0.05
    assert json.loads((out / "config.json").read_text()).get("quantization_config") is None


def test_checkpoint_method_needs_a_weight_only_checkpoint(tiny_llama_dir, tmp_path, clean_cwd):
    with pytest.raises(ConfigError, match="method"):
        ExportConfig(model="m", task="bbc-news", quantization="dynamic", method="checkpoint")
    cfg = ExportConfig(model="m", task="bbc-news", quantization="int4", method="checkpoint", accuracy_level=4)
    assert ExportConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(HfOptimError, match="no 4-bit weight-only Linear"):
        export_model(tiny_llama_dir, tmp_path / "o", ExportConfig(model=str(tiny_llama_dir), task="bbc-news",
                                                                  quantization="int4", method="checkpoint"))
    assert not (tmp_path / "o").exists()
