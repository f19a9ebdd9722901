"""Knowledge distillation: ``DistillationTrainer`` (loss only), losses, and ``make_student``.

Importing this package is light; the torch-based parts load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .config import DistillConfig, StudentConfig

_LAZY = {
    "DistillationTrainer": "hf_optim.distill.trainer",
    "make_student": "hf_optim.distill.student",
    "soft_kl": "hf_optim.distill.losses",
    "hidden_mse": "hf_optim.distill.losses",
    "attention_kl": "hf_optim.distill.losses",
}

__all__ = ["DistillConfig", "StudentConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
