"""Seeded, stratified row orders and subsets: every count of rows hf_optim takes represents its split.

A split read in file order is often sorted by class (the first 500 validation rows of ``movie-sentiment`` in
file order are 486 positive; the first 300 ``bbc-topic`` training articles one topic), so "the first N rows"
measures a one-class slice. :func:`stratified_order` returns a seeded permutation in which *every prefix*
holds each class in the split's proportion (within one row per class), so a subset of any size is the prefix
of one order: the same seed gives the same rows, a larger count contains the smaller one, and every artifact
compared on ``n`` rows sees the same rows.

How: each class's rows are permuted with the seed; the ``k``-th row of a class of ``n_c`` rows gets the key
``(k + u_c) / n_c`` (``u_c`` a seeded offset in ``[0, 1)``), and rows are sorted by key (ties broken by a
seeded random value). A prefix of length ``n`` then holds ``n * n_c / N`` rows of each class, rounded up or
down (systematic stratified sampling).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

__all__ = ["stratified_order", "stratified_subset", "class_counts"]


def stratified_order(labels: Sequence[Any], seed: int) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is stratified by ``labels``.

    Args:
        labels (`Sequence`): one hashable stratum per row (a class id, a topic name ...).
        seed (`int`): the same seed gives the same order.

    Returns:
        `np.ndarray`: row indices (``int64``).
    """
    labels = list(labels)
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = np.empty(n, dtype=np.float64)
    # Sorted strata so the order does not depend on which class happens to come first in the file.
    for stratum in sorted(groups, key=repr):
        rows = np.asarray(groups[stratum], dtype=np.int64)
        rows = rows[rng.permutation(len(rows))]
        keys[rows] = (np.arange(len(rows)) + rng.random()) / len(rows)
    ties = rng.random(n)
    return np.lexsort((ties, keys)).astype(np.int64)


def stratified_subset(dataset, n: int | None, seed: int, column: str = "label"):
    """The first ``n`` rows of ``dataset`` in :func:`stratified_order` of ``column`` (all rows, so ordered, when
    ``n`` is unset or not smaller than the dataset).

    Args:
        dataset (`datasets.Dataset`): the split.
        n (`int`, *optional*): how many rows.
        seed (`int`): the sampling seed (hf_optim passes the task's ``seed``, so every artifact compared on a
            task sees the same rows).
        column (`str`, *optional*, defaults to ``"label"``): the column to stratify by.
    """
    if n is None or n >= len(dataset):
        return dataset
    order = stratified_order(dataset[column], seed)
    return dataset.select(order[:n])


def class_counts(labels: Sequence[Any], names: Sequence[str] | None = None) -> dict[str, int]:
    """``{class name: rows}`` in class-id order (ids when no ``names``); recorded next to every metric."""
    counts = Counter(int(x) if isinstance(x, (int, np.integer)) else x for x in labels)
    out = {}
    for key in sorted(counts, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else str(k))):
        name = names[key] if names is not None and isinstance(key, int) and 0 <= key < len(names) else str(key)
        out[name] = int(counts[key])
    return out
