from __future__ import annotations

import dataclasses

import pytest

from hf_optim.errors import ConfigError
from hf_optim.recipe import StageConfig
from hf_optim.registry import get_handler, register, registered_kinds


@dataclasses.dataclass
class _Unhandled(StageConfig):
    kind = "test-unhandled"
    model: str = "x"


@dataclasses.dataclass
class _Handled(StageConfig):
    kind = "test-handled"
    model: str = "x"


@dataclasses.dataclass
class _Child(_Handled):
    kind = "test-handled-child"


def _handler(config, ctx):
    return {"ok": 1}


register(_Handled)(_handler)


def test_handler_lookup_by_type_and_base_class():
    assert get_handler(_Handled()) is _handler
    assert get_handler(_Child()) is _handler  # subclasses inherit their base's handler
    assert "test-handled" in registered_kinds()


def test_unknown_handler_lists_kinds():
    with pytest.raises(ConfigError, match="no handler registered for _Unhandled.*test-handled"):
        get_handler(_Unhandled())


def test_register_twice_is_an_error_and_same_fn_is_idempotent():
    register(_Handled)(_handler)  # same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        register(_Handled)(lambda c, x: None)
    with pytest.raises(TypeError):
        register(dict)
