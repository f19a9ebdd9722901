"""Quantization that is applied at save time and restored by plain ``from_pretrained``.

``QuantizeConfig`` is light; everything else is imported on first use (it needs torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import QuantizeConfig

_LAZY = {
    "quantize_model_": "hf_optim.quantize.apply",
    "calibrate": "hf_optim.quantize.apply",
    "prepare_qat_": "hf_optim.quantize.apply",
    "convert_qat_": "hf_optim.quantize.apply",
    "qat_callback": "hf_optim.quantize.apply",
    "target_linears": "hf_optim.quantize.apply",
    "quantize_dir": "hf_optim.quantize.stage",
    "plan_precision": "hf_optim.quantize.planner",
    "choose_plan": "hf_optim.quantize.planner",
    "Budgets": "hf_optim.quantize.planner",
}

__all__ = ["QuantizeConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_optim.quantize' has no attribute {name!r}")
