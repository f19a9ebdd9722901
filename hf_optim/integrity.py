"""Integrity of what hf_optim wrote: a SHA-256 of every weight file, recorded in the stage marker and checked
whenever hf_optim reads that output back (a skipped stage, a later stage's input, ``hf-optim verify``).

A flipped byte in a weight file otherwise loads silently (safetensors checks structure, not values).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import HfOptimError

__all__ = ["WEIGHT_SUFFIXES", "weight_digests", "verify_artifact", "IntegrityError"]

MARKER = "hf_optim_stage.json"
DIGESTS = "files_sha256"
# Files that hold weights or graphs (what a model computes with); configs and tokenizers are readable text.
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".pt", ".pt2", ".gguf")


class IntegrityError(HfOptimError):
    """A file hf_optim wrote was changed or removed after it was written."""


def weight_digests(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every weight file under ``path`` (hidden names excluded)."""
    from .data.sources import sha256_file

    root = Path(path)
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES and not any(p.startswith(".") for p in rel.parts):
            out[rel.as_posix()] = sha256_file(f)
    return out


def verify_artifact(path: str | Path) -> int:
    """Check every weight file recorded in ``path``'s stage marker; return how many were checked.

    Raises:
        IntegrityError: a recorded file is missing or its bytes changed. Outputs written before digests were
            recorded (no ``files_sha256`` in the marker) and directories without a marker check nothing.
    """
    from .data.sources import sha256_file

    path = Path(path)
    try:
        recorded = json.loads((path / MARKER).read_text()).get(DIGESTS)
    except (OSError, ValueError, AttributeError):
        return 0
    if not isinstance(recorded, dict):
        return 0
    bad = []
    for rel, digest in sorted(recorded.items()):
        f = path / rel
        if not isinstance(rel, str) or ".." in Path(rel).parts or Path(rel).is_absolute():
            bad.append(f"{str(rel)[:80]} (not a path inside the artifact)")
        elif not f.is_file():
            bad.append(f"{rel} (missing)")
        elif sha256_file(f) != digest:
            bad.append(f"{rel} (changed)")
    if bad:
        raise IntegrityError(f"{path}: {len(bad)} weight file(s) differ from what hf_optim wrote: {', '.join(bad[:5])}; "
                             "restore them (or delete the directory to re-run the stage that made it)")
    return len(recorded)
