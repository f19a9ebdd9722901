"""ONNX export through both backends: numerics, fused + quantized graphs, the hf_optim record, no CWD writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_optim.compat import FeatureUnavailable, has_optimum
from hf_optim.export import ExportConfig, export_model
from hf_optim.export.onnx import op_counts

from .conftest import BACKENDS, needs_optimum

TEXTS = ["a good and moving film", "bad", "the plot is thin but the actors are great", "boring"]
FAST = dict(validation_samples=48, calibration_samples=32, calibration_batch_size=8)


def _torch_logits(src):
    from hf_optim.evaluation.classifier import load_classifier

    return load_classifier(src).predict_logits(TEXTS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_export_matches_torch(backend, bert_dir, tmp_path, clean_cwd):
    from hf_optim.evaluation.classifier import load_classifier
    from hf_optim.export.runtime import OrtClassifier

    out = tmp_path / "onnx"
    record = export_model(bert_dir, out, ExportConfig(model=str(bert_dir), backend=backend, optimization="none",
                                                      quantization="none", **FAST))
    assert record["backend"] == backend and record["quantization"] == "none"
    clf = load_classifier(out)
    assert isinstance(clf, OrtClassifier)
    assert np.abs(clf.predict_logits(TEXTS) - _torch_logits(bert_dir)).max() < 1e-4
    assert {"model.onnx", "config.json", "tokenizer_config.json", "hf_optim_export.json"} <= {p.name for p in out.iterdir()}
    assert len(list(out.glob("*.onnx"))) == 1 and not list(out.glob(".*"))
    saved = json.loads((out / "hf_optim_export.json").read_text())
    assert saved["config"] == record["config"] and saved["versions"]["onnxruntime"]
    v = record["validation"]
    assert v["drop"] == pytest.approx(v["source"] - v["candidate"]) and v["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_o2_dynamic_int8_is_fused_and_quantized(backend, bert_dir, tmp_path, clean_cwd):
    """Optimum's own O2 + INT8 stops at shape inference; here both the fusion and the INT8 are kept."""
    record = export_model(bert_dir, tmp_path / "q", ExportConfig(model=str(bert_dir), backend=backend,
                                                                 optimization="O2", quantization="dynamic", **FAST))
    ops = record["ops"]
    assert ops.get("QAttention") == 2  # 2 layers: fused attention, quantized
    assert ops.get("MatMulInteger", 0) >= 4  # attention output + FFN in + FFN out per layer
    # residual + LayerNorm split into Sum + LayerNormalization (split_skip_layernorm defaults to on)
    assert ops.get("Sum") == 4 and "SkipLayerNormalization" not in ops and "Attention" not in ops
    assert record["skip_layernorm"] == {"setting": "on", "decision": "on", "nodes_split": 6}
    assert record["validation"]["max_logit_diff"] < 0.02
    assert record["optimization"] == "O2"


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_int8_guard_and_int4(backend, bert_dir, tmp_path, clean_cwd):
    from hf_optim.export.ort_quant import guard_groups

    rec = export_model(bert_dir, tmp_path / "s", ExportConfig(model=str(bert_dir), backend=backend, optimization="O1",
                                                              quantization="static", **FAST))
    steps = rec["guard"]["steps"]
    assert steps[0]["kept_float"] == "none" and rec["guard"]["reached"]
    assert rec["ops"].get("QuantizeLinear", 0) >= 8 and rec["ops"].get("DequantizeLinear", 0) >= 16
    assert rec["validation"]["max_logit_diff"] < 0.05
    groups = [g for g, _ in guard_groups(tmp_path / "s" / "model.onnx")]
    assert groups[:3] == ["layernorm", "gelu", "residual-add"]
    assert {"layer.0", "layer.1"} <= set(groups)

    rec4 = export_model(bert_dir, tmp_path / "i4", ExportConfig(model=str(bert_dir), backend=backend,
                                                                optimization="none", quantization="int4",
                                                                group_size=16, min_weights=1024, **FAST))
    # 2 layers x (q, k, v, attention out, FFN in, FFN out) = 12 MatMuls with >= 1024 weights
    assert rec4["int4_matmuls"] == rec4["ops"]["MatMulNBits"] == 12
    assert rec4["validation"]["max_logit_diff"] < 0.05


