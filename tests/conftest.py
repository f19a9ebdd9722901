"""Test setup: offline, quiet, tiny models. Runs before any test module imports transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402


@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A saved tiny BERT classifier (2 labels) with its tokenizer."""
    from hf_optim.testing import save_tiny_bert

    return save_tiny_bert(tmp_path / "tiny-bert")


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A saved tiny Llama causal LM with its tokenizer."""
    from hf_optim.testing import save_tiny_llama

    return save_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point the hf_optim cache at an empty temp dir (for cache/corruption tests)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_OPTIM_CACHE", str(cache))
    return cache
