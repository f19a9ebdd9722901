"""The ``export`` stage's portable formats (``format: gguf`` / ``compressed-tensors`` / ``genai``): the checkpoint
written by :func:`~hf_optim.export.save_gguf`, :func:`~hf_optim.export.save_compressed_tensors` or
:func:`~hf_optim.export.save_genai`, next to its export record (the per-tensor error report) in
``hf_optim_export.json`` and its model card (``README.md``: the runtimes that load it without hf_optim, with code
for each).

No ONNX graph is built and no task metric is measured: the record states, per tensor, the type written and its
error against the weight hf_optim computes with (evaluate the result in the runtime that loads it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import ExportConfig

__all__ = ["export_portable", "portable_metrics", "GGUF_NAME"]

GGUF_NAME = "model.gguf"
RECORD_FORMAT = 1  # of the portable record (``export_format`` and ``report`` instead of the ONNX validation)


def export_portable(model_dir: str | Path, output_dir: str | Path, config: ExportConfig) -> dict[str, Any]:
    """Write ``model_dir`` in ``config.format`` into the new or empty directory ``output_dir`` (assembled in a
    scratch directory next to it and renamed into place) and return the record written with it."""
    from ..evaluation.harness import package_versions

    src, out = Path(model_dir), Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        assembled = work / out.name  # named as it will be: its card names the folder in its loading code
        if config.format == "gguf":
            from .gguf import save_gguf

            assembled.mkdir()
            report = save_gguf(src, assembled / GGUF_NAME, qtype=config.gguf_type, pad_uneven=config.pad_uneven)
            file_name = GGUF_NAME
        elif config.format == "genai":
            from .genai import save_genai

            report = save_genai(src, assembled)
            file_name = "model.onnx"
        else:
            from .compressed_tensors import save_compressed_tensors

            report = save_compressed_tensors(src, assembled, pad_uneven=config.pad_uneven)
            file_name = None
        files = [p for p in assembled.rglob("*") if p.is_file()]
        detail = report.to_dict()
        detail["path"] = Path(detail["path"]).name if config.format == "gguf" else "."
        record = {"format": RECORD_FORMAT, "kind": "export", "export_format": config.format,
                  "written": report.format, "source": str(src), "file_name": file_name,
                  "config": config.to_dict(), "versions": package_versions(),
                  "max_abs_error": report.max_abs_error, "tensors_written": len(report.tensors),
                  "size_mb": round(sum(p.stat().st_size for p in files) / 2**20, 3),
                  "export_seconds": round(time.perf_counter() - t0, 2), "report": detail, **_origin(src)}
        _write_record(assembled, record)
        if config.format != "genai":  # the cards describe from_pretrained / GGUF readers; genai: docs/formats.md
            record["card_sha256"] = _write_card(assembled)
            _write_record(assembled, record)
        os.replace(assembled, out)  # `out` is new or empty (checked by the caller)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _origin(src: Path) -> dict[str, Any]:
    """What the card says the export was made from: the source's Hub id (where known) and what was done to it."""
    from ..artifact_kind import read_config
    from ..report.card_meta import inherited_metadata, methods_in_config

    return {"base_model": inherited_metadata(str(src)).get("base_model"),
            "source_methods": methods_in_config(read_config(src) or {}) if src.is_dir() else []}


def _write_record(directory: Path, record: dict[str, Any]) -> None:
    from ..artifact_kind import EXPORT_RECORD

    (directory / EXPORT_RECORD).write_text(json.dumps(record, indent=2))


def _write_card(directory: Path) -> str:
    """Write ``directory``'s model card and return its SHA-256 (a push rewrites the card for its Hub repository
    while it is unchanged)."""
    from ..data.sources import sha256_file
    from ..report.card import write_model_card
    from ..report.card_meta import CardConfig

    return sha256_file(write_model_card(directory, card=CardConfig()))


def portable_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The stage metrics of a portable export: what was written, its size and its largest weight error."""
    padding = record["report"].get("padding")
    return {"export_format": record["export_format"], "written": record["written"],
            "max_abs_error": record["max_abs_error"], "tensors_written": record["tensors_written"],
            "notes": record["report"]["notes"], "size_mb": record["size_mb"],
            "export_seconds": record["export_seconds"],
            **({"padding_share": padding["share"]} if padding else {})}
