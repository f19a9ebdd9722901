"""CLI: --help everywhere, one-line errors with exit 2 for bad input (never a library traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_optim.cli import build_parser, main

COMMANDS = ["run", "eval", "data", "recipe"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hf_optim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("cmd", [[], *[[c] for c in COMMANDS]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-optim")
    if not cmd:
        for c in COMMANDS:
            assert c in out


def test_parser_lists_all_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.multiprocess
def test_bad_recipe_is_one_line_error_exit_2(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\nstages:\n  - {name: a, kind: finetune, model: builtin:minilm-l6, epocs: 2}\n")
    proc = _cli("run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "unknown field(s) epocs" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # nothing written for an invalid recipe


@pytest.mark.parametrize("args, message", [
    (["run", "missing.yaml"], "recipe file 'missing.yaml' does not exist"),
    (["eval", "no-such-dir", "--task", "movie-sentiment"], "model directory 'no-such-dir' does not exist"),
    (["recipe", "check", "missing.yaml"], "does not exist"),
])
def test_missing_files_exit_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_wrong_task_and_wrong_model_kind(tmp_path, tiny_llama_dir, capsys):
    assert main(["eval", str(tmp_path), "--task", "imdb"]) == 2
    assert "not a built-in task" in capsys.readouterr().err
    assert main(["eval", str(tiny_llama_dir), "--task", "movie-sentiment", "--no-memory"]) == 2
    assert "not a sequence classifier" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_usage_errors_exit_2():
    proc = _cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_recipe_check_and_data_list(capsys):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "movie-sentiment.yaml"
    assert main(["recipe", "check", str(recipe)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "movie-sentiment" in out and "smollm2-135m" in out


def test_eval_cli_writes_json(tmp_path, tiny_bert_dir, capsys):
    import json

    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"good film {i},{i % 2}\n" for i in range(30)))
    out = tmp_path / "m.json"
    code = main(["eval", str(tiny_bert_dir), "--task", "toy", "--dataset", str(tmp_path / "d.csv"), "--no-memory",
                 "--latency-samples", "3", "--throughput-samples", "8", "--no-progress", "-o", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["task"] == "toy" and 0 <= data["accuracy"] <= 1 and "memory" not in data
