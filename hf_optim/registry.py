"""Handlers registered against config *types* (not names scanned from a module).

A handler is a plain function ``handler(config, ctx) -> dict | None`` that reads the artifact directories in
``ctx`` and writes its own output into ``ctx.output_dir``. It returns the stage's metrics (or ``None``).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .config import OptimConfig
from .errors import ConfigError

__all__ = ["register", "get_handler", "registered_kinds"]

_HANDLERS: dict[type[OptimConfig], Callable] = {}

F = TypeVar("F", bound=Callable)


def register(config_type: type[OptimConfig]) -> Callable[[F], F]:
    """Decorator: ``@register(FinetuneConfig)`` makes the function the stage handler for that config type."""
    if not (isinstance(config_type, type) and issubclass(config_type, OptimConfig)):
        raise TypeError(f"register() needs an OptimConfig subclass, got {config_type!r}")

    def deco(fn: F) -> F:
        if config_type in _HANDLERS and _HANDLERS[config_type] is not fn:
            raise ValueError(f"a handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = fn
        return fn

    return deco


def registered_kinds() -> list[str]:
    """Kinds of all configs that have a handler, sorted."""
    return sorted(t.kind for t in _HANDLERS)


def get_handler(config: OptimConfig) -> Callable:
    """The handler registered for ``type(config)`` (or its nearest registered base class)."""
    for t in type(config).__mro__:
        if t in _HANDLERS:
            return _HANDLERS[t]
    raise ConfigError(
        f"no handler registered for {type(config).__name__} (kind {config.kind!r}); "
        f"kinds with handlers: {', '.join(registered_kinds())}"
    )
