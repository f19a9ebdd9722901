"""Lazy package exports: heavy modules (torch, transformers) load on first attribute access, not at import."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any], mapping: dict[str, str]) -> tuple[Callable, Callable]:
    """Return ``(__getattr__, __dir__)`` for ``package`` that import ``mapping[name]`` on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in mapping:
            value = getattr(importlib.import_module(mapping[name]), name)
            namespace[name] = value  # later lookups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(namespace.get("__all__", ()))

    return __getattr__, __dir__
