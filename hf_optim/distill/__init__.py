"""Knowledge distillation: ``DistillationTrainer`` (loss only), losses, and ``make_student``.

Importing this package is light; the torch-based parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DistillConfig, StudentConfig

_LAZY = {
    "DistillationTrainer": "hf_optim.distill.trainer",
    "make_student": "hf_optim.distill.student",
    "soft_kl": "hf_optim.distill.losses",
    "hidden_mse": "hf_optim.distill.losses",
    "attention_kl": "hf_optim.distill.losses",
}

__all__ = ["DistillConfig", "StudentConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_optim.distill' has no attribute {name!r}")
