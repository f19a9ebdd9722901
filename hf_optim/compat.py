"""Which optional stack features are available, with errors that say how to get them.

The primary stack (``make setup``: transformers 4.57 + optimum-onnx) has everything. The compatibility stack
(``make setup-tf5``: transformers 5) cannot install optimum-onnx, which pins ``transformers<4.58``; features
that need it call :func:`require_optimum` and get a clear :class:`FeatureUnavailable`
instead of an ``ImportError`` from deep inside a library.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util

from .errors import HfOptimError

__all__ = ["FeatureUnavailable", "has_optimum", "require_optimum", "transformers_major", "cache_kwarg"]


class FeatureUnavailable(HfOptimError, ImportError):
    """An optional dependency that this feature needs is not installed (the message says how to get it)."""


@functools.lru_cache(maxsize=None)
def transformers_major() -> int:
    return int(importlib.metadata.version("transformers").split(".")[0])


@functools.lru_cache(maxsize=None)
def has_optimum() -> bool:
    """True when Optimum's ONNX Runtime integration is importable (without importing it)."""
    return importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.onnxruntime") is not None


def require_optimum(feature: str) -> None:
    """Raise :class:`FeatureUnavailable` naming ``feature`` when optimum-onnx is missing."""
    if has_optimum():
        return
    if transformers_major() >= 5:
        why = (f"this environment has transformers {importlib.metadata.version('transformers')}, and optimum-onnx "
               "requires transformers<4.58. Use the primary stack (`make setup`, .venv) for this feature")
    else:
        why = "install it with `pip install 'hf-optim[optimum]'` (or `make setup`)"
    raise FeatureUnavailable(f"{feature} needs Optimum's ONNX Runtime integration (optimum-onnx): {why}.")


def cache_kwarg(model) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` on transformers 5 (``past_key_values`` is a
    deprecated alias there), ``past_key_values`` on 4.x."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
