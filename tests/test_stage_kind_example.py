"""docs/adding-a-stage-kind.md works as written: its Python blocks define and register a `half` stage kind, and a
recipe using it runs through the real runner."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from hf_optim.recipe import Recipe, stage_kinds
from hf_optim.registry import stage_kind, unregister_stage_kind
from hf_optim.runner import run

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-stage-kind.md"
MODULE = "hf_optim_docs_half_example"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture
def half_kind(monkeypatch):
    """The page's code run as a module of its own (dataclasses and type hints look their module up); the
    registration is undone afterwards, so no other test sees the `half` kind."""
    assert "half" not in stage_kinds()
    module = types.ModuleType(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, module)
    try:
        for block in python_blocks(PAGE.read_text(encoding="utf-8")):
            exec(compile(block, str(PAGE), "exec"), module.__dict__)  # noqa: S102 - our own documentation
        yield module
    finally:
        unregister_stage_kind("half")
    assert "half" not in stage_kinds() and stage_kind("half") is None


def test_the_page_has_the_config_handler_and_registration():
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 2
    assert "class HalfConfig(StageConfig)" in blocks[0] and "def run_half(" in blocks[0]
    assert "register_stage_kind(" in blocks[1]


def test_example_stage_kind_runs_through_the_runner(half_kind, tmp_path):
    import torch
    from safetensors import safe_open

    from hf_optim.testing import save_tiny_bert, tiny_bert_tokenizer
    from hf_optim.training import load_pretrained

    assert stage_kinds()["half"] is half_kind.HalfConfig
    src = save_tiny_bert(tmp_path / "tiny-bert")
    recipe = Recipe.from_dict({"name": "half-demo", "stages": [
        {"name": "fp16", "kind": "half", "model": str(src)},
        {"name": "bf16", "kind": "half", "model": "fp16", "dtype": "bfloat16"},
    ]}, base_dir=tmp_path)
    assert Recipe.from_dict(recipe.to_dict(), base_dir=tmp_path) == recipe  # round-trips like a built-in kind

    out = tmp_path / "out"
    result = run(recipe, out, progress=False)
    assert [s["status"] for s in result.report["stages"]] == ["ran", "ran"]
    assert result.report["stages"][0]["metrics"]["dtype"] == "float16"
    for stage, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        with safe_open(str(out / stage / "model.safetensors"), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}

    # the cast model answers like the original, within half precision
    batch = tiny_bert_tokenizer()(["a good film", "bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = load_pretrained(src).eval()(**batch).logits
        got = load_pretrained(out / "fp16").float().eval()(**batch).logits
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-2

    # resumable like any stage: the second run skips both; the lineage shows the key field
    again = run(recipe, out, progress=False)
    assert [s["status"] for s in again.report["stages"]] == ["skipped", "skipped"]
    from hf_optim.report.summary import lineage, lineage_text

    stages = json.loads((out / "report.json").read_text())["stages"]
    assert "half: dtype=float16" in lineage_text(lineage(stages, "fp16"), markdown=False)


def test_unknown_kind_is_an_error_without_the_registration(tmp_path):
    from hf_optim.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown kind 'half'"):
        Recipe.from_dict({"name": "r", "stages": [{"name": "a", "kind": "half", "model": "builtin:minilm-l6"}]},
                         base_dir=tmp_path)
