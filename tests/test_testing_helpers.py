"""hf_optim.testing helpers leave nothing behind in the temp folder."""

from __future__ import annotations

import tempfile
from pathlib import Path


def test_tiny_tokenizer_without_a_folder_leaves_no_temp_dir(tmp_path, monkeypatch):
    from hf_optim.testing import tiny_bert_tokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tok = tiny_bert_tokenizer()
    assert tok("the film")["input_ids"][0] == tok.cls_token_id
    assert [p.name for p in Path(tmp_path).iterdir() if p.name.startswith("hf_optim-")] == []
