"""Quantization numerics, configs, calibration, QAT, the stage and the precision planner (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hf_optim.errors import ConfigError
from hf_optim.quantize import QuantizeConfig
from hf_optim.quantize import kernels
from hf_optim.quantize.apply import (calibrate, convert_qat_, prepare_qat_, quantize_model_, set_qat_observers_,
                                     target_linears)
from hf_optim.quantize.modules import FakeQuantLinear, Int8StaticLinear
from hf_optim.quantize.planner import Budgets, choose_plan, pareto_front
from hf_optim.quantize.stage import linear_weight_bytes, quantize_dir, sqnr_db

CONFIGS = [QuantizeConfig(model="m"), QuantizeConfig(model="m", scheme="int8_static", observer="percentile"),
           QuantizeConfig(model="m", scheme="int4_weight_only", group_size=64, exclude=["pooler"]),
           QuantizeConfig(model="m", scheme="int8_qat", qat_max_train_samples=10, include=[r"\.query$"]),
           QuantizeConfig(model="m", scheme="bf16")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.scheme)
def test_config_round_trips_json_and_yaml(config):
    assert QuantizeConfig.from_dict(json.loads(config.to_json()), strict=True) == config
    assert QuantizeConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())), strict=True) == config


@pytest.mark.parametrize("changes, field", [
    ({"group_size": 32}, "group_size"),                                 # not a weight-only scheme
    ({"scheme": "int4_weight_only", "group_size": 24}, "group_size"),   # not a power of two
    ({"exclude": ["("]}, "exclude"), ({"percentile": 20.0}, "percentile"),
    ({"calibration_samples": 0}, "calibration_samples"), ({"scheme": "int2"}, "scheme"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as e:
        QuantizeConfig(model="m", **changes)
    assert e.value.field == field


def test_budgets_round_trip_and_validate():
    b = Budgets(max_size_mb=10, max_metric_drop=0.005)
    assert Budgets.from_dict(json.loads(b.to_json()), strict=True) == b
    with pytest.raises(ConfigError):
        Budgets(min_speedup=0)


def test_weight_quantization_error_bounds():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    for bits, gs in ((8, None), (8, 32), (4, 32), (4, 128)):
        q, scale = kernels.quantize_weight(w, bits, gs)
        err = (kernels.dequantize_weight(q, scale) - w).abs()
        step = scale.abs().repeat_interleave(128 // scale.shape[1], dim=1)
        if bits == 8:  # Q8_0: d = absmax / 127, levels -127..127, every weight within half a step
            assert bool((scale > 0).all()) and int(q.abs().max()) <= 127
            assert bool((err <= step / 2 + 1e-6).all()), (bits, gs)
            continue
        # Q4_0: the largest-magnitude weight of each group lands exactly on -8 (its scale has the opposite sign),
        # every weight on the -8 side of +7 is within half a step, and those beyond +7 steps clip to +7
        groups = q.reshape(64, scale.shape[1], -1)
        extreme = w.reshape_as(groups).abs().argmax(-1, keepdim=True)
        assert bool((groups.gather(-1, extreme) == -8).all()) and int(q.min()) == -8 and int(q.max()) <= 7
        negative = scale.repeat_interleave(128 // scale.shape[1], dim=1) < 0
        inside = torch.where(negative, w / step >= -7.5, w / step <= 7.5)
        assert bool((err[inside] <= step[inside] / 2 + 1e-6).all()) and bool((err <= step + 1e-6).all()), (bits, gs)
    q, _ = kernels.quantize_weight(w, 4, 32)
    packed = kernels.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2
    assert torch.equal(kernels.unpack_int4(packed, 64, 128), q)


@pytest.fixture
def bert_and_ids(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (4, 16), generator=g)
    return (lambda: AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()), ids


# Minimum SQNR (dB) of the final hidden states vs fp32 on the random tiny BERT. Measured (torch 2.13, x86):
# int8_dynamic 69.8, int8_static 69.7, int8_weight_only 77.8, int4_weight_only g32 53.5, fp16 63.4, bf16 45.4.
# Bounds sit ~8 dB below: a mis-scaled or mis-packed layer costs far more than that.
SQNR_MIN = {"int8_dynamic": 60, "int8_static": 60, "int8_weight_only": 70, "int4_weight_only": 45, "fp16": 55,
            "bf16": 38}


@pytest.mark.parametrize("scheme", list(SQNR_MIN))
def test_quantized_outputs_stay_close_to_fp32(bert_and_ids, scheme):
    make, ids = bert_and_ids
    model = make()
    with torch.inference_mode():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    ranges = calibrate(model, [{"input_ids": ids}]) if scheme == "int8_static" else None
    quantize_model_(model, QuantizeConfig(model="m", scheme=scheme), ranges=ranges)
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True).hidden_states[-1].float()
    assert sqnr_db(ref, out) >= SQNR_MIN[scheme]


def test_int4_linear_weights_are_at_most_a_sixth_of_fp32(tmp_path):
    from safetensors import safe_open

    from hf_optim.testing import tiny_bert

    model = tiny_bert(hidden_size=64, intermediate_size=128)
    names = [n for n, _ in target_linears(model)]
    fp32 = sum(model.get_submodule(n).weight.numel() * 4 for n in names)
    quantize_model_(model, QuantizeConfig(model="m", scheme="int4_weight_only", group_size=32))
    model.save_pretrained(tmp_path)
    stored = 0
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        for n in names:
            for key in ("weight", "weight_scale"):
                t = f.get_tensor(f"{n}.{key}")
                stored += t.numel() * t.element_size()
    assert stored / fp32 <= 1 / 6
    assert linear_weight_bytes(model)["linear_weight_bytes"] < fp32 / 5


def test_group_size_that_does_not_divide_raises_naming_layers():
    from hf_optim.testing import tiny_bert

    model = tiny_bert(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    with pytest.raises(ValueError, match=r"group_size=32 does not divide the input size 48 .*query.*16"):
        quantize_model_(model, QuantizeConfig(model="m", scheme="int4_weight_only", group_size=32))  # 48 % 32 != 0
    assert not any(type(m).__name__.endswith("WeightOnlyLinear") for m in model.modules())  # nothing half-done
    quantize_model_(model, QuantizeConfig(model="m", scheme="int4_weight_only", group_size=32,
                                          include=[r"output\.dense$"], exclude=[r"attention"]))
    cfg = model.config.quantization_config
    assert set(cfg.modules) == {"bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"}


def test_calibration_observers_and_static_needs_ranges(bert_and_ids):
    make, ids = bert_and_ids
    model = make()
    batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
    mm = calibrate(model, batches, "minmax")
    ma = calibrate(model, batches, "moving_average")
    pc = calibrate(model, batches, "percentile", percentile=99.0)
    assert len(mm) == 13
    for name, (lo, hi) in mm.items():
        assert lo <= ma[name][0] <= ma[name][1] <= hi
        assert lo <= pc[name][0] <= pc[name][1] <= hi
    with pytest.raises(ValueError, match="needs activation ranges"):
        quantize_model_(model, QuantizeConfig(model="m", scheme="int8_static"))
    with pytest.raises(ValueError, match="observer"):
        calibrate(model, batches, "entropy")


def test_qat_trains_through_fake_quant_and_converts_to_int8(bert_and_ids, tmp_path):
    from transformers import AutoModelForSequenceClassification

    make, ids = bert_and_ids
    model = make()
    params_before = {id(p) for p in model.parameters()}
    prepare_qat_(model)
    assert {id(p) for p in model.parameters()} == params_before  # the optimizer's parameters survive the swap
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, FakeQuantLinear)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.tensor([0, 1, 0, 1])
    model.train()
    losses = []
    for step in range(8):
        if step == 4:
            set_qat_observers_(model, False)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.inference_mode():
        fake = model(input_ids=ids).logits
    convert_qat_(model)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, Int8StaticLinear)
    with torch.inference_mode():
        real = model(input_ids=ids).logits
    assert sqnr_db(fake, real) > 25  # the int8 model computes what training simulated
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        assert torch.equal(real, again(input_ids=ids).logits)
    assert again.config.quantization_config.scheme == "int8_qat"


def test_quantize_dir_static_calibrates_on_task_and_reports(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    metrics = quantize_dir(tiny_bert_dir, tmp_path / "q", scheme="int8_static", calibration_samples=32,
                           batch_size=16, observer="moving_average")
    assert metrics["modules_quantized"] == 13 and metrics["calibration_samples"] == 32
    assert metrics["linear_weight_ratio"] < 0.4 and metrics["logits_sqnr_db"] > 20
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    prov = model.config.quantization_config.provenance["stage_config"]
    assert prov["observer"] == "moving_average"
    assert (tmp_path / "q" / "tokenizer.json").exists() or (tmp_path / "q" / "vocab.txt").exists()


def test_patterns_that_match_no_layer_are_refused_and_nothing_is_written(tiny_bert_dir, tmp_path):
    # once: an fp32 model tagged int8, reported as quantized
    with pytest.raises(ValueError, match=r"include=\['decoder'\] .* match none of the model's 14 Linear layers"):
        quantize_dir(tiny_bert_dir, tmp_path / "q", scheme="int8_dynamic", include=["decoder"])
    assert not (tmp_path / "q").exists()


def test_quantize_stage_runs_in_a_recipe(tiny_bert_dir, tmp_path):
    from hf_optim.recipe import Recipe
    from hf_optim.runner import run

    recipe = Recipe.from_dict({"name": "q", "stages": [
        {"name": "q8", "kind": "quantize", "model": str(tiny_bert_dir), "scheme": "int8_dynamic"},
        {"name": "q4", "kind": "quantize", "model": str(tiny_bert_dir), "scheme": "int4_weight_only",
         "group_size": 16}]})
    result = run(recipe, tmp_path / "run", progress=False)
    stages = {s["name"]: s for s in result.report["stages"]}
    assert stages["q8"]["metrics"]["modules_quantized"] == 13
    assert stages["q4"]["metrics"]["linear_weight_ratio"] < 0.25
    assert json.loads((tmp_path / "run" / "q4" / "config.json").read_text())["quantization_config"]["modules"]


ROWS = [
    {"candidate": "fp32", "metric_value": 0.80, "throughput": 100.0, "latency_p50_ms": 10.0, "size_mb": 90.0,
     "speedup": 1.0, "metric_drop": 0.0},
    {"candidate": "int8_dynamic", "metric_value": 0.797, "throughput": 270.0, "latency_p50_ms": 5.0, "size_mb": 30.0,
     "speedup": 2.7, "metric_drop": 0.003},
    {"candidate": "int8_static", "metric_value": 0.78, "throughput": 290.0, "latency_p50_ms": 5.5, "size_mb": 30.0,
     "speedup": 2.9, "metric_drop": 0.02},
    {"candidate": "int4_weight_only", "metric_value": 0.79, "throughput": 60.0, "latency_p50_ms": 14.0, "size_mb": 20.0,
     "speedup": 0.6, "metric_drop": 0.01},
    {"candidate": "bf16", "metric_value": 0.79, "throughput": 50.0, "latency_p50_ms": 14.0, "size_mb": 45.0,
     "speedup": 0.5, "metric_drop": 0.01},
]


def test_planner_choice_respects_budgets():
    assert choose_plan(ROWS, Budgets(max_metric_drop=0.005))["choice"] == "int8_dynamic"
    assert choose_plan(ROWS, Budgets(max_metric_drop=0.05))["choice"] == "int8_static"
    assert choose_plan(ROWS, Budgets(max_size_mb=25))["choice"] == "int4_weight_only"
    assert choose_plan(ROWS, Budgets(max_metric_drop=0.0), prefer="size")["choice"] == "fp32"
    none = choose_plan(ROWS, Budgets(max_size_mb=25, min_speedup=2.0))
    assert none["choice"] is None and not none["satisfied"] and "no candidate" in none["reason"]
    assert none["closest"] in {"int8_dynamic", "int8_static", "int4_weight_only"}
    assert set(pareto_front(ROWS)) == {"fp32", "int8_dynamic", "int8_static", "int4_weight_only"}


def test_planner_never_picks_a_scheme_slower_than_fp32_under_a_speed_budget():
    # int4 weight-only is the smallest and within both loose budgets, but measured slower than fp32
    rows = [dict(r, metric_value=0.8, metric_drop=0.0) for r in ROWS if r["candidate"] in ("fp32", "int4_weight_only")]
    assert choose_plan(rows, Budgets(max_size_mb=100), prefer="size")["choice"] == "int4_weight_only"
    for budgets in (Budgets(max_latency_ms=50), Budgets(min_speedup=0.5)):
        decision = choose_plan(rows, budgets, prefer="size")
        assert decision["choice"] == "fp32"
        assert any(k.startswith("slower_than_fp32") for k in decision["violations"]["int4_weight_only"])
    faster = [dict(r, latency_p50_ms=9.0, throughput=120.0) if r["candidate"] != "fp32" else r for r in rows]
    assert choose_plan(faster, Budgets(max_latency_ms=50, min_speedup=0.5), prefer="size")["choice"] == "int4_weight_only"


def test_plan_cli_measures_and_choice_respects_budgets(tiny_bert_dir, tmp_path, capsys):
    from hf_optim.cli import main

    out = tmp_path / "plan.json"
    code = main(["plan", str(tiny_bert_dir), "--task", "movie-sentiment", "--candidates", "int8_dynamic,int4_weight_only", "--max-samples", "16",
                 "--latency-samples", "2", "--throughput-samples", "16", "--no-memory", "--no-progress",
                 "--max-size-mb", "0.0001", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 3 and "no choice: no candidate satisfies the budgets" in text and "| int4_weight_only" in text
    plan = json.loads(out.read_text())
    assert plan["schema"] == 1 and plan["command"].startswith(f"hf-optim plan {tiny_bert_dir} --task movie-sentiment --candidates ")
    assert plan["args"]["max_size_mb"] == 0.0001 and plan["cpu"]["logical_cores"] >= 1  # the benchmark result schema
    rows = plan["rows"]
    assert [r["candidate"] for r in rows] == ["fp32", "int8_dynamic", "int4_weight_only"]
    assert rows[0]["metric_drop"] == 0 and rows[0]["speedup"] == 1.0
    assert rows[2]["size_mb"] < rows[1]["size_mb"] < rows[0]["size_mb"]
    assert plan["decision"]["closest"] == "int4_weight_only"  # the smallest misses the size budget least
    # on the same measured rows, a budget that one candidate meets picks a candidate that meets it
    budgets = Budgets(max_size_mb=rows[1]["size_mb"], max_metric_drop=0.5)
    decision = choose_plan(rows, budgets, prefer="size")
    assert decision["choice"] == "int4_weight_only"
    chosen = next(r for r in rows if r["candidate"] == decision["choice"])
    assert not budgets.violations(chosen)


def test_plan_config_round_trips_and_names_bad_fields():
    from hf_optim.quantize.planner import DEFAULT_CANDIDATES, PlanConfig, plan_precision

    cfg = PlanConfig(candidates=["int8_dynamic", "bf16"], budgets={"max_size_mb": 5}, prefer="size", rounds=1)
    assert cfg.budgets == Budgets(max_size_mb=5)
    assert PlanConfig.from_dict(json.loads(cfg.to_json()), strict=True) == cfg
    assert PlanConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), strict=True) == cfg
    assert "int8_qat" not in DEFAULT_CANDIDATES and "fp16" not in DEFAULT_CANDIDATES   # from the scheme table
    with pytest.raises(ConfigError, match="unknown candidate") as e:
        PlanConfig(candidates=["int3"])
    assert e.value.field == "candidates"
    with pytest.raises(ConfigError, match="unknown candidate"):
        with pytest.warns(FutureWarning, match="pass a PlanConfig"):
            plan_precision("unused", candidates=["int3"])                       # the keyword form still reads
    with pytest.raises(TypeError, match="set prefer on the config"):
        plan_precision("unused", cfg, prefer="size")


def test_the_keyword_form_of_quantize_model_still_works_with_a_future_warning():
    from hf_optim.testing import tiny_llama

    new = quantize_model_(tiny_llama(), QuantizeConfig(model="m", scheme="int4_weight_only", group_size=16,
                                                       symmetric=False, lm_head=True, embeddings="int8"))
    with pytest.warns(FutureWarning, match="pass a QuantizeConfig"):
        old = quantize_model_(tiny_llama(), "int4_weight_only", group_size=16, symmetric=False, lm_head=True,
                              embeddings="int8")
    assert old.config.quantization_config.to_dict() == new.config.quantization_config.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.raises(ConfigError) as e:                        # one validation: the config's
        quantize_model_(tiny_llama(), "int8_dynamic", symmetric=False)
    assert e.value.field == "symmetric"
    with pytest.raises(TypeError, match="set group_size on the config"):
        quantize_model_(tiny_llama(), QuantizeConfig(model="m", scheme="int4_weight_only"), group_size=16)


def test_the_scheme_table_is_the_one_list():
    from hf_optim.checkpoint import AT_LOAD_SCHEMES
    from hf_optim.quantize import modules
    from hf_optim.quantize.schemes import LINEAR_SCHEMES, SCHEMES

    import typing

    assert typing.get_args(typing.get_type_hints(QuantizeConfig)["scheme"]) == tuple(SCHEMES)
    assert {s for s in SCHEMES if SCHEMES[s].data is None} == set(AT_LOAD_SCHEMES)
    for name in LINEAR_SCHEMES:                                   # every Linear scheme names its module class
        assert getattr(modules, SCHEMES[name].module).__name__ == SCHEMES[name].module
    assert set(modules.SCHEMES) == {n for n in LINEAR_SCHEMES if n != "int8_qat"}   # QAT is stored as static
    assert QuantizeConfig(model="m", scheme="int4_weight_only").effective_group_size == 32
    with pytest.raises(ConfigError):
        QuantizeConfig(model="m", scheme="int3_weight_only")


def test_tied_lm_head_stays_float_even_when_included(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_optim.testing import tiny_llama

    model = tiny_llama(tie_word_embeddings=True)
    quantize_model_(model, QuantizeConfig(model="m", scheme="int8_dynamic", exclude=[]))
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 50, (2, 8))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        assert torch.equal(before, again(input_ids=ids).logits)
