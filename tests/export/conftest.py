"""Shared fixtures: one tiny BERT classifier per module (exports are the slow part, not the model)."""

from __future__ import annotations

import pytest

from hf_optim.compat import has_optimum

BACKENDS = [pytest.param("optimum", marks=pytest.mark.skipif(not has_optimum(), reason="optimum-onnx is not "
                                                               "installed (transformers 5 stack)")), "torch"]
needs_optimum = pytest.mark.skipif(not has_optimum(), reason="needs optimum-onnx (not installable on transformers 5)")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from hf_optim.testing import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("src") / "tiny-bert")


@pytest.fixture
def clean_cwd(tmp_path, monkeypatch):
    """Run the test from an empty directory and fail if anything is written to it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert sorted(p.name for p in cwd.iterdir()) == [], "files were written to the current working directory"
