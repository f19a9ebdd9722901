"""Command-line options built from config dataclasses, and the model argument every model command takes.

A config's field already says its type, its default and (for a ``Literal``) its choices, and its docstring's
``Args`` section says what it means; :func:`config_options` turns those into ``argparse`` options, so a default
or a list of choices is written once, in the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from .errors import HfOptimError

__all__ = ["config_options", "field_choices", "field_help", "resolve_model", "model_task", "DEFAULT_TEXT"]

_ARG_LINE = re.compile(r"^ {8}(\w+) \((.*?)\):\s*(.*)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# what a model download leaves out: other frameworks' weights and other runtimes' files
_NOT_NEEDED = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.gguf", "*.tflite", "*.mlmodel", "onnx/*",
               "original/*"]


@functools.lru_cache(maxsize=None)
def _docstring_args(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Args`` section of ``cls``'s docstring, markup stripped."""
    out: dict[str, str] = {}
    name = None
    for line in (cls.__doc__ or "").splitlines():
        m = _ARG_LINE.match(line)
        if m:
            name = m.group(1)
            out[name] = m.group(3)
        elif name and line.startswith(" " * 12) and line.strip():
            out[name] += " " + line.strip()
        else:
            name = None
    for key, text in out.items():
        text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", text)  # :class:`~a.B` -> B
        out[key] = _brief(text.replace("``", "").replace("`", "").strip())
    return out


def _brief(text: str, limit: int = 240) -> str:
    """The first sentences of ``text`` up to about ``limit`` characters (``--help`` is a summary; the docs and the
    config's docstring say the rest), without the note of a field's former name."""
    kept = ""
    for sentence in re.split(r"(?<=\.) (?=[A-Z])", text):
        if sentence.startswith("Formerly ") or (kept and len(kept) + len(sentence) > limit):
            break
        kept = f"{kept} {sentence}".strip()
    return kept


def field_help(cls: type, name: str) -> str:
    """The description of ``cls``'s field ``name`` from its docstring (empty when it has none)."""
    return _docstring_args(cls).get(name, "")


def _plain_type(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``; a union of types -> its first (``Union[str, dict]`` -> ``str``)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _plain_type(args[0])
    return tp


def field_choices(cls: type, name: str) -> tuple | None:
    """The values a ``Literal`` field of ``cls`` allows (``None`` for other fields)."""
    tp = _plain_type(typing.get_type_hints(cls)[name])
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _split_commas(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def config_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, names: list[str],
                   flags: dict[str, str] | None = None, helps: dict[str, str] | None = None) -> None:
    """Add one option per field ``names`` of the dataclass ``cls`` to ``parser``.

    Args:
        parser (`argparse.ArgumentParser`): where the options go.
        cls (`type`): a config dataclass (an :class:`~hf_optim.config.OptimConfig` or any dataclass).
        names (`list[str]`): its fields to offer, in order.
        flags (`dict[str, str]`, *optional*): an option name other than ``--field-name`` for some fields (a
            ``bool`` field that defaults to `True` needs one that says what turning it off does, such as
            ``{"measure_memory": "--no-memory"}``; without one it gets ``--no-field-name``).
        helps (`dict[str, str]`, *optional*): help text other than the docstring's for some fields.

    The option's ``dest`` is the field's name and its default the field's default; a ``Literal`` gives the
    choices, ``Optional[X]`` the type ``X``, a ``bool`` a switch, a ``list`` a repeatable option and a ``tuple``
    a comma-separated value.
    """
    flags, helps = flags or {}, helps or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        default = _default(fields[name])
        tp = _plain_type(hints[name])
        origin = typing.get_origin(tp)
        text = helps.get(name, field_help(cls, name)).replace("%", "%%")
        kw: dict[str, Any] = {"dest": name, "default": default}
        if tp is bool:
            flag = flags.get(name) or ("--no-" if default else "--") + name.replace("_", "-")
            parser.add_argument(flag, action="store_false" if default else "store_true", help=text, **kw)
            continue
        if origin is Literal:
            kw["choices"] = typing.get_args(tp)
            kw["type"] = type(kw["choices"][0])
        elif origin is list:
            kw["action"], kw["type"] = "append", _plain_type(typing.get_args(tp)[0])
            kw["metavar"] = name.rstrip("s").upper()
        elif origin is tuple:
            kw["type"], kw["metavar"] = _split_commas, "A,B,..."
            text += " (comma-separated)"
        elif tp in (int, float, str):
            kw["type"] = tp
        if default is not None and origin is not list:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text += f" (default: {shown})".replace("%", "%%")
        parser.add_argument(flags.get(name) or "--" + name.replace("_", "-"), help=text, **kw)


def resolve_model(name: str) -> str:
    """The local directory of the model ``name``: a model directory as it is, or a Hub model id (``org/name``)
    from the Hugging Face cache, downloaded when it is not there. Raises :class:`~hf_optim.errors.HfOptimError`
    with one line saying what to do otherwise (offline, ``HF_HUB_OFFLINE=1``: naming it)."""
    path = Path(name)
    if path.is_file():
        raise HfOptimError(f"{name!r} is a file; pass the model directory that holds it ({str(path.parent)!r})")
    if path.is_dir():
        return name
    if not _HUB_ID.match(name):
        raise HfOptimError(f"model directory {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    try:
        return snapshot_download(name, repo_type="model", ignore_patterns=_NOT_NEEDED)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise HfOptimError(f"{name!r} is neither a model directory nor a model in the Hugging Face cache, and "
                               "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to download it, or pass a model "
                               "directory") from None
        raise HfOptimError(f"cannot download {name!r} from the Hugging Face Hub ({str(e).splitlines()[0][:200]}); "
                           "check the connection, or pass a model directory") from None
    except GatedRepoError:
        raise HfOptimError(f"{name!r} is a gated model: accept its terms on the Hub and log in (`hf auth login`) "
                           "or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise HfOptimError(f"{name!r} is neither a model directory nor a Hub model id that exists (private models "
                           "need `hf auth login` or HF_TOKEN)") from None


DEFAULT_TEXT = "bbc-news"  # what causal LMs are measured on when no --task is given


def model_task(args: argparse.Namespace, texts: bool = True):
    """The task for ``args.model_dir``: ``--task``, else the one the directory records (the task it was trained
    for), else, for a causal LM where ``texts`` allows it, the default text corpus. A classifier that records no
    task is an error: evaluating it on a built-in task it was never trained for gives a meaningless number."""
    import logging

    from .data import BUILTIN_TASKS
    from .evaluation.lm import is_causal_lm
    from .task_record import TASK_RECORD, recorded_task

    if args.task:
        return args.task
    task = recorded_task(args.model_dir)
    if task is not None:
        name = task if isinstance(task, str) else task.get("name") or task.get("dataset")
        logging.getLogger("hf_optim").info("task: %s (recorded in %s)", name, args.model_dir)
        return task
    if texts and (is_causal_lm(args.model_dir) or getattr(args, "task_type", None) == "causal-lm"):
        return DEFAULT_TEXT
    raise HfOptimError(f"{args.model_dir} does not record the task it was trained for (no {TASK_RECORD}: models "
                       f"written by a finetune/distill/prune stage and what derives from them record it); pass "
                       f"--task (built-in: {', '.join(sorted(BUILTIN_TASKS))})"
                       + (" or --dataset FILE with your labelled data" if hasattr(args, "dataset") else ""))
