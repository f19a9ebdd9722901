"""Bad recipes: every one is refused by ``hf-optim recipe check`` (and so before ``run`` writes anything) with one
``error:`` line that names the file, the field and the fix."""

from __future__ import annotations

import pytest

from .conftest import CliCase, ids


def _eval_stage(**fields):
    return {"name": "e", "kind": "evaluate", "model": "bert", "task": {"name": "mine", "dataset": "data.csv"},
            **fields}


def _finetune(**fields):
    return {"name": "r", "stages": [{"name": "t", "kind": "finetune", "model": "bert",
                                     "task": {"name": "mine", "dataset": "data.csv"}, **fields}]}


def _with(lab, data):
    """The recipe next to a tiny model ``bert`` and a CSV ``data.csv``; ``data`` is a dict or the YAML text."""
    lab.model("bert")
    lab.csv()
    return ["recipe", "check", lab.recipe(data)]


def _raw(content):
    return lambda lab: ["recipe", "check", lab.write("r.yaml", content)]


def _recipe(data):
    return lambda lab: _with(lab, data)


def _stage(**fields):
    return _recipe({"name": "r", "stages": [_eval_stage(**fields)]})


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 20)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))

CASES = [
    # the file itself
    CliCase("not-utf8", _raw("name: r\ndescription: caf\u00e9\n".encode("latin-1")), ("not UTF-8", "save the recipe as UTF-8")),
    CliCase("binary-garbage", _raw(bytes(range(256)) * 4), ("r.yaml",)),
    CliCase("empty-file", _raw(""), ("r.yaml", "mapping")),
    CliCase("only-a-comment", _raw("# nothing here\n"), ("r.yaml", "mapping")),
    CliCase("top-level-list", _raw("- just\n- a list\n"), ("must be a mapping",)),
    CliCase("top-level-scalar", _raw("hello\n"), ("must be a mapping",)),
    CliCase("unclosed-bracket", _raw("name: [unclosed\n"), ("not valid YAML",)),
    CliCase("tab-indentation", _raw("name: r\nstages:\n\t- name: a\n"), ("not valid YAML",)),
    CliCase("python-tag", _raw("name: r\nstages: !!python/object/apply:os.system ['true']\n"), ("not valid YAML",)),
    CliCase("duplicate-key", _raw("name: r\nstages:\n  - name: a\n    kind: evaluate\n    kind: finetune\n"),
            ("duplicate key 'kind'", "line 5")),
    CliCase("duplicate-top-key", _raw("name: r\nname: s\nstages: []\n"), ("duplicate key 'name'",)),
    CliCase("alias-bomb-8-levels", _raw(BOMB), ("more than 100 aliases",)),
    CliCase("deep-nesting", _raw("name: r\nstages: " + "[" * 5000 + "]" * 5000 + "\n"), ("r.yaml",)),
    CliCase("non-string-key", _raw("name: r\n? [a, b]\n: x\nstages: []\n"), ("r.yaml",)),
    CliCase("missing-file", lambda lab: ["recipe", "check", lab.root / "nope.yaml"], ("does not exist",)),
    CliCase("a-directory", lambda lab: ["recipe", "check", lab.root], ("does not exist",)),
    # top-level fields
    CliCase("no-stages", _recipe({"name": "r"}), ("stages",)),
    CliCase("empty-stages", _recipe({"name": "r", "stages": []}), ("`stages` must be a non-empty list",)),
    CliCase("stages-a-mapping", _recipe({"name": "r", "stages": {"a": 1}}), ("`stages` must be a non-empty list",)),
    CliCase("stage-a-string", _recipe({"name": "r", "stages": ["evaluate"]}), ("stage #1",)),
    CliCase("typo-top-level", _recipe({"name": "r", "stagse": []}), ("unknown top-level field(s) stagse",)),
    CliCase("name-with-slash", _recipe({"name": "../evil", "stages": [_eval_stage()]}), ("`name` must be a simple name",)),
    CliCase("name-null", _recipe({"name": None, "stages": [_eval_stage()]}), ("`name`",)),
    CliCase("name-one-megabyte", _recipe({"name": "x " * 500_000, "stages": [_eval_stage()]}), ("characters)",)),
    CliCase("seed-a-string", _recipe({"name": "r", "seed": "x", "stages": [_eval_stage()]}), ("`seed` must be an integer",)),
    CliCase("output-dir-home", _recipe({"name": "r", "output_dir": "~", "stages": [_eval_stage()]}), ("output_dir",)),
    CliCase("output-dir-absolute", _recipe({"name": "r", "output_dir": "/etc", "stages": [_eval_stage()]}), ("output_dir",)),
    CliCase("output-dir-parent", _recipe({"name": "r", "output_dir": "../x", "stages": [_eval_stage()]}), ("output_dir",)),
    CliCase("report-negative-price", _recipe({"name": "r", "report": {"price_per_hour": -1}, "stages": [_eval_stage()]}),
            ("price_per_hour",)),
    CliCase("report-typo", _recipe({"name": "r", "report": {"prise_per_hour": 1}, "stages": [_eval_stage()]}),
            ("prise_per_hour",)),
    # stages
    CliCase("unknown-kind", _recipe({"name": "r", "stages": [{"name": "a", "kind": "frobnicate", "model": "bert"}]}),
            ("unknown kind 'frobnicate'", "allowed kinds")),
    CliCase("kind-a-list", _recipe({"name": "r", "stages": [{"name": "a", "kind": ["evaluate"], "model": "bert"}]}),
            ("stage 'a'", "kind")),
    CliCase("kind-one-megabyte", _recipe({"name": "r", "stages": [{"name": "a", "kind": "x" * 1_000_000}]}),
            ("characters)",)),
    CliCase("unknown-field", _stage(bacth_size=8), ("unknown field(s) bacth_size", "allowed fields")),
    CliCase("duplicate-stage-names", _recipe({"name": "r", "stages": [_eval_stage(), _eval_stage()]}),
            ("the name is used twice",)),
    CliCase("model-missing", _stage(model="missing/model-dir"), ("is not an earlier stage",)),
    CliCase("model-a-later-stage", _recipe({"name": "r", "stages": [_eval_stage(model="f"), {**_eval_stage(), "name": "f"}]}),
            ("refers to a later stage",)),
    CliCase("model-unknown-builtin", _stage(model="builtin:bert-huge"), ("is not a builtin model",)),
    CliCase("missing-dataset-file", _stage(task={"name": "mine", "dataset": "missing.csv"}),
            ("task.dataset", "does not exist", "relative to the recipe file")),
    CliCase("unknown-builtin-task", _stage(task="imdb"), ("not a built-in task", "movie-sentiment")),
    CliCase("split-dev", _stage(split="dev"), ("split = 'dev'", "'test' | 'validation' | 'train'")),
    # numbers
    CliCase("batch-size-1e20", _stage(batch_size=1e20), ("batch_size", "expected int")),
    CliCase("batch-size-zero", _stage(batch_size=0), ("batch_size = 0: must be >= 1",)),
    CliCase("batch-size-negative", _stage(batch_size=-8), ("batch_size",)),
    CliCase("batch-size-bool", _stage(batch_size=True), ("batch_size",)),
    CliCase("batch-size-10-to-400", _recipe("name: r\nstages:\n  - {name: e, kind: evaluate, model: bert, batch_size: 1"
                                         + "0" * 400 + "}\n"), ("batch_size",)),
    CliCase("batch-size-5000-digits", _recipe("name: r\nstages:\n  - {name: e, kind: evaluate, model: bert, batch_size: "
                                              + "7" * 5000 + "}\n"), ("not valid YAML", "digits")),
    CliCase("epochs-10-to-400", _recipe("name: r\nstages:\n  - {name: t, kind: finetune, model: bert, epochs: 1"
                                        + "0" * 400 + "}\n"), ("epochs", "expected float")),
    CliCase("max-samples-huge-string", _stage(max_samples="9" * 5000), ("max_samples", "characters)")),
    CliCase("epochs-inf", _recipe(_finetune(epochs=float("inf"))), ("epochs", "expected float")),
    CliCase("epochs-nan", _recipe(_finetune(epochs=float("nan"))), ("epochs", "expected float")),
    CliCase("epochs-three", _recipe(_finetune(epochs="three")), ("epochs = 'three'", "expected float")),
    CliCase("learning-rate-negative", _recipe(_finetune(learning_rate=-1.0)), ("learning_rate",)),
    CliCase("max-length-beyond-positions", _stage(max_length=100_000), ("max_length", "128")),
    CliCase("latency-samples-negative", _stage(latency_samples=-1), ("latency_samples",)),
]


@pytest.mark.parametrize("case", ids(CASES))
def test_bad_recipe_is_one_clear_error(case, lab, capsys):
    case.replay(lab, capsys)


def test_a_bad_recipe_writes_nothing_when_run(lab, capsys, tmp_path):
    """``run`` validates the whole recipe before it creates the output folder."""
    from .conftest import cli, one_error

    path = _with(lab, {"name": "r", "stages": [_eval_stage(), _eval_stage(name="f", batch_size=1e20)]})[-1]
    rc, _, err = cli(capsys, ["run", path, "-o", tmp_path / "out"])
    assert rc == 2 and "batch_size" in one_error(err, ("batch_size",))
    assert not (tmp_path / "out").exists()
