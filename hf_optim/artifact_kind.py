"""What an artifact directory holds, from its files alone: its kind (:func:`checkpoint_kind`, from
``config.json``), how it is run (:func:`artifact_format`) and which reader loads it (:func:`checkpoint_format`).

:mod:`hf_optim.artifacts` re-exports every name here; it adds one way to get logits out of a directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .errors import DataError

__all__ = ["checkpoint_kind", "checkpoint_facts", "checkpoint_architectures", "read_config", "is_onnx_dir",
           "artifact_format", "checkpoint_format", "gguf_files", "export_record", "onnx_file", "COMPILE_RECORD",
           "EXPORT_RECORD"]

COMPILE_RECORD = "hf_optim_compile.json"
EXPORT_RECORD = "hf_optim_export.json"


# -- what a directory holds ------------------------------------------------------------------------------------
def read_config(model_dir: str | Path) -> Optional[dict]:
    """``model_dir``'s ``config.json`` as a dict, or `None` when there is no readable one."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _kind(cfg: Optional[dict]) -> Optional[str]:
    if cfg is None:
        return None
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    return "base"


def checkpoint_kind(model_dir: str | Path) -> Optional[str]:
    """What a checkpoint directory holds, from its ``config.json``: ``"sequence-classification"``,
    ``"causal-lm"``, ``"base"`` (an encoder or backbone without a task head), or `None` when there is no
    readable ``config.json``. An ONNX export or a compiled artifact keeps its source's ``config.json``, so it
    answers as its source does."""
    return _kind(read_config(model_dir))


def checkpoint_architectures(model_dir: str | Path) -> list[str]:
    """The model classes ``model_dir``'s ``config.json`` names (``architectures``); empty when it names none."""
    return list((read_config(model_dir) or {}).get("architectures") or [])


def checkpoint_facts(model_dir: str | Path) -> dict[str, Any]:
    """``{"kind", "num_layers", "max_positions"}`` of a checkpoint directory from its ``config.json`` (values
    `None` where it does not say)."""
    cfg = read_config(model_dir)
    return {"kind": _kind(cfg), "num_layers": (cfg or {}).get("num_hidden_layers"),
            "max_positions": (cfg or {}).get("max_position_embeddings")}


def is_onnx_dir(path: str | Path) -> bool:
    """An exported directory: ``*.onnx`` and no torch weights (``*.safetensors``/``*.bin``)."""
    path = Path(path)
    if not path.is_dir():
        return False
    has_torch = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    return any(path.glob("*.onnx")) and not has_torch


def gguf_files(path: str | Path) -> list[Path]:
    """The ``.gguf`` files ``path`` is or holds (sorted by name)."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".gguf" else []
    return sorted(path.glob("*.gguf")) if path.is_dir() else []


def artifact_format(path: str | Path) -> Optional[str]:
    """How ``path`` is run: ``"compiled"`` (a ``compile`` stage artifact), ``"onnx"`` (an ONNX export, or a
    ``.onnx`` file), ``"torch"`` (a ``from_pretrained`` directory), ``"gguf"`` (a ``.gguf`` file, or a directory
    holding one and no ``config.json``: llama.cpp, Ollama and ``transformers``' ``gguf_file=`` read it), or `None`
    (none of them)."""
    path = Path(path)
    if path.is_file():
        return {".onnx": "onnx", ".gguf": "gguf"}.get(path.suffix)
    if (path / COMPILE_RECORD).is_file():
        return "compiled"
    if is_onnx_dir(path):
        return "onnx"
    if (path / "config.json").is_file():
        return "torch"
    return "gguf" if gguf_files(path) else None


def checkpoint_format(path: str | Path) -> Optional[str]:
    """Which reader loads ``path``: :func:`artifact_format`'s answer, with a ``from_pretrained`` directory told
    apart by its ``quantization_config``: ``"hf_optim"`` (loads only after ``import hf_optim``),
    ``"compressed-tensors"`` (``transformers`` with the ``compressed-tensors`` package, vLLM) or ``"transformers"``
    (plain ``from_pretrained``)."""
    fmt = artifact_format(path)
    if fmt != "torch":
        return fmt
    method = ((read_config(path) or {}).get("quantization_config") or {}).get("quant_method")
    return method if method in ("hf_optim", "compressed-tensors") else "transformers"


def export_record(path: str | Path) -> Optional[dict]:
    """The export record (``hf_optim_export.json``) of an export directory, or `None` when it has no readable one."""
    try:
        record = json.loads((Path(path) / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def onnx_file(path: str | Path) -> Path:
    """The ``.onnx`` file to run in an export directory: the one its export record names, ``model.onnx``, or the
    only one there (a :class:`DataError` when several leave the choice open)."""
    path = Path(path)
    if path.is_file():
        return path
    record = path / EXPORT_RECORD
    try:
        names = [json.loads(record.read_text()).get("file_name")] if record.is_file() else []
    except (ValueError, AttributeError):  # not JSON, or not a mapping
        raise DataError(f"{record} is not the record hf_optim writes; export the model again") from None
    if names and names[0] is not None and (not isinstance(names[0], str) or Path(names[0]).name != names[0]):
        raise DataError(f"{record} names {str(names[0])[:100]!r} as the model file; export the model again")
    for name in names + ["model.onnx"]:
        if name and (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        raise DataError(f"{path} holds {len(found)} ONNX files ({', '.join(p.name for p in found)}); pass the "
                        "one to run (a .onnx file path)")
    return found[0]
