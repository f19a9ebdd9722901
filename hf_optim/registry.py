"""The stage table: every recipe stage kind, its config class and its handler, in one place.

A handler is a plain function ``handler(config, ctx) -> dict | None`` that reads the artifact directories in
``ctx`` and writes its own output into ``ctx.output_dir``. It returns the stage's metrics (or ``None``).

Recipe validation (:func:`hf_optim.recipe.stage_kinds`), the runner (:func:`get_handler`), the run report (the
settings a lineage shows) and the model card (its tags) all read this table. A new stage kind is one module with
its config and handler plus one :func:`register_stage_kind` line (or ``@register(Config)`` on the handler, when
the module is imported anyway). The built-in kinds name their config and handler as ``"module:attribute"``
strings, so reading a recipe imports only the light config modules and running a stage imports its handler
(torch, transformers) only then.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, TypeVar, Union

from .config import _CONFIG_KINDS, OptimConfig
from .errors import ConfigError

__all__ = ["StageKind", "register_stage_kind", "unregister_stage_kind", "stage_kind", "stage_kind_table",
           "register", "get_handler", "registered_kinds"]

F = TypeVar("F", bound=Callable)


@dataclasses.dataclass(frozen=True)
class StageKind:
    """One row of the stage table.

    Args:
        kind (`str`): the name recipes use (``kind: finetune``); the config class's ``kind``.
        config (`type` or `str`): the config class (a :class:`~hf_optim.recipe.StageConfig` subclass), or
            ``"module:ClassName"`` to import it when first needed (keep that module light: no torch import).
        handler (`Callable` or `str`): the handler function, or ``"module:function"`` to import it when a stage
            of this kind first runs.
        key_fields (`tuple[str, ...]`, *optional*): config fields a report's lineage shows even when left at
            their defaults (what the step did, e.g. ``("epochs",)``).
        tag (`str`, *optional*): the Hub tag a model card gets for a model this kind of stage made.
    """

    kind: str
    config: Union[type, str]
    handler: Union[Callable, str]
    key_fields: tuple[str, ...] = ()
    tag: str | None = None

    def config_class(self) -> type:
        """The config class (imported on first use)."""
        cls = _resolve(self.config)
        if not (isinstance(cls, type) and issubclass(cls, OptimConfig)) or cls.kind != self.kind:
            raise ConfigError(f"stage kind {self.kind!r}: {self.config!r} is not the config class of that kind")
        return cls

    def handler_fn(self) -> Callable:
        """The handler function (imported on first use)."""
        return _resolve(self.handler)


_STAGE_KINDS: dict[str, StageKind] = {}
_HANDLERS: dict[type, Callable] = {}  # resolved handlers, by config type (subclasses find their base's)


def _resolve(target: Union[type, Callable, str]):
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _name(obj) -> str:
    return obj if isinstance(obj, str) else f"{obj.__module__}:{obj.__qualname__}"


def register_stage_kind(kind: str, config: Union[type, str], handler: Union[Callable, str], *,
                        key_fields: tuple[str, ...] = (), tag: str | None = None) -> StageKind:
    """Add a stage kind to the table (the arguments are the fields of :class:`StageKind`).

    Registering the same config and handler again is a no-op (a module imported twice); another config or
    handler for a kind that exists is a ``ValueError``: remove it first with :func:`unregister_stage_kind`.

    Returns:
        `StageKind`: the row now in the table.
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"register_stage_kind() needs a kind name, got {kind!r}")
    if not isinstance(config, str) and not (isinstance(config, type) and issubclass(config, OptimConfig)):
        raise TypeError(f"register_stage_kind(): config must be an OptimConfig subclass or 'module:Class', got {config!r}")
    if not isinstance(config, str) and config.kind != kind:
        raise ValueError(f"register_stage_kind(): {config.__name__}.kind is {config.kind!r}, not {kind!r}")
    row = StageKind(kind, config, handler, tuple(key_fields), tag)
    old = _STAGE_KINDS.get(kind)
    if old is not None:
        if (_name(old.config), _name(old.handler)) != (_name(config), _name(handler)):
            raise ValueError(f"a handler for stage kind {kind!r} ({_name(old.config)}) is already registered: "
                             f"{_name(old.handler)}")
        # the same stage named again: keep the table's settings, take the objects (no import needed later)
        row = dataclasses.replace(old, config=old.config if isinstance(config, str) else config,
                                  handler=old.handler if isinstance(handler, str) else handler)
    _STAGE_KINDS[kind] = row
    if not isinstance(config, str) and not isinstance(handler, str):
        _HANDLERS[config] = handler
    return row


