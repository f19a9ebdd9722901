"""``save_genai``: an hf_optim weight-only tiny Llama written in onnxruntime-genai's pre-quantized (``olive``)
layout decodes exactly to hf_optim's grid; bad inputs fail with what to change. The end-to-end tests (marker
``genai``) run onnxruntime-genai's model builder in ``$HF_OPTIM_GENAI_PYTHON`` (or this interpreter when it has
onnxruntime-genai) and check the built model's logits and greedy tokens against the torch model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_optim  # noqa: F401 - registers the loader
from hf_optim.errors import HfOptimError
from hf_optim.export.genai import GENAI_PYTHON_ENV, GenaiConfig, builder_command, save_genai, write_prequantized
from hf_optim.quantize import QuantizeConfig

from .conftest import save_quantized_llama

# hidden 64 and FFN 96: group 64 on the FFN's 96 inputs is a partial group (64 + 32), written as blocks of 32
CASES = {
    "rtn-g32-sym": dict(group_size=32),
    "rtn-g32-asym-intzp": dict(group_size=32, symmetric=False, integer_zero_points=True),
    "rtn-g64-asym-partial": dict(group_size=64, symmetric=False, integer_zero_points=True, partial_groups=True),
    "gptq-g32-asym-intzp": dict(group_size=32, symmetric=False, integer_zero_points=True, method="gptq"),
    "rtn-g32-asym-fractional": dict(group_size=32, symmetric=False),
}
LAYERS = 2 * 7


def _save_quantized(path, scheme="int4_weight_only", tied=False, **kwargs):
    from hf_optim.testing import tiny_llama

    model = tiny_llama(hidden_size=64, intermediate_size=96, tie_word_embeddings=tied)
    config = QuantizeConfig(model="tiny-llama", scheme=scheme, **kwargs) if scheme != "none" else None
    return save_quantized_llama(path, model, config)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed.to(torch.int16)
    return torch.stack((packed & 0x0F, packed >> 4), -1).reshape(packed.shape[0], -1).to(torch.int16)


@pytest.fixture(scope="module", params=list(CASES))
def written(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    src = _save_quantized(tmp / "quantized", **CASES[request.param])
    return request.param, src, tmp / "ckpt", write_prequantized(src, tmp / "ckpt")


def test_written_tensors_decode_to_the_grid(written):
    """qweight / scales / qzeros, read back as the builder reads the olive layout, give hf_optim's integers, its
    scales bit for bit (repeated per block inside a group) and its zero points (rounded when fractional)."""
    from safetensors.torch import load_file

    case, _, ckpt, out = written
    tensors = load_file(str(ckpt / "model.safetensors"))
    qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "olive" and qc["bits"] == 4
    assert len(out["grids"]) == LAYERS
    for name, grid in out["grids"].items():
        block = qc["overrides"].get(name, {}).get("group_size", qc["group_size"])
        assert block == out["tensors"][name]["block_size"]
        n_out, k = grid.q.shape
        group = grid.group_size or k
        q = _unpack(tensors[f"{name}.qweight"], 4)
        assert q.shape == (n_out, k) and torch.equal(q - 8, grid.q.to(torch.int16))
        owner = torch.arange(k // block) * block // group  # the group each block lies in
        assert torch.equal(tensors[f"{name}.scales"], grid.scale[:, owner])
        zp = _unpack(tensors[f"{name}.qzeros"], 4)[:, :k // block] - 8
        want = torch.zeros_like(zp) if grid.zero_point is None else grid.zero_point[:, owner].round().to(torch.int16)
        assert torch.equal(zp, want)
        assert out["tensors"][name]["from_grid"] == (case != "rtn-g32-asym-fractional")
    if case == "rtn-g64-asym-partial":  # the FFN's 96 inputs: blocks of 32 (in one group each), the rest 64
        assert qc["group_size"] == 64 and set(qc["overrides"]) == {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}
    assert "model.embed_tokens.weight" in tensors and "model.norm.weight" in tensors
    assert not any(k.endswith(".weight") and "_proj" in k for k in tensors)
    assert (ckpt / "tokenizer.json").is_file() or (ckpt / "tokenizer_config.json").is_file()


def test_fractional_zero_points_are_rounded_with_a_note(tmp_path):
    src = _save_quantized(tmp_path / "m", **CASES["rtn-g32-asym-fractional"])
    out = write_prequantized(src, tmp_path / "ckpt")
    assert any("integer_zero_points: true" in n for n in out["notes"])
    assert all(t["max_abs_error"] > 0 for t in out["tensors"].values())


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(scheme="none"), "quantize it first"),
    (dict(scheme="int8_dynamic"), "weight-only"),
    (dict(scheme="int4_weight_only", group_size=8), "power of two >= 16"),
    (dict(scheme="int4_weight_only", group_size=32, exclude=[r"mlp\.down_proj"]), "include/exclude"),
])
def test_models_the_builder_cannot_take_fail_with_what_to_change(tmp_path, kwargs, match):
    src = _save_quantized(tmp_path / "m", **kwargs)
    with pytest.raises(HfOptimError, match=match):
        write_prequantized(src, tmp_path / "ckpt")


def test_not_a_llama(tmp_path):
    from hf_optim.testing import save_tiny_bert

    with pytest.raises(HfOptimError, match="Llama-family"):
        write_prequantized(save_tiny_bert(tmp_path / "bert"), tmp_path / "ckpt")


def test_builder_command_and_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv(GENAI_PYTHON_ENV, "/opt/genai/bin/python")
    cmd = builder_command(tmp_path / "c", tmp_path / "o", tmp_path / "cache", 4, GenaiConfig())
    assert cmd[:4] == ["/opt/genai/bin/python", "-I", "-m", "onnxruntime_genai.models.builder"]
    assert cmd[cmd.index("-p") + 1] == "int4" and cmd[cmd.index("-c") + 1] == str(tmp_path / "cache")
    assert "accuracy_level=4" in cmd and "matmul_mixed_precision=last_matmul:int8" in cmd and "algo_config=rtn" in cmd
    cmd = builder_command(tmp_path / "c", tmp_path / "o", tmp_path / "cache", 4,
                          GenaiConfig(lm_head="float", accuracy_level=1, python="py"))
    assert cmd[0] == "py" and "nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather" in cmd and "accuracy_level=1" in cmd
    cmd = builder_command(tmp_path / "c", tmp_path / "o", tmp_path / "cache", 8, GenaiConfig())
    assert cmd[cmd.index("-p") + 1] == "int8" and not any(a.startswith("matmul_mixed") for a in cmd)
    cmd = builder_command(tmp_path / "c", tmp_path / "o", tmp_path / "cache", 4, GenaiConfig(lm_head="int4"))
    assert not any(a.startswith(("matmul_mixed", "algo_config", "nodes_to_exclude")) for a in cmd)
    with pytest.raises(ValueError, match="lm_head"):
        GenaiConfig(lm_head="int2")


@pytest.mark.parametrize(("stderr", "match"), [
    (None, GENAI_PYTHON_ENV),
    ("ModuleNotFoundError: No module named 'onnxruntime_genai'", "has no onnxruntime-genai"),
    ("ImportError: cannot import name 'Qwen3_5ForConditionalGeneration' from 'transformers'", "newer transformers"),
])
def test_an_interpreter_without_the_builder_says_how_to_get_one(tmp_path, stderr, match):
    src = _save_quantized(tmp_path / "m", group_size=32)
    python = tmp_path / "python"
    if stderr is not None:  # an interpreter whose builder fails the way such environments do
        python.write_text(f"#!/bin/sh\necho \"{stderr}\" >&2\nexit 1\n")
        python.chmod(0o755)
    with pytest.raises(HfOptimError, match=match):
        save_genai(src, tmp_path / "out", GenaiConfig(python=str(python)))


# --- end to end: onnxruntime-genai's builder and runtime -----------------------------------------------------------

def _genai_python() -> str | None:
    for python in (os.environ.get(GENAI_PYTHON_ENV), sys.executable):
        if python and subprocess.run([python, "-I", "-c", "import onnxruntime_genai"], capture_output=True,
                                     check=False).returncode == 0:
            return python
    return None


GENAI_PYTHON = _genai_python()


def needs_genai(test):
    for mark in (pytest.mark.genai, pytest.mark.multiprocess, pytest.mark.skipif(
            GENAI_PYTHON is None, reason=f"no onnxruntime-genai here or in ${GENAI_PYTHON_ENV}")):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def reference_fp32():
    """The torch reference computes with the dequantized fp32 weights (MatMulNBits with fp32 compute does)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_OPTIM_INT4_KERNEL", "0")
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory, reference_fp32):
    """(source, fp32 build: float head and fp32 compute, default build: int8 head and int8 compute); the output
    head tied to the input embeddings, as SmolLM2's is (the builder shares one table between them)."""
    tmp = tmp_path_factory.mktemp("genai")
    src = _save_quantized(tmp / "quantized", tied=True, **CASES["gptq-g32-asym-intzp"])
    exact = save_genai(src, tmp / "fp32", GenaiConfig(lm_head="float", accuracy_level=1, python=GENAI_PYTHON))
    fast = save_genai(src, tmp / "default", GenaiConfig(python=GENAI_PYTHON))
    return src, exact, fast


