"""The ``export`` stage's portable formats (``format: gguf`` / ``compressed-tensors``): the checkpoint written by
:func:`~hf_optim.export.save_gguf` or :func:`~hf_optim.export.save_compressed_tensors`, next to its export record
(the per-tensor error report) in ``hf_optim_export.json``.

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
    from ..artifacts import EXPORT_RECORD
    from ..evaluation.harness import package_versions

    src, out = Path(model_dir), Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        assembled = work / "assembled"
        if config.format == "gguf":
            from .gguf import save_gguf

            assembled.mkdir()
            report = save_gguf(src, assembled / GGUF_NAME, qtype=config.gguf_type)
            file_name = GGUF_NAME
        else:
            from .compressed_tensors import save_compressed_tensors

            report = save_compressed_tensors(src, assembled)
            file_name = None
        files = [p for p in assembled.rglob("*") if p.is_file()]
        detail = report.to_dict()
        detail["path"] = Path(detail["path"]).name if config.format == "gguf" else "."
        record = {"format": RECORD_FORMAT, "kind": "export", "export_format": config.format,
                  "written": report.format, "source": str(src), "file_name": file_name,
                  "config": config.to_dict(), "versions": package_versions(),
                  "max_abs_error": report.max_abs_error, "tensors_written": len(report.tensors),
                  "size_mb": round(sum(p.stat().st_size for p in files) / 2**20, 3),
                  "export_seconds": round(time.perf_counter() - t0, 2), "report": detail}
        (assembled / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
        os.replace(assembled, out)  # `out` is new or empty (checked by the caller)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def portable_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The stage metrics of a portable export: what was written, its size and its largest weight error."""
    return {"export_format": record["export_format"], "written": record["written"],
            "max_abs_error": record["max_abs_error"], "tensors_written": record["tensors_written"],
            "notes": record["report"]["notes"], "size_mb": record["size_mb"],
            "export_seconds": record["export_seconds"]}
