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
    err = capsys.readouterr().err
    assert "is a causal LM and 'movie-sentiment' a classification task" in err and "--task bbc-news" in err


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


FAST_EVAL = ["--no-memory", "--latency-samples", "3", "--throughput-samples", "8"]


def _toy_task(tmp_path, name="toy-x"):
    """A labelled CSV and the task mapping a model trained on it records."""
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},{i % 2}\n" for i in range(30)))
    return {"name": name, "dataset": str(data)}


def test_eval_defaults_to_the_task_the_model_records(tmp_path, tiny_bert_dir, capsys):
    import json

    from hf_optim.task_record import record_task

    record_task(tiny_bert_dir, _toy_task(tmp_path))
    assert main(["eval", str(tiny_bert_dir), *FAST_EVAL, "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "toy-x" and metrics["examples"] > 0 and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("cmd, options", [("eval", ["--no-memory"]), ("plan", ["--no-memory"]),
                                          ("export", ["-o", "{out}"]), ("export", ["--compile", "export", "-o", "{out}"])])
def test_classifier_without_recorded_task_needs_task(cmd, options, tmp_path, tiny_bert_dir, capsys):
    assert main([cmd, str(tiny_bert_dir), *[a.format(out=tmp_path / "out") for a in options]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not record the task it was trained for" in err
    assert "pass --task (built-in: bbc-topic, movie-sentiment)" in err
    assert not (tmp_path / "out").exists()  # nothing exported on a guess


def test_task_defaults_by_model_kind(tmp_path, tiny_bert_dir, tiny_llama_dir):
    """--task wins; else the recorded task; else a causal LM gets its text corpus (eval, export), a classifier
    nothing (above); plan only measures classifiers, so a causal LM there needs --task too."""
    from hf_optim.cli import _model_task
    from hf_optim.errors import HfOptimError
    from hf_optim.task_record import record_task

    parser = build_parser()

    def task(*argv):
        return _model_task(parser.parse_args(list(argv)), texts=argv[0] != "plan")

    record_task(tiny_bert_dir, "bbc-topic")
    for cmd in (["eval"], ["plan"], ["export", "-o", "x"]):
        assert task(*cmd[:1], str(tiny_bert_dir), *cmd[1:]) == "bbc-topic"
        assert task(*cmd[:1], str(tiny_bert_dir), *cmd[1:], "--task", "movie-sentiment") == "movie-sentiment"
    assert task("eval", str(tiny_llama_dir)) == "bbc-news"
    assert task("export", str(tiny_llama_dir), "-o", "x") == "bbc-news"
    with pytest.raises(HfOptimError, match="pass --task"):
        task("plan", str(tiny_llama_dir))


def test_quiet_leaves_only_the_result(tmp_path, tiny_bert_dir):
    """-q (before or after the command): stdout has the result, stderr nothing; without it the recorded task
    is logged and the evaluation shows a progress bar."""
    import json

    from hf_optim.task_record import record_task

    record_task(tiny_bert_dir, _toy_task(tmp_path))
    loud = _cli("eval", str(tiny_bert_dir), *FAST_EVAL)
    assert loud.returncode == 0, loud.stderr
    assert "INFO task: toy-x (recorded in" in loud.stderr and "evaluate toy-x/test" in loud.stderr and "100%" in loud.stderr
    for argv in (["-q", "eval", str(tiny_bert_dir), *FAST_EVAL], ["eval", str(tiny_bert_dir), *FAST_EVAL, "--quiet"]):
        quiet = _cli(*argv)
        assert quiet.returncode == 0 and quiet.stderr == ""
        assert json.loads(quiet.stdout)["task"] == "toy-x"


def test_quiet_still_prints_errors(tmp_path):
    proc = _cli("eval", str(tmp_path / "missing"), "-q")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: model directory '{tmp_path / 'missing'}' does not exist"


def test_quiet_export_keeps_the_recorded_task(tmp_path, tiny_bert_dir):
    """Export validates on the recorded task and the exported directory records it too; -q silences
    transformers' and ONNX Runtime's lines and the progress bars, not the result."""
    from hf_optim.task_record import record_task, recorded_task

    task = _toy_task(tmp_path)
    record_task(tiny_bert_dir, task)
    out = tmp_path / "onnx"
    proc = _cli("export", str(tiny_bert_dir), "-o", str(out), "--validation-samples", "16", "--quantization", "static",
                "--calibration-samples", "16", "-q")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"wrote {out} (") and "validation accuracy" in proc.stdout
    assert recorded_task(out) == task


def test_eval_on_a_file_or_a_folder_without_tokenizer_is_one_clear_error(tmp_path, capsys):
    from hf_optim.testing import tiny_bert

    model_dir = tmp_path / "no-tokenizer"
    tiny_bert().save_pretrained(model_dir)
    assert main(["eval", str(model_dir / "config.json"), "--task", "movie-sentiment"]) == 2
    assert f"is a file; pass the model directory that holds it ('{model_dir}')" in capsys.readouterr().err
    # transformers 4.57 raises a TypeError there; 5.x builds a 5-token tokenizer that maps every word to [UNK]
    assert main(["eval", str(model_dir), "--task", "movie-sentiment", "--no-memory", "--max-samples", "20"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no usable tokenizer" in errors[0] and "tokenizer.save_pretrained(DIR)" in errors[0]
