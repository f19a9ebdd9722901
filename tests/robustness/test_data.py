"""Bad user data given to ``hf-optim eval --dataset``: one ``error:`` line naming the file, split, row and column
(or what to change), and the data files are left as they were."""

from __future__ import annotations

import pytest

from .conftest import ROWS, CliCase, cli, ids

FAST = ["--no-memory", "--max-samples", "8", "--latency-samples", "2", "--throughput-samples", "4", "-q"]


def _eval(files: dict, dataset: str = "data", **columns):
    """Write ``files`` (name -> text or bytes) under ``dataset`` (a folder, or one file when a single name is the
    dataset itself) and evaluate the tiny BERT on it."""
    def build(lab):
        model = lab.model("bert")
        for name, content in files.items():
            lab.write(name, content)
        extra = [x for k, v in columns.items() for x in (f"--{k.replace('_', '-')}", v)]
        return ["eval", model, "--dataset", lab.root / dataset, *extra, *FAST]
    return build


def _csv(text: str):
    return _eval({"d.csv": text}, "d.csv")


GOOD = "text,label\n" + ROWS
INTS = "text,label\n" + "".join(f"good fun film {i},1\nbad dull plot {i},0\n" for i in range(12))
CASES = [
    CliCase("header-only-csv", _csv("text,label\n"), ("d.csv", "no data rows")),
    CliCase("empty-csv", _csv(""), ("d.csv",)),
    CliCase("empty-text-cell", _eval({"data/train.csv": "text,label\na,0\n,1\nc,0\nd,1\ne,0\n", "data/test.csv": INTS}),
            ("train row 2", "empty 'text' cell")),
    CliCase("empty-label-cell", _eval({"data/train.csv": "text,label\na,0\nb,\nc,1\nd,1\ne,0\n", "data/test.csv": INTS}),
            ("train row 2", "empty 'label' cell")),
    CliCase("mixed-label-types", _eval({"d.json": '{"text": "a", "label": "pos"}\n{"text": "b", "label": 1}\n' * 12},
                                       "d.json"), ("mixes int and str labels",)),
    CliCase("mixed-formats-in-folder", _eval({"data/train.csv": GOOD, "data/test.json": '{"text": "x", "label": 0}\n'}),
            ("mixes file formats", "train.csv", "test.json")),
    CliCase("two-files-per-split", _eval({"data/train.csv": GOOD, "data/train.parquet": ""}),
            ("holds train.csv and train.parquet",)),
    CliCase("missing-text-column", _csv("review,label\n" + ROWS), ("text",)),
    CliCase("missing-label-column", _csv("text,sentiment\n" + ROWS), ("label",)),
    CliCase("wrong-column-option", _eval({"d.csv": GOOD}, "d.csv", text_column="review"), ("review",)),
    CliCase("one-class", _csv("text,label\n" + "".join(f"film {i},pos\n" for i in range(24))), ("class",)),
    CliCase("label-only-in-test", _eval({"data/train.csv": "text,label\n" + "".join(f"a {i},0\nb {i},1\n" for i in range(8)),
                                         "data/test.csv": "text,label\n" + "".join(f"c {i},2\n" for i in range(8))}),
            ("test",)),
    CliCase("three-classes-for-a-two-label-model", _csv("text,label\n" + "".join(f"t {i},{i % 3}\n" for i in range(36))),
            ("predicts 2 classes", "has 3")),
    CliCase("not-utf8-csv", _eval({"d.csv": ("text,label\n" + "caf\u00e9 film,pos\nbad,neg\n" * 12).encode("latin-1")},
                                  "d.csv"), ("d.csv",)),
    CliCase("binary-garbage-csv", _eval({"d.csv": bytes(range(256)) * 16}, "d.csv"), ("d.csv",)),
    CliCase("garbage-parquet", _eval({"d.parquet": b"PAR1 not really"}, "d.parquet"), ("d.parquet",)),
    CliCase("json-not-rows", _eval({"d.json": '{"text": ["a", "b"], "label": 3}'}, "d.json"), ("d.json",)),
    CliCase("json-truncated", _eval({"d.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "lab'}, "d.jsonl"), ("d.jsonl",)),
    CliCase("unknown-extension", _eval({"d.txt": GOOD}, "d.txt"), ("d.txt",)),
    CliCase("missing-file", lambda lab: ["eval", lab.model("bert"), "--dataset", lab.root / "nope.csv", *FAST],
            ("nope.csv",)),
    CliCase("empty-folder", _eval({"data/.keep": ""}), ("data",)),
    CliCase("float-labels", _csv("text,label\n" + "".join(f"t {i},{i % 2 + 0.5}\n" for i in range(24))), ("label",)),
    CliCase("ragged-csv-rows", _csv("text,label\n" + "a,0\nb,1,extra,more\n" * 12), ("d.csv",)),
]


@pytest.mark.parametrize("case", ids(CASES))
def test_bad_user_data_is_one_clear_error(case, lab, capsys):
    case.replay(lab, capsys)


@pytest.mark.parametrize("rows", [
    pytest.param("".join(f"{'word ' * 20_000}{i},{i % 2}\n" for i in range(24)), id="megabyte-texts-are-truncated"),
    pytest.param("".join(f"{i},{i % 2}\n" for i in range(24)), id="numeric-texts"),
    pytest.param("".join(f"\"multi\nline, quoted {i}\",{i % 2}\n" for i in range(24)), id="quoted-newlines"),
])
def test_odd_but_valid_data_is_evaluated(rows, lab, capsys):
    path = lab.csv("d.csv", rows=rows)
    rc, out, err = cli(capsys, ["eval", lab.model("bert"), "--dataset", path, *FAST])
    assert rc == 0, err[-2000:]
    assert '"accuracy"' in out
