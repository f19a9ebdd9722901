from __future__ import annotations

import importlib.metadata

import pytest

from hf_optim import compat
from hf_optim.errors import HfOptimError


def test_stack_detection_matches_installed_transformers():
    major = int(importlib.metadata.version("transformers").split(".")[0])
    assert compat.transformers_major() == major
    # optimum-onnx cannot be installed next to transformers 5; the primary stack always has it
    assert compat.has_optimum() == (major < 5)


def test_require_optimum_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(compat, "has_optimum", lambda: False)
    with pytest.raises(compat.FeatureUnavailable) as e:
        compat.require_optimum("ONNX export through Optimum")
    msg = str(e.value)
    assert msg.startswith("ONNX export through Optimum needs Optimum's ONNX Runtime integration")
    assert ("make setup" in msg)
    assert isinstance(e.value, HfOptimError)  # the CLI prints it as one line, exit 2


def test_require_optimum_passes_when_present(monkeypatch):
    monkeypatch.setattr(compat, "has_optimum", lambda: True)
    compat.require_optimum("anything")