@needs_optimum
def test_causal_lm_int4_asymmetric_matmulnbits_generates(tiny_llama_dir, tmp_path, clean_cwd):
    import onnx
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path / "lm4"
    rec = export_model(tiny_llama_dir, out, ExportConfig(model=str(tiny_llama_dir), task="bbc-news",
                                                         optimization="none", quantization="int4", group_size=16,
                                                         symmetric=False, min_weights=1024,
                                                         max_metric_drop=0.1))
    assert rec["int4_matmuls"] == rec["ops"]["MatMulNBits"] >= 4
    assert abs(rec["validation"]["drop"]) < 0.1
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) >= 4 and n.input[3] for n in nbits)   # a zero point per block
    model = ORTModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    gen = model.generate(**tok("the film", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == len(tok("the film")["input_ids"]) + 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_skip_layernorm_keeps_numerics_and_is_not_refused(backend, bert_dir, tmp_path, clean_cwd):
    """SkipLayerNormalization -> Sum + LayerNormalization and BiasGelu -> Add + Gelu: same logits, and a session
    loading the graph does not fuse the residual back (ORT's SkipLayerNormFusion matches Add, not Sum)."""
    import onnx
    import onnxruntime as ort

    from hf_optim.export.onnx import export_onnx, optimize_onnx, skip_layernorm_timings, split_skip_layernorm
    from hf_optim.export.runtime import OrtClassifier

    path = export_onnx(bert_dir, tmp_path / "e", "sequence-classification", backend)
    fused, record = optimize_onnx(path, tmp_path / "e" / "fused.onnx", "O2", backend, split="off")
    assert record == {"setting": "off", "decision": "off", "nodes_split": 0}
    assert op_counts(fused).get("SkipLayerNormalization") == 4 and op_counts(fused).get("BiasGelu") == 2
    split = tmp_path / "e" / "split.onnx"
    split.write_bytes(fused.read_bytes())
    assert split_skip_layernorm(split, "off") == {"decision": "off", "nodes_split": 0}
    assert op_counts(split) == op_counts(fused)
    # 4 SkipLayerNormalization + 2 BiasGelu
    assert split_skip_layernorm(split, "on") == {"decision": "on", "nodes_split": 6}
    ops = op_counts(split)
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    assert ops["Sum"] == 4 and ops["LayerNormalization"] == op_counts(fused).get("LayerNormalization", 0) + 4
    assert ops["Gelu"] == 2 and ops["Attention"] == 2
    a = OrtClassifier(fused)
    b = OrtClassifier(split)
    assert np.abs(a.predict_logits(TEXTS) - b.predict_logits(TEXTS)).max() < 1e-4

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "e" / "loaded.onnx")
    ort.InferenceSession(str(split), opts, providers=["CPUExecutionProvider"])
    loaded = {n.op_type for n in onnx.load(str(tmp_path / "e" / "loaded.onnx")).graph.node}
    assert "SkipLayerNormalization" not in loaded and "LayerNormalization" in loaded
    timings = skip_layernorm_timings(64, batch=2, seq=8, rounds=2)
    assert set(timings) == {"fused", "split"} and min(timings.values()) > 0


def test_guard_keeps_more_in_float_until_within_budget(bert_dir, tmp_path, monkeypatch):
    """The guard walks the groups in order and stops at the first step within budget."""
    calls = []

    def fake_compare(source_logits, logits, data):
        calls.append(1)
        drop = 0.2 if len(calls) <= 2 else 0.0  # all-int8 and LayerNorm-in-float are "too lossy"
        return {"task": "t", "split": "validation", "examples": 1, "metric": "accuracy", "source": 1.0,
                "candidate": 1.0 - drop, "drop": drop, "agreement": 1.0, "max_logit_diff": 0.0}

    monkeypatch.setattr("hf_optim.export.validate.compare", fake_compare)
    rec = export_model(bert_dir, tmp_path / "g", ExportConfig(model=str(bert_dir), backend="torch",
                                                              optimization="none", quantization="static", **FAST))
    kept = [s["kept_float"] for s in rec["guard"]["steps"]]
    assert kept == ["none", "layernorm", "gelu"]
    assert rec["guard"]["reached"] and rec["guard"]["excluded_nodes"]


def test_budget_exceeded_writes_nothing(bert_dir, tmp_path, monkeypatch):
    from hf_optim.errors import StageError

    def lossy(source_logits, logits, data):
        return {"task": "t", "split": "validation", "examples": 1, "metric": "accuracy", "source": 0.9,
                "candidate": 0.5, "drop": 0.4, "agreement": 0.5, "max_logit_diff": 1.0}

    monkeypatch.setattr("hf_optim.export.validate.compare", lossy)
    with pytest.raises(StageError, match="dropped 0.4000"):
        export_model(bert_dir, tmp_path / "x" / "out", ExportConfig(model=str(bert_dir), backend="torch",
                                                                    quantization="dynamic", **FAST))
    assert not (tmp_path / "x" / "out").exists() and list((tmp_path / "x").iterdir()) == []


def _lm_runner(path):
    """``run(ids, mask=None, past=None) -> (logits, presents)`` over an ORT session of a graph laid out as
    Optimum's text-generation-with-past (an empty past when ``past`` is None; positions from the mask)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    past_names = [n for n in inputs if n.startswith("past_key_values.")]

    def run(ids, mask=None, past=None):
        if past is None:
            past = {n: np.zeros((ids.shape[0], inputs[n][1], 0, inputs[n][3]), np.float32) for n in past_names}
        start = past[past_names[0]].shape[2]
        mask = np.ones((ids.shape[0], start + ids.shape[1]), np.int64) if mask is None else mask
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)[:, start:]
        out = dict(zip(outputs, sess.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                                **past})))
        return out["logits"], {n: out[n.replace("past_key_values.", "present.")] for n in past_names}

    return run, inputs, outputs


# Bounds on logits (this tiny model's are within +-0.5): vs torch, and a run in two chunks vs a whole run.
# fp32 is the model; INT8/int4 move logits by ~0.006/~0.04 here; dynamic INT8 scales depend on each input,
# so a chunked run differs slightly from a whole one, while int4 weights give the same result either way.
# ONNX Runtime's MatMulInteger kernel depends on the CPU: dynamic INT8 stayed under 0.02 vs torch on an AVX-512
# VNNI machine and reached 0.024 on an AVX2-only one.
LM_CASES = [
    pytest.param("none", {}, 1e-4, 1e-5, id="fp32"),
    pytest.param("dynamic", {}, 0.04, 0.02, id="dynamic"),
    pytest.param("int4", dict(group_size=16, min_weights=1024), 0.08, 1e-5, id="int4"),
    pytest.param("int8_weight_only", dict(group_size=16, min_weights=1024), 0.01, 1e-5, id="int8-weight-only"),
    pytest.param("int4", dict(group_size=16, min_weights=1024, method="hqq"), 0.08, 1e-5, id="int4-hqq"),
]


@pytest.mark.parametrize("quantization, extra, vs_torch, vs_whole", LM_CASES)
def test_torch_backend_exports_causal_lm_with_past(quantization, extra, vs_torch, vs_whole, tiny_llama_dir,
                                                   tmp_path, clean_cwd):
    """The torch.onnx fallback: Optimum's text-generation-with-past layout, an empty or a non-empty past, and the
    record's perplexity check; fp32 greedy decoding over the session gives the tokens ``generate`` gives."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"lm-{quantization}"
    rec = export_model(tiny_llama_dir, out, ExportConfig(model=str(tiny_llama_dir), task="bbc-news",
                                                         task_type="causal-lm", backend="torch", optimization="none",
                                                         quantization=quantization, max_metric_drop=0.05, **extra))
    assert rec["backend"] == "torch" and rec["task_type"] == "causal-lm" and rec["validation"]["metric"] == "perplexity"
    assert abs(rec["validation"]["drop"]) < 0.05
    ops = rec["ops"]
    # 2 layers x (q, k, v, o, gate, up, down) + lm_head = 15 MatMuls with weights
    if quantization == "none":
        assert rec["validation"]["drop"] == pytest.approx(0, abs=1e-4) and rec["validation"]["max_logit_diff"] < 1e-4
        assert ops["MatMul"] >= 15 and "MatMulInteger" not in ops and "MatMulNBits" not in ops
    elif quantization == "dynamic":
        assert ops.get("MatMulInteger") == 15 and ops.get("DynamicQuantizeLinear", 0) >= 1
    else:  # k/v projections (32 x 16 = 512 weights) stay below min_weights
        bits = 4 if quantization == "int4" else 8
        assert rec[f"int{bits}_matmuls"] == ops.get("MatMulNBits") == 11
        import onnx

        graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
        assert {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {bits}
        if extra.get("method") == "hqq":  # HQQ's zero points are floats (any offset), not packed integers
            inits = {i.name: i.data_type for i in graph.initializer}
            zps = [n.input[3] for n in graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3 and n.input[3]]
            assert len(zps) == 11 and {inits[z] for z in zps} == {onnx.TensorProto.FLOAT}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "hf_optim_export.json"} <= {p.name for p in out.iterdir()}
    assert len(list(out.glob("*.onnx"))) == 1 and not list(out.glob(".*"))

    run, inputs, outputs = _lm_runner(out / "model.onnx")
    past_names = [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids"] + past_names
    assert outputs == ["logits"] + [n.replace("past_key_values.", "present.") for n in past_names]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert inputs["past_key_values.0.key"] == ["batch_size", 2, "past_sequence_length", 8]

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    # (a) whole sequences, left-padded batch: every real position's logits match torch's
    tok.padding_side = "left"
    enc = tok(["the plot is thin but the actors are great", "a good film"], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    logits, presents = run(ids, mask)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(np.clip(mask.cumsum(-1) - 1, 0, None))).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(logits - ref)[real].max() < vs_torch
    assert presents["past_key_values.1.value"].shape == (2, 2, ids.shape[1], 8)
    # (b) the prefix, then the rest with the prefix's presents as past: the whole run's last logits
    split = ids.shape[1] - 3
    _, past = run(ids[:, :split], mask[:, :split])
    rest, presents = run(ids[:, split:], mask, past)
    assert rest.shape == (2, 3, logits.shape[-1]) and presents["past_key_values.0.key"].shape[2] == ids.shape[1]
    assert np.abs(rest[:, -1] - logits[:, -1]).max() < vs_whole
    assert np.abs(rest[:, -1] - ref[:, -1]).max() < vs_torch

    # greedy decoding with the KV cache, one token per step
    prompt = tok("the film", return_tensors="np")["input_ids"].astype(np.int64)
    logits, past = run(prompt)
    mask = np.ones_like(prompt)
    new = []
    for _ in range(5):
        new.append(int(logits[0, -1].argmax()))
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        logits, past = run(np.array([[new[-1]]], np.int64), mask, past)
    ref_ids = model.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             max_new_tokens=5, do_sample=False)[0, prompt.shape[1]:].tolist()
    if quantization == "none":
        assert new[:len(ref_ids)] == ref_ids
    else:
        assert new[0] == ref_ids[0]
    if has_optimum() and quantization == "none":  # the primary stack's loader takes the fallback's graph too
        from optimum.onnxruntime import ORTModelForCausalLM

        gen = ORTModelForCausalLM.from_pretrained(out).generate(torch.from_numpy(prompt), max_new_tokens=5,
                                                                 do_sample=False)
        assert gen[0, prompt.shape[1]:].tolist() == ref_ids


def test_torch_backend_causal_lm_sliding_window(tmp_path, clean_cwd):
    """A Mistral whose window (3) is shorter than the sequence: the graph limits attention as the model does."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from hf_optim.export.onnx import export_onnx

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, sliding_window=3)
    model = MistralForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "mistral")
    path = export_onnx(tmp_path / "mistral", tmp_path / "onnx", "causal-lm", "torch")
    run, _, _ = _lm_runner(path)
    ids = np.random.default_rng(0).integers(0, 100, (1, 10)).astype(np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    logits, past = run(ids[:, :6])
    rest, _ = run(ids[:, 6:], past=past)
    assert np.abs(logits - ref[:, :6]).max() < 1e-4 and np.abs(rest - ref[:, 6:]).max() < 1e-4


def test_torch_backend_refuses_what_it_cannot_export(tmp_path, monkeypatch):
    from transformers import Gemma2Config

    from hf_optim.export.onnx import export_onnx
    from hf_optim.testing import save_tiny_llama

    # layers alternating full and sliding-window attention: refused from the config, before loading weights
    Gemma2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=8, intermediate_size=64, sliding_window=4).save_pretrained(tmp_path / "gemma2")
    with pytest.raises(FeatureUnavailable, match="gemma2 causal LM .* mix attention kinds .* Optimum"):
        export_onnx(tmp_path / "gemma2", tmp_path / "o1", "causal-lm", "torch")
    # a graph that does not reproduce the model (here: a window the model does not have) is not kept
    monkeypatch.setattr("hf_optim.export.onnx._attention_window", lambda config: 2)
    src = save_tiny_llama(tmp_path / "llama")
    with pytest.raises(FeatureUnavailable, match="llama causal LM .* logits differ"):
        export_onnx(src, tmp_path / "o2", "causal-lm", "torch")
    with pytest.raises(FeatureUnavailable, match="token-classification"):
        export_onnx(src, tmp_path / "o3", "token-classification", "torch")


@pytest.mark.skipif(has_optimum(), reason="checks the error shown when optimum-onnx is missing")
def test_optimum_backend_unavailable_message(bert_dir, tmp_path):
    with pytest.raises(FeatureUnavailable, match="optimum-onnx"):
        export_model(bert_dir, tmp_path / "o", ExportConfig(model=str(bert_dir), backend="optimum"))


@needs_optimum
def test_optimum_loaders_and_pipeline(bert_dir, tmp_path, clean_cwd):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    from hf_optim.export.runtime import OrtClassifier

    out = tmp_path / "o2q"
    export_model(bert_dir, out, ExportConfig(model=str(bert_dir), optimization="O2", quantization="dynamic", **FAST))
    model = ORTModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ref = OrtClassifier.from_dir(out).predict_logits(TEXTS)
    logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
    assert np.abs(logits - ref).max() < 1e-5
    preds = pipeline("text-classification", model=model, tokenizer=tok)(TEXTS)
    assert [p["label"] for p in preds] == [model.config.id2label[i] for i in ref.argmax(-1)]


@needs_optimum
def test_optimum_causal_lm_with_past(tiny_llama_dir, tmp_path, clean_cwd):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lm"
    rec = export_model(tiny_llama_dir, out, ExportConfig(model=str(tiny_llama_dir), task="bbc-news",
                                                         optimization="none", quantization="dynamic",
                                                         max_metric_drop=0.05))
    assert rec["task_type"] == "causal-lm" and rec["validation"]["metric"] == "perplexity"
    assert abs(rec["validation"]["drop"]) < 0.05 and rec["ops"].get("MatMulInteger", 0) >= 4
    model = ORTModelForCausalLM.from_pretrained(out)
    assert model.use_cache
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the film", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape == ref.shape and (gen[0, :-2] == ref[0, :-2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_calibration_reduces_chunk_by_chunk(backend, bert_dir, tmp_path, clean_cwd, monkeypatch):
    """MinMax ranges are the same whatever the chunk size, and no chunk of activations outlives its reduction."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    from hf_optim.export.onnx import export_onnx
    from hf_optim.export.ort_quant import calibrate_onnx, range_dict

    path = export_onnx(bert_dir, tmp_path / "e", "sequence-classification", backend)
    rng = np.random.default_rng(0)
    feats = {"input_ids": rng.integers(5, 90, (12, 9)), "attention_mask": np.ones((12, 9), dtype=np.int64),
             "token_type_ids": np.zeros((12, 9), dtype=np.int64)}
    held = []
    collect = MinMaxCalibrater.collect_data

    def spy(self, reader):
        collect(self, reader)
        held.append(len(self.intermediate_outputs))

    monkeypatch.setattr(MinMaxCalibrater, "collect_data", spy)
    chunked = range_dict(calibrate_onnx(path, feats, backend, tmp_path / "c1", batch_size=4))
    assert len(held) == 3 and max(held) == 0  # one reduction per chunk of 4, nothing kept afterwards
    whole = range_dict(calibrate_onnx(path, feats, backend, tmp_path / "c2", batch_size=12))
    assert chunked.keys() == whole.keys() and len(whole) > 10
    assert all(np.allclose(chunked[k], whole[k], atol=1e-5) for k in whole)