def unregister_stage_kind(kind: str) -> StageKind | None:
    """Remove a stage kind (its row, its handler and its config class's ``kind``), e.g. after a test. Returns the
    removed row, or ``None`` when there was none."""
    row = _STAGE_KINDS.pop(kind, None)
    for cls in [c for c in _HANDLERS if c.kind == kind]:
        del _HANDLERS[cls]
    if row is not None and not isinstance(row.config, str) and _CONFIG_KINDS.get(kind) is row.config:
        del _CONFIG_KINDS[kind]
    return row


def stage_kind_table() -> dict[str, StageKind]:
    """``{kind: StageKind}`` of every registered stage kind, sorted by kind."""
    return dict(sorted(_STAGE_KINDS.items()))


def stage_kind(kind: str) -> StageKind | None:
    """The table's row for ``kind``, or ``None``."""
    return _STAGE_KINDS.get(kind)


def register(config_type: type[OptimConfig]) -> Callable[[F], F]:
    """Decorator: ``@register(FinetuneConfig)`` makes the function the stage handler for that config type and
    adds the kind to the stage table (see :func:`register_stage_kind`)."""
    if not (isinstance(config_type, type) and issubclass(config_type, OptimConfig)):
        raise TypeError(f"register() needs an OptimConfig subclass, got {config_type!r}")

    def deco(fn: F) -> F:
        register_stage_kind(config_type.kind, config_type, fn)
        return fn

    return deco


def registered_kinds() -> list[str]:
    """Kinds of all configs that have a handler, sorted."""
    return sorted(_STAGE_KINDS)


def get_handler(config: OptimConfig) -> Callable:
    """The handler registered for ``type(config)`` (or its nearest registered base class)."""
    for t in type(config).__mro__:
        if t in _HANDLERS:
            return _HANDLERS[t]
        row = _STAGE_KINDS.get(getattr(t, "kind", None))
        if row is not None and row.config_class() is t:
            _HANDLERS[t] = row.handler_fn()
            return _HANDLERS[t]
    raise ConfigError(
        f"no handler registered for {type(config).__name__} (kind {config.kind!r}); "
        f"kinds with handlers: {', '.join(registered_kinds())}"
    )


# The built-in stage kinds. Config modules are light (no torch); handler modules load when a stage runs.
for _row in (
    StageKind("finetune", "hf_optim.finetune:FinetuneConfig", "hf_optim.finetune:run_finetune", ("epochs",)),
    StageKind("evaluate", "hf_optim.evaluation.config:EvalConfig", "hf_optim.evaluation.stage:run_evaluate"),
    StageKind("quantize", "hf_optim.quantize.config:QuantizeConfig", "hf_optim.quantize.stage:run_quantize",
              ("scheme",), tag="quantization"),
    StageKind("student", "hf_optim.distill.config:StudentConfig", "hf_optim.distill.stage:run_student",
              ("num_layers",)),
    StageKind("distill", "hf_optim.distill.config:DistillConfig", "hf_optim.distill.stage:run_distill",
              ("temperature", "alpha"), tag="distillation"),
    StageKind("export", "hf_optim.export.config:ExportConfig", "hf_optim.export.stage:run_export",
              ("backend", "optimization", "quantization"), tag="onnx"),
    StageKind("compile", "hf_optim.export.config:CompileConfig", "hf_optim.export.compile:run_compile",
              ("method",), tag="torch-compile"),
    StageKind("prune", "hf_optim.prune.config:PruneConfig", "hf_optim.prune.stage:run_prune",
              ("granularity",), tag="pruning"),
):
    register_stage_kind(_row.kind, _row.config, _row.handler, key_fields=_row.key_fields, tag=_row.tag)
del _row
