"""`hf-optim export` end to end on a tiny model; the default recipe still parses with the export stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_optim.cli import main


def test_cli_export_and_refuses_non_empty_output(bert_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(bert_dir), "-o", str(out), "--task", "movie-sentiment", "--backend", "torch",
                 "--validation-samples", "16"]) == 0
    assert (out / "model.onnx").is_file() and "validation accuracy" in capsys.readouterr().out
    assert main(["export", str(bert_dir), "-o", str(out), "--task", "movie-sentiment", "--backend", "torch"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_default_recipe_has_export_stages():
    from hf_optim.recipe import Recipe

    recipe = Recipe.from_yaml(Path(__file__).resolve().parents[2] / "recipes" / "movie-sentiment.yaml")
    kinds = {s.name: s.config.kind for s in recipe.stages}
    assert kinds["export"] == "export" and kinds["eval-export"] == "evaluate"


def test_cli_export_int4_embeddings_and_split_setting(bert_dir, tmp_path, capsys):
    import json

    out = tmp_path / "emb4"
    assert main(["export", str(bert_dir), "-o", str(out), "--task", "movie-sentiment", "--backend", "torch",
                 "--validation-samples", "16", "--embeddings", "int4", "--split-skip-layernorm", "off"]) == 0
    record = json.loads((out / "hf_optim_export.json").read_text())
    assert record["config"]["embeddings"] == "int4" and record["ops"]["GatherBlockQuantized"] == 1
    assert record["config"]["split_skip_layernorm"] == "off" and record["skip_layernorm"]["decision"] == "off"
    assert record["ops"]["SkipLayerNormalization"] == 4


def test_cli_export_defaults_are_the_config_defaults():
    from hf_optim.cli import build_parser
    from hf_optim.export import ExportConfig

    args = build_parser().parse_args(["export", "m", "-o", "o"])
    assert args.split_skip_layernorm == ExportConfig(model="m").split_skip_layernorm


@pytest.mark.multiprocess
def test_sigterm_during_export_leaves_no_scratch_and_no_output(bert_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-P", "-m", "hf_optim.cli", "export", str(bert_dir), "-o", str(out),
                             "--task", "movie-sentiment", "--backend", "torch", "--validation-samples", "64"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".export-work-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    assert not list(tmp_path.glob(".export-work-*")) and not out.exists()


def test_cli_export_portable_formats(tiny_llama_dir, tmp_path, capsys):
    """--format gguf / compressed-tensors write the checkpoint and its export record (per-tensor error)."""
    import json

    pytest.importorskip("gguf")
    quantized = tmp_path / "int4"
    assert main(["quantize", str(tiny_llama_dir), "-o", str(quantized), "--scheme", "int4_weight_only",
                 "--group-size", "32", "-q"]) == 0
    capsys.readouterr()
    gguf_out = tmp_path / "gguf"
    assert main(["export", str(quantized), "-o", str(gguf_out), "--format", "gguf", "--gguf-type", "auto", "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {gguf_out} (gguf auto): ")
    record = json.loads((gguf_out / "hf_optim_export.json").read_text())
    assert (gguf_out / record["file_name"]).is_file() and record["export_format"] == "gguf"
    tensors = record["report"]["tensors"]
    assert tensors["blk.0.attn_q.weight"]["type"] == "Q4_0" and tensors["blk.0.attn_q.weight"]["from_grid"]
    assert record["max_abs_error"] == max(t["max_abs_error"] for t in tensors.values())
    ct_out = tmp_path / "ct"
    assert main(["export", str(quantized), "-o", str(ct_out), "--format", "compressed-tensors", "-q"]) == 0
    config = json.loads((ct_out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert json.loads((ct_out / "hf_optim_export.json").read_text())["report"]["tensors"]
    assert not list(tmp_path.glob(".export-work-*"))


def test_export_stage_format_gguf(tiny_llama_dir, tmp_path, capsys):
    import json

    pytest.importorskip("gguf")
    from hf_optim.export import ExportConfig

    assert "format" not in ExportConfig(model="m").fingerprint_dict()  # fingerprints of existing runs unchanged
    with pytest.raises(ValueError, match="gguf_type"):
        ExportConfig(model="m", gguf_type="q4_0")  # applies to format: gguf only
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstages:\n  - {{name: gguf, kind: export, model: {tiny_llama_dir}, task: bbc-news, "
                      "format: gguf, gguf_type: f32}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "run"), "-q"]) == 0
    stage = tmp_path / "run" / "gguf"
    record = json.loads((stage / "hf_optim_export.json").read_text())
    assert (stage / "model.gguf").is_file() and record["written"] == "gguf f32" and record["max_abs_error"] == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"][0]["metrics"]["export_format"] == "gguf"
