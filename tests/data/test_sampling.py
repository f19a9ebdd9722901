"""Every count of rows hf_optim takes is a seeded sample stratified by label: no one-class slices."""

from __future__ import annotations

import numpy as np
import pytest

from hf_optim.data import load_task, load_text
from hf_optim.data.sampling import class_counts, stratified_order, stratified_subset
from hf_optim.export.validate import load_validation


@pytest.mark.parametrize("labels", [[0] * 900 + [1] * 100, [1] * 7 + [0] * 3 + [2] * 40, list("abcab" * 31)])
def test_every_prefix_of_the_order_is_stratified(labels):
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(len(labels)))
    total = class_counts(labels)
    for n in range(1, len(labels) + 1):
        got = class_counts([labels[i] for i in order[:n]])
        for cls, count in total.items():  # within one row of the exact share, for every class and every n
            assert abs(got.get(cls, 0) - n * count / len(labels)) < 1 + 1e-9, (n, cls)


def test_the_same_seed_gives_the_same_rows_and_larger_counts_contain_smaller_ones():
    labels = np.random.default_rng(0).integers(0, 3, 500).tolist()
    a, b, c = stratified_order(labels, 7), stratified_order(labels, 7), stratified_order(labels, 8)
    assert (a == b).all() and not (a == c).all()
    assert set(a[:50]) < set(a[:120])


@pytest.mark.parametrize("n", [20, 21, 37, 50, 100, 333, 500, 999])
def test_the_export_guard_slice_holds_both_classes_in_the_split_proportion(n):
    split = load_task("movie-sentiment")["validation"]
    share = float(np.mean(split["label"]))
    data = load_validation("movie-sentiment", n)
    assert len(data.labels) == n
    assert abs(float(np.mean(data.labels)) - share) <= 0.05
    again = load_validation("movie-sentiment", n)
    assert again.texts == data.texts  # every candidate is compared on the same rows


def test_splits_come_shuffled_and_stratified_so_first_rows_represent_them():
    movie = load_task("movie-sentiment")
    for name, split in movie.items():  # file order gave 486 positives in the first 500 validation rows
        share = float(np.mean(split["label"]))
        assert abs(float(np.mean(split["label"][:100])) - share) <= 0.01, name
    bbc = load_task("bbc-topic")["train"]  # file order gave one topic in the first 300 rows
    first = class_counts(bbc["label"][:300], bbc.features["label"].names)
    total = class_counts(bbc["label"], bbc.features["label"].names)
    assert set(first) == set(total)
    for topic, count in total.items():
        assert abs(first[topic] - 300 * count / len(bbc)) <= 1
    news = load_text("bbc-news")["test"]  # LM perplexity reads the first tokens: every topic early on
    assert len(set(news["topic"][:10])) == 5


def test_stratified_subset_of_a_user_dataset_and_its_counts():
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(100)], "label": [0] * 80 + [1] * 20})
    sub = stratified_subset(ds, 10, seed=1)
    assert class_counts(sub["label"], ["neg", "pos"]) == {"neg": 8, "pos": 2}
    assert stratified_subset(ds, None, seed=1) is ds and stratified_subset(ds, 500, seed=1) is ds
    assert sub["text"] == stratified_subset(ds, 10, seed=1)["text"]
