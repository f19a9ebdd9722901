"""Causal-LM evaluation: sliding-window perplexity, generation speed, the evaluate stage on a tiny Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from hf_optim.errors import ConfigError
from hf_optim.evaluation import EvalConfig, evaluate_model
from hf_optim.evaluation.lm import generation_speed, perplexity, text_token_ids


@pytest.fixture
def llama():
    from hf_optim.testing import tiny_llama

    return tiny_llama()


def _ids(n=100, seed=0):
    return torch.randint(0, 60, (1, n), generator=torch.Generator().manual_seed(seed))


def test_one_window_perplexity_is_the_models_own_loss(llama):
    ids = _ids(64)
    with torch.inference_mode():
        loss = float(llama(input_ids=ids, labels=ids).loss)
    got = perplexity(llama, ids, context=64, stride=64)
    assert got["tokens_scored"] == 63 and got["windows"] == 1
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


@pytest.mark.parametrize("context, stride, windows", [(32, 16, 6), (40, 8, 9), (100, 50, 1), (64, 63, 2)])
def test_overlapping_windows_score_every_token_once(llama, context, stride, windows):
    got = perplexity(llama, _ids(100), context=context, stride=stride)
    assert got["tokens_scored"] == 99 and got["windows"] == windows


def test_non_overlapping_windows_are_independent_chunks(llama):
    ids = _ids(96)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, 96, 32):
            chunk = ids[:, begin:begin + 32]
            logp = torch.log_softmax(llama(input_ids=chunk).logits[0, :-1], -1)
            nll -= float(logp.gather(-1, chunk[0, 1:, None]).sum())
            count += 31
    got = perplexity(llama, ids, context=32, stride=32)
    assert got["tokens_scored"] == count == 93  # a chunk's first token has no history to be predicted from
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    with pytest.raises(ValueError, match="stride"):
        perplexity(llama, ids, context=16, stride=32)


def test_generation_speed_reports_ttft_and_decode_rate(llama):
    got = generation_speed(llama, _ids(64), batch_sizes=(1, 2), prompt_tokens=8, new_tokens=4, repeats=1)
    for b in (1, 2):
        row = got[f"batch_{b}"]
        assert row["batch_size"] == b and row["ttft_ms"] > 0 and row["decode_tokens_per_s"] > 0
        # both are rounded to 2 decimals: compare to that precision
        assert row["decode_ms_per_token"] == pytest.approx(b * 1e3 / row["decode_tokens_per_s"], rel=0.01, abs=0.011)
    with pytest.raises(ValueError, match="need 128 tokens"):
        generation_speed(llama, _ids(64), batch_sizes=(16,), prompt_tokens=8, new_tokens=4)


def test_bbc_slice_is_fixed(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    a, b = text_token_ids(tok, max_tokens=300), text_token_ids(tok, max_tokens=500)
    assert a.shape == (1, 300) and torch.equal(a, b[:, :300])


@pytest.mark.multiprocess
def test_evaluate_model_measures_a_causal_lm(tiny_llama_dir):
    cfg = EvalConfig(model=str(tiny_llama_dir), task="bbc-news", lm_tokens=256, context=64, stride=32,
                     prompt_tokens=8, new_tokens=4, generate_batch_sizes=(1, 8), generate_repeats=1, threads=1)
    m = evaluate_model(tiny_llama_dir, cfg)
    assert m["metric"] == "perplexity" and 1 < m["perplexity"] < 1e4
    assert m["perplexity_setup"]["tokens_scored"] == 255 and m["perplexity_setup"]["windows"] == 7
    assert set(m["generation"]) >= {"batch_1", "batch_8"}
    assert m["memory"]["peak_rss_mb"] > m["memory"]["model_peak_mb"] > 0
    assert m["size"]["weights_mb"] > 0


CONFIGS = [EvalConfig(model="m", task="bbc-news", lm_tokens=8192, context=1024, stride=512,
                      generate_batch_sizes=(1, 4)),
           EvalConfig(model="m", task_type="causal-lm")]


@pytest.mark.parametrize("config", CONFIGS)
def test_lm_eval_config_round_trips(config):
    assert EvalConfig.from_dict(json.loads(config.to_json()), strict=True) == config
    assert EvalConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())), strict=True) == config


@pytest.mark.parametrize("changes, field", [({"stride": 600}, "stride"), ({"new_tokens": 1}, "new_tokens"),
                                            ({"generate_batch_sizes": [0]}, "generate_batch_sizes"),
                                            ({"task": "bbc-news", "task_type": "sequence-classification"}, "task")])
def test_bad_lm_eval_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as e:
        EvalConfig(model="m", **changes)
    assert e.value.field == field


def test_evaluate_lm_takes_the_eval_config_and_still_reads_the_keyword_form(tiny_llama_dir):
    from hf_optim.evaluation.lm import evaluate_lm

    cfg = EvalConfig(model=str(tiny_llama_dir), task="bbc-news", lm_tokens=128, context=64, stride=32,
                     generate_batch_sizes=(), measure_memory=False, threads=1)
    new = evaluate_lm(tiny_llama_dir, cfg)
    with pytest.warns(FutureWarning, match="pass an EvalConfig"):
        old = evaluate_lm(tiny_llama_dir, corpus="bbc-news", max_tokens=128, context=64, stride=32, batch_sizes=(),
                          measure_memory=False, threads=1)
    assert old["perplexity"] == new["perplexity"] and old["perplexity_setup"] == new["perplexity_setup"]
    assert "generation" not in new and "memory" not in new
    with pytest.raises(TypeError, match="set context on the config"):
        evaluate_lm(tiny_llama_dir, cfg, context=32)