def _session_logits(path, ids: np.ndarray, head_dim: int) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, head_dim), dtype=np.float32)
    return sess.run(["logits"], feeds)[0]


@needs_genai
@pytest.mark.parametrize("which", ["fp32", "default"])
@pytest.mark.usefixtures("reference_fp32")
def test_built_model_reproduces_the_torch_logits(built, which):
    """fp32 compute with the float head reproduces the torch model to float rounding (bound 1e-4 of the logits'
    range; measured 1.4e-7). The default build (int8 activations, int8 head) adds the activation rounding of each
    MatMul, ~0.7 % per MatMul added in quadrature over 15 (tests/export/test_matmulnbits.py): bounded by 3 %
    (measured 0.6 %)."""
    from transformers import AutoModelForCausalLM

    src, exact, fast = built
    report = exact if which == "fp32" else fast
    assert any(n.startswith(f"verified: 10 MatMulNBits hold the grids of {LAYERS} layers") for n in report.notes)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    ids = torch.randint(0, 60, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    got = _session_logits(report.path, ids.numpy(), model.config.head_dim)
    rel = np.abs(got - ref).max() / (ref.max() - ref.min())
    assert rel < (1e-4 if which == "fp32" else 0.03), rel


_GREEDY = textwrap.dedent("""
    import json, sys
    import onnxruntime_genai as og
    model = og.Model(sys.argv[1])
    params = og.GeneratorParams(model)
    prompt = json.loads(sys.argv[2])
    params.set_search_options(do_sample=False, max_length=len(prompt) + int(sys.argv[3]))
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    print(json.dumps([int(t) for t in gen.get_sequence(0)]))
""")


@needs_genai
@pytest.mark.usefixtures("reference_fp32")
def test_onnxruntime_genai_generates_the_torch_models_greedy_tokens(built):
    """onnxruntime-genai's own loop (fp32 build) emits the tokens torch's greedy ``generate`` does."""
    from transformers import AutoModelForCausalLM

    src, exact, _ = built
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    prompt = [1, 7, 12, 30, 4, 9]
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0].tolist()
    proc = subprocess.run([GENAI_PYTHON, "-I", "-c", _GREEDY, str(exact.path), json.dumps(prompt), "8"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got[:len(prompt)] == prompt and got == want[:len(got)] and len(got) > len(prompt)


@needs_genai
def test_export_stage_format_genai(tmp_path, monkeypatch):
    from hf_optim.export import ExportConfig, export_model

    monkeypatch.setenv(GENAI_PYTHON_ENV, GENAI_PYTHON)
    src = _save_quantized(tmp_path / "m", group_size=32)
    record = export_model(src, tmp_path / "out", ExportConfig(model=str(src), format="genai"))
    assert record["export_format"] == "genai" and record["written"] == "onnxruntime-genai int4"
    assert record["max_abs_error"] == 0.0 and record["tensors_written"] == LAYERS
    assert {"model.onnx", "genai_config.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
