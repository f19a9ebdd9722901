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


def test_every_builtin_stage_kind_has_its_config_and_handler():
    from hf_optim.recipe import stage_kinds
    from hf_optim.registry import stage_kind_table

    table = stage_kind_table()
    builtin = {"finetune", "evaluate", "quantize", "student", "distill", "export", "compile", "prune"}
    assert builtin <= set(table) and builtin <= set(stage_kinds())
    for kind in builtin:
        row = table[kind]
        cls = row.config_class()
        assert cls.kind == kind and stage_kinds()[kind] is cls
        assert callable(row.handler_fn())
        assert set(row.key_fields) <= set(cls.field_names()), kind  # a lineage shows fields the config has


def test_register_stage_kind_conflicts_and_unregister():
    from hf_optim.registry import register_stage_kind, stage_kind, unregister_stage_kind

    @dataclasses.dataclass
    class _Temp(StageConfig):
        kind = "test-temp"
        model: str = "x"

    row = register_stage_kind("test-temp", _Temp, _handler, key_fields=("model",), tag="temp")
    try:
        assert stage_kind("test-temp") == row and get_handler(_Temp()) is _handler
        assert register_stage_kind("test-temp", _Temp, _handler, key_fields=("model",), tag="temp") == row
        with pytest.raises(ValueError, match="already registered"):
            register_stage_kind("test-temp", _Temp, lambda c, x: None)
        with pytest.raises(ValueError, match="not 'other'"):
            register_stage_kind("other", _Temp, _handler)
        with pytest.raises(ValueError, match="already registered"):  # a built-in kind is not silently replaced
            register_stage_kind("finetune", "hf_optim.finetune:FinetuneConfig", _handler)
    finally:
        assert unregister_stage_kind("test-temp") == row
    assert stage_kind("test-temp") is None and "test-temp" not in registered_kinds()
    with pytest.raises(ConfigError, match="no handler registered"):
        get_handler(_Temp())
