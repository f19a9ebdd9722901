"""The command line's options come from the configs; every sub-command reports its own usage and takes -q;
``hf-optim quantize`` writes what ``quantize_model_`` makes; model arguments may be Hub ids (offline here)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from hf_optim.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def _configs():
    from hf_optim.data.tasks import TaskSpec
    from hf_optim.evaluation.config import EvalConfig
    from hf_optim.export.config import ExportConfig
    from hf_optim.quantize import QuantizeConfig
    from hf_optim.quantize.planner import Budgets, PlanConfig
    from hf_optim.report.card_meta import CardConfig

    return {"eval": [EvalConfig, TaskSpec], "plan": [PlanConfig, Budgets], "export": [ExportConfig],
            "quantize": [QuantizeConfig], "card": [CardConfig], "push": [CardConfig]}


def _field_default(field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


@pytest.mark.parametrize("command", ["eval", "plan", "export", "quantize", "card", "push"])
def test_every_option_default_is_its_config_default(command):
    parser = _subparsers()[command]
    checked = 0
    for cls in _configs()[command]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for action in parser._actions:
            if action.dest in fields and action.dest not in ("task", "model"):
                assert action.default == _field_default(fields[action.dest]), (command, action.dest)
                checked += 1
    assert checked >= 3
    # what a config offers as choices is what the option offers
    if command == "quantize":
        from hf_optim.quantize.schemes import SCHEME_NAMES

        scheme = next(a for a in parser._actions if a.dest == "scheme")
        assert tuple(scheme.choices) == SCHEME_NAMES


def test_inverted_switches_map_to_the_config_field():
    args = build_parser().parse_args(["eval", "m", "--no-memory"])
    assert args.measure_memory is False
    args = build_parser().parse_args(["export", "m", "-o", "o", "--asymmetric", "--format", "gguf", "--gguf-type",
                                      "q4_1"])
    assert args.symmetric is False and args.format == "gguf" and args.gguf_type == "q4_1"
    args = build_parser().parse_args(["plan", "m", "--candidates", "fp32,int8_dynamic", "--keep-dir", "k"])
    assert args.candidates == ("fp32", "int8_dynamic") and args.work_dir == "k"


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_unknown_option_prints_the_sub_commands_usage_and_exit_2(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: hf-optim {command} ") and f"hf-optim {command}: error: " in err


def test_an_unknown_option_is_named_with_the_sub_commands_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "recipe.yaml", "--bogus", "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: hf-optim run ")
    assert err.rstrip().endswith("hf-optim run: error: unrecognized arguments: --bogus")


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_quiet_is_an_option_of_every_sub_command(command):
    options = {s for a in _subparsers()[command]._actions for s in a.option_strings}
    assert {"-q", "--quiet", "-v", "--verbose"} <= options


QUANTIZE = ["--scheme", "int4_weight_only", "--group-size", "16", "--asymmetric", "--no-progress"]


def _state(path):
    import torch
    from transformers import AutoModelForCausalLM

    import hf_optim  # noqa: F401 - restores the hf_optim checkpoint format

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.arange(2, 14).reshape(2, 6)
    with torch.no_grad():
        return model.state_dict(), model(ids).logits


def test_quantize_writes_what_quantize_model_makes(tmp_path, tiny_llama_dir, capsys):
    from transformers import AutoModelForCausalLM

    from hf_optim.integrity import DIGESTS, weight_digests
    from hf_optim.quantize import QuantizeConfig, quantize_model_

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "-o", str(out), *QUANTIZE]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (int4_weight_only)")
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    quantize_model_(reference, QuantizeConfig(model=str(tiny_llama_dir), scheme="int4_weight_only", group_size=16,
                                              symmetric=False))
    reference.save_pretrained(tmp_path / "ref")
    (got, got_logits), (want, want_logits) = _state(out), _state(tmp_path / "ref")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert (got_logits == want_logits).all()
    record = json.loads((out / "hf_optim_quantize.json").read_text())
    assert record["config"]["scheme"] == "int4_weight_only" and record[DIGESTS] == weight_digests(out)
    assert not list(tmp_path.glob(".quantize-work-*"))


def test_quantize_refuses_a_non_empty_output_unless_overwrite(tmp_path, tiny_bert_dir, capsys):
    from hf_optim.task_record import record_task, recorded_task

    record_task(tiny_bert_dir, "movie-sentiment")
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["quantize", str(tiny_bert_dir), "-o", str(out), "--scheme", "int8_dynamic", "-q"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").is_file()
    assert main(["quantize", str(tiny_bert_dir), "-o", str(out), "--scheme", "int8_dynamic", "-q", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert recorded_task(out) == "movie-sentiment"  # the source's task, so eval / export default to it


def _fake_cache(tmp_path, monkeypatch, model_dir=None):
    """A Hugging Face cache holding ``org/tiny`` (a copy of ``model_dir``), offline."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    if model_dir is not None:
        repo = cache / "models--org--tiny"
        shutil.copytree(model_dir, repo / "snapshots" / ("0" * 40))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("command", [["eval"], ["plan"], ["export", "-o", "{out}"], ["quantize", "-o", "{out}"]])
def test_a_hub_id_missing_from_the_cache_offline_is_one_error_naming_hf_hub_offline(command, tmp_path, monkeypatch,
                                                                                     capsys):
    _fake_cache(tmp_path, monkeypatch)
    argv = [command[0], "org/not-cached", *[a.format(out=tmp_path / "out") for a in command[1:]]]
    assert main(argv) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: 'org/not-cached'") and "HF_HUB_OFFLINE" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_cached_hub_id_is_used_offline(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    from hf_optim.cli_options import resolve_model

    cache = _fake_cache(tmp_path, monkeypatch, tiny_llama_dir)
    assert resolve_model("org/tiny") == str(cache / "models--org--tiny" / "snapshots" / ("0" * 40))
    out = tmp_path / "q"
    assert main(["quantize", "org/tiny", "-o", str(out), *QUANTIZE]) == 0
    assert (out / "model.safetensors").is_file()


def test_quantize_gptq_options_reach_the_config_and_the_head_is_solved(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from hf_optim.quantize.modules import Int4WeightOnlyLinear

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "-o", str(out), "--scheme", "int4_weight_only", "--group-size", "16",
                 "--method", "gptq", "--gptq-clip-search", "--lm-head", "--calibration-samples", "4",
                 "--max-length", "32", "-q"]) == 0
    record = json.loads((out / "hf_optim_quantize.json").read_text())
    assert record["config"]["gptq_clip_search"] is True and record["config"]["lm_head"] is True
    assert record["metrics"]["clip_search"] is True
    assert record["metrics"]["modules_gptq"] == 15 and record["metrics"]["modules_rtn"] == 0  # 14 Linears + the head
    head = AutoModelForCausalLM.from_pretrained(out).get_output_embeddings()
    assert isinstance(head, Int4WeightOnlyLinear)
