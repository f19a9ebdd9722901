"""Fixtures shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace HfApi's network calls; record what they were asked to do."""
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = {"repo_id": repo_id, **kw}
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kw):
        calls["create_commit"] = {"repo_id": repo_id, **kw,
                                  "files": {op.path_in_repo: op.path_or_fileobj for op in operations},
                                  "contents": {op.path_in_repo: op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                                               else Path(op.path_or_fileobj).read_bytes() for op in operations}}

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Info()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls
