"""Wrong paths and options on the command line: one ``error:`` line and exit 2, nothing written."""

from __future__ import annotations

import pytest

from .conftest import CliCase, ids

FAST = ["--no-memory", "--max-samples", "8", "--latency-samples", "2", "--throughput-samples", "4", "-q"]


def _eval(**kw):
    def build(lab):
        model = lab.model("bert")
        return ["eval", model, "--dataset", lab.csv(), *FAST, *[x for k, v in kw.items() for x in (f"--{k}", v)]]
    return build


def _run_into(make_output):
    def build(lab):
        lab.model("bert")
        recipe = lab.recipe({"name": "r", "stages": [{"name": "q", "kind": "quantize", "model": "bert",
                                                      "scheme": "int8_dynamic"}]})
        return ["run", recipe, "-o", make_output(lab), "-q"]
    return build


def _not_a_run(lab):
    for name in ("q", ".tmp-x", "recipe.yaml", "notes.txt"):
        lab.write(f"mine/{name}" if "." in name else f"mine/{name}/keep.txt", "my data")
    return lab.root / "mine"


def _export(output, *extra):
    return lambda lab: ["export", lab.model("bert"), "-o", output(lab), "--task", "movie-sentiment", *extra, "-q"]


CASES = [
    CliCase("eval-on-a-file", lambda lab: ["eval", lab.model("bert") / "config.json", "--task", "movie-sentiment"],
            ("is a file", "pass the model directory")),
    CliCase("eval-on-a-missing-dir", lambda lab: ["eval", lab.root / "nope", "--task", "movie-sentiment"], ("does not exist",)),
    CliCase("eval-on-an-empty-dir", lambda lab: ["eval", lab.write("empty/.keep", "").parent, "--dataset", lab.csv(), *FAST],
            ("not a model directory",)),
    CliCase("eval-without-tokenizer", lambda lab: ["eval", _strip_tokenizer(lab.model("bert")), "--dataset", lab.csv(),
                                                    *FAST], ("no usable tokenizer", "tokenizer.save_pretrained(DIR)")),
    CliCase("eval-classifier-without-task", lambda lab: ["eval", lab.model("bert")], ("pass --task",)),
    CliCase("eval-causal-lm-on-classification", lambda lab: ["eval", lab.model("llama"), "--task", "movie-sentiment",
                                                              *FAST], ("is a causal LM", "bbc-news")),
    CliCase("eval-output-a-directory", _eval(output="."), ("--output",), untouched=True),
    CliCase("eval-output-missing-parent", lambda lab: _eval(output=lab.root / "no" / "such" / "m.json")(lab),
            ("--output",)),
    CliCase("eval-max-samples-zero", _eval(**{"max-samples": 0}), ("max_samples",)),
    CliCase("eval-latency-samples-negative", _eval(**{"latency-samples": -1}), ("latency_samples",)),
    CliCase("eval-max-samples-not-a-number", _eval(**{"max-samples": "lots"}), ("invalid int value",)),
    CliCase("plan-on-a-file", lambda lab: ["plan", lab.model("bert") / "config.json", "--task", "movie-sentiment"],
            ("is a file",)),
    CliCase("export-on-a-file", lambda lab: ["export", lab.model("bert") / "config.json", "-o", lab.root / "o"],
            ("is a file",)),
    CliCase("export-output-not-empty", _export(lambda lab: lab.write("o/keep.txt", "mine").parent), ("o",)),
    CliCase("export-output-a-file", _export(lambda lab: lab.write("o.txt", "mine")), ("o.txt",)),
    CliCase("export-max-length-beyond-positions", _export(lambda lab: lab.root / "o", "--max-length", "100000"),
            ("--max-length 100000", "128 positions")),
    CliCase("export-validation-samples-zero", _export(lambda lab: lab.root / "o", "--validation-samples", "0"),
            ("validation_samples",)),
    CliCase("run-output-a-file", _run_into(lambda lab: lab.write("out.txt", "mine")), ("is a file", "--output")),
    CliCase("run-output-not-a-run", _run_into(_not_a_run), ("is not an hf_optim run", "choose another --output")),
    CliCase("run-missing-recipe", lambda lab: ["run", lab.root / "nope.yaml", "-o", lab.root / "out"], ("does not exist",)),
    CliCase("verify-a-file", lambda lab: ["verify", lab.write("f.txt", "x")], ("not a directory",)),
    CliCase("verify-not-a-run", lambda lab: ["verify", lab.model("bert")], ("holds no hf_optim stage output",)),
    CliCase("report-missing-run", lambda lab: ["report", lab.root / "nope"], ("nope",)),
    CliCase("report-on-a-file", lambda lab: ["report", lab.write("report.json", "{}")], ("report.json",)),
    CliCase("report-garbage-json", lambda lab: ["report", lab.write("run/report.json", "{garbage").parent], ("report.json",)),
    CliCase("compare-missing-run", lambda lab: ["compare", lab.root / "a", lab.root / "b"], ("a",)),
    CliCase("card-on-a-folder-without-model", lambda lab: ["card", lab.write("notes/a.txt", "x").parent, "--stdout"],
            ("no readable hf_optim_stage.json",)),
    CliCase("unknown-command", lambda lab: ["frobnicate"], ("invalid choice",)),
]


def _strip_tokenizer(model):
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    return model


@pytest.mark.parametrize("case", ids(CASES))
def test_a_wrong_path_or_option_is_one_clear_error(case, lab, capsys, monkeypatch):
    monkeypatch.chdir(lab.root)
    case.replay(lab, capsys)
