"""Versioned, serializable configuration base class.

Every technique in hf_optim is described by one dataclass deriving from :class:`OptimConfig`. Configs hold
data only; the work is done by handlers registered for the config type (see :mod:`hf_optim.registry`).

Rules (see DESIGN.md):

* strict in code: an unknown keyword is a ``TypeError`` (plain dataclass behaviour) and a bad value is a
  ``ValueError`` that names the field, the value, what is allowed and how to fix it;
* lenient on disk: :meth:`OptimConfig.from_dict` warns about and drops fields it does not know, so a file
  written by a newer or older release still loads;
* every serialized config carries its ``kind`` and ``version``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from typing import Any, ClassVar, Literal, Union

from .errors import ConfigError

__all__ = ["OptimConfig", "config_class", "config_kinds", "config_from_dict", "short_repr", "renamed_fields"]

_CONFIG_KINDS: dict[str, type["OptimConfig"]] = {}


def config_kinds() -> list[str]:
    """Sorted list of every registered config ``kind``."""
    return sorted(_CONFIG_KINDS)


def config_class(kind: str) -> type["OptimConfig"]:
    """Return the config class registered for ``kind`` or raise a ``ValueError`` listing the known kinds."""
    try:
        return _CONFIG_KINDS[kind]
    except (KeyError, TypeError):  # TypeError: an unhashable kind (a list or mapping in a file)
        raise ConfigError(f"unknown kind {short_repr(kind)}; known kinds: {', '.join(config_kinds())}") from None


def short_repr(value: Any, limit: int = 100) -> str:
    """``repr(value)``, cut to ``limit`` characters: error messages quote what the user wrote, never megabytes of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def config_from_dict(data: dict[str, Any]) -> "OptimConfig":
    """Build the right config subclass from a dict that carries its ``kind``."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"a config needs a 'kind' field (one of: {', '.join(config_kinds())})")
    return config_class(data["kind"]).from_dict(data)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_NO = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or ``_NO`` when it cannot be (no lossy conversions)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # exact type match first so that e.g. Union[int, str] keeps 3 as int
        for a in args:
            if a is not type(None) and typing.get_origin(a) is None and type(value) is a:
                return value
        for a in args:
            out = _coerce(value, a)
            if out is not _NO:
                return out
        return _NO
    if tp is type(None):
        return None if value is None else _NO
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _NO
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce(v, arg) for v in value]
        return _NO if any(o is _NO for o in out) else (tuple(out) if origin is tuple else out)
    if origin is dict:
        return dict(value) if isinstance(value, dict) else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, int):  # beyond int64 no count, size or seed means anything (torch overflows)
            return value if abs(value) < 2 ** 63 else _NO
        # 1e20 is a float YAML reads from "batch_size: 1e20": only whole numbers a float holds exactly
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2 ** 53:
            return int(value)
        return _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if not isinstance(value, (int, float, str)):
            return _NO
        try:  # YAML 1.1 reads "1e-4" as a string; an int of 400 digits overflows a float
            out = float(value)
        except (ValueError, OverflowError):
            return _NO
        return out if math.isfinite(out) else _NO  # .inf epochs or a NaN learning rate never mean anything
    if tp is str:
        return value if isinstance(value, str) else _NO
    return value if isinstance(value, tp) else _NO


_SAME = object()


def added_field(default: Any, legacy: Any = _SAME) -> Any:
    """A config field added after the first release. While it holds ``legacy`` (the value that reproduces the
    behaviour from before the field existed; by default ``default`` itself) it is not part of a stage's
    fingerprint (see :meth:`OptimConfig.fingerprint_dict`): upgrading re-runs a stage only when its behaviour
    changed."""
    return dataclasses.field(default=default, metadata={"added": True, "legacy": default if legacy is _SAME else legacy})


@dataclasses.dataclass
class OptimConfig:
    """Base class of every hf_optim config.

    Subclasses set the class attributes ``kind`` (the name used in recipes) and ``version`` (bumped when the
    meaning of a field changes), declare typed dataclass fields, and may add checks in ``validate``.
    Field types are enforced and converted after construction (``int`` -> ``float``, list -> tuple ...).
    """

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    # {old name: new name} of renamed fields (see :func:`renamed_fields`) and {name: why} of removed ones: a
    # file (or, for renames, a keyword) that uses them still loads, with a warning.
    renamed: ClassVar[dict[str, str]] = {}
    removed: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            other = _CONFIG_KINDS.get(kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"config kind {kind!r} is already registered by {other.__qualname__}")
            _CONFIG_KINDS[kind] = cls

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints[f.name]
            out = _coerce(value, tp)
            if out is _NO:
                raise ConfigError(
                    f"{self.kind}.{f.name} = {short_repr(value)} is not valid: expected {_type_name(tp)}",
                    field=f.name,
                )
            object.__setattr__(self, f.name, out)
        self.validate()

    def validate(self) -> None:
        """Extra checks across fields; raise :class:`~hf_optim.errors.ConfigError` naming the field."""

    def _fail(self, field: str, message: str) -> None:
        raise ConfigError(f"{self.kind}.{field} = {short_repr(getattr(self, field))}: {message}", field=field)

    # -- serialization ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict with ``kind`` and ``version`` first, then the fields (shared keyword-only ones,
        such as the training settings, last)."""
        out: dict[str, Any] = {"kind": self.kind, "version": self.version}
        for f in sorted(dataclasses.fields(self), key=lambda f: f.kw_only is True):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def fingerprint_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields declared with :func:`added_field` that hold their legacy value: a
        field added in a later release changes a stage's fingerprint only when it changes what the stage does,
        so upgrading hf_optim does not re-run finished stages."""
        out = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata.get("added") and getattr(self, f.name) == f.metadata["legacy"]:
                out.pop(f.name)
        # a rename changes no behaviour: the fingerprint keeps the name the stage was first recorded with
        return {next((old for old, new in self.renamed.items() if new == k), k): v for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> "OptimConfig":
        """Build a config from a dict read from disk.

        Args:
            data (`dict`): the serialized config (``kind`` and ``version`` optional).
            strict (`bool`, *optional*, defaults to `False`): when `False` unknown fields warn and are
                dropped, so a file from another release still loads; when `True` (hand-written recipes,
                where an unknown field is a typo) they raise a :class:`~hf_optim.errors.ConfigError`.

        A ``kind`` that belongs to another class or a ``version`` newer than this release's is an error.
        """
        data = _current_names(cls, dict(data))
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"cannot read a {kind!r} config as {cls.kind!r}")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version:
            raise ConfigError(
                f"{cls.kind} config version {version!r} is newer than this hf_optim understands "
                f"(<= {cls.version}); upgrade with `pip install -U hf-optim`"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{cls.kind}: missing required field(s) {', '.join(missing)}", field=missing[0])
        if unknown and strict:
            raise ConfigError(
                f"{cls.kind}: unknown field(s) {', '.join(unknown)}; allowed fields: {', '.join(sorted(known))}",
                field=unknown[0],
            )
        if unknown:
            warnings.warn(
                f"{cls.kind} config: ignoring unknown field(s) {', '.join(unknown)}", UserWarning, stacklevel=2
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes: Any) -> "OptimConfig":
        """A copy with ``changes`` applied (configs are never mutated in place)."""
        return dataclasses.replace(self, **changes)


def _current_names(cls: type[OptimConfig], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with renamed fields under their new names and removed ones dropped, each with a warning."""
    for old, new in cls.renamed.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(f"{cls.kind}: {old} is the old name of {new}; set only {new}", field=old)
        warnings.warn(f"{cls.kind}.{old} is renamed {new}; the old name is read until the next release",
                      FutureWarning, stacklevel=3)
        data[new] = data.pop(old)
    for name, why in cls.removed.items():
        if name in data:
            warnings.warn(f"{cls.kind}.{name} was removed ({why}); ignoring {short_repr(data.pop(name))}",
                          FutureWarning, stacklevel=3)
    return data


def renamed_fields(**names: str):
    """Class decorator (above ``@dataclass``): the config's fields ``names`` (``old="new"``) were renamed; the old
    names still load from files and keywords with a ``FutureWarning``, and stage fingerprints keep them."""
    def wrap(cls: type[OptimConfig]) -> type[OptimConfig]:
        cls.renamed = {**cls.renamed, **names}
        init = cls.__init__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **_current_names(cls, kwargs))

        __init__.__wrapped__ = init
        __init__.__doc__ = init.__doc__
        cls.__init__ = __init__
        return cls
    return wrap
