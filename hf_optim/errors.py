"""Exceptions hf_optim raises for bad input; the CLI turns them into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["HfOptimError", "ConfigError", "RecipeError", "DataError", "StageError"]


class HfOptimError(Exception):
    """Base class: an error the user can fix; the message says how."""


class ConfigError(HfOptimError, ValueError):
    """A config or recipe value is invalid. ``field`` names the offending field when known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class RecipeError(ConfigError):
    """A recipe file cannot be read or is invalid; the message names the stage and the field."""


class DataError(HfOptimError, RuntimeError):
    """Embedded data or a model could not be found, fetched or verified; the message names the fix."""


class StageError(HfOptimError, RuntimeError):
    """A recipe stage failed; its partial output was discarded."""
