"""Quantization that is applied at save time and restored by plain ``from_pretrained``.

``QuantizeConfig`` is light; everything else is imported on first use (it needs torch).
"""

from __future__ import annotations

from .._lazy import lazy_exports
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
    "PlanConfig": "hf_optim.quantize.planner",
    "choose_plan": "hf_optim.quantize.planner",
    "Budgets": "hf_optim.quantize.planner",
}

__all__ = ["QuantizeConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
