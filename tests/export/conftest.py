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


def save_quantized_llama(path, model, config):
    """Quantize a tiny Llama with ``config`` (None: leave it float; GPTQ on two seeded random batches, else
    round-to-nearest) and save it with its tokenizer at ``path``."""
    import torch

    from hf_optim.quantize.apply import quantize_model_
    from hf_optim.quantize.gptq import gptq_quantize_
    from hf_optim.testing import tiny_llama_tokenizer

    if config is not None and config.method == "gptq":
        g = torch.Generator().manual_seed(1)
        gptq_quantize_(model, [{"input_ids": torch.randint(0, 60, (4, 32), generator=g)} for _ in range(2)], config)
    elif config is not None:
        quantize_model_(model, config)
    model.save_pretrained(path)
    tiny_llama_tokenizer().save_pretrained(path)
    return path
