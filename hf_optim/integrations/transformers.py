"""Transformers integration: ``quant_method: "hf_optim"`` checkpoints load with plain ``from_pretrained``.

The format itself (``HfOptimConfig``, the fields of ``quantization_config``, how a skeleton is rebuilt from them)
lives in :mod:`hf_optim.checkpoint`; this module registers a ``HfQuantizer`` that applies it before the weights
load and checks the result after.

Works on transformers 4.57 and 5.x (their quantizer hooks differ; see FIELD-NOTES.md).
"""

from __future__ import annotations

import threading
from typing import Any

import torch.nn as nn
# Submodule imports: this may run while transformers.quantizers/__init__ is still executing (import hook).
from transformers.quantizers.base import HfQuantizer

# the format's names stay importable from here, where they were first published
from ..checkpoint import (DTYPES, FORMAT_VERSION, MODULE_ATTRS, QUANT_METHOD, HfOptimConfig,  # noqa: F401
                          absent_keys, check_loaded_, quantized_keys, raise_missing, restore_structure_)

__all__ = ["HfOptimConfig", "HfOptimQuantizer", "register", "restore_structure_", "QUANT_METHOD", "FORMAT_VERSION"]

_INSTALL_HINT = "install and import hf_optim (`pip install hf-optim`, then `import hf_optim`) before from_pretrained"


class HfOptimQuantizer(HfQuantizer):
    """Rebuilds hf_optim's modules before the weights load, and quantizes at load time on request."""

    requires_calibration = False
    requires_parameters_quantization = False
    required_packages = None

    def __init__(self, quantization_config: HfOptimConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _process_model_before_weight_loading(self, model, **kwargs: Any):
        cfg = self.quantization_config
        self._checkpoint_files = kwargs.get("checkpoint_files")  # transformers 5 passes them, 4.57 does not
        if cfg.modules is not None or cfg.linear_shapes or cfg.module_attrs:
            restore_structure_(model, cfg)
        return model

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        # transformers 4.57: a missing quantized tensor would be left as uninitialised memory; refuse instead.
        expected = set(quantized_keys(model))
        raise_missing([k for k in missing_keys if k in expected or f"{prefix}.{k}" in expected
                        or k.split(".", 1)[-1] in expected])
        return missing_keys

    def _check_checkpoint_keys(self, model) -> None:
        files = [f for f in (getattr(self, "_checkpoint_files", None) or []) if str(f).endswith(".safetensors")]
        if not files:
            return
        from safetensors import safe_open

        present = []
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                present += list(handle.keys())
        raise_missing(absent_keys(quantized_keys(model), present))

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        cfg = self.quantization_config
        if cfg.quantizes_at_load:
            from ..quantize.apply import quantize_model_
            from ..quantize.config import DEFAULT_EXCLUDE, QuantizeConfig

            quantize_model_(model, QuantizeConfig(
                model=str(getattr(model, "name_or_path", "")), scheme=cfg.scheme, group_size=cfg.group_size,
                include=cfg.include or (), exclude=DEFAULT_EXCLUDE if cfg.exclude is None else cfg.exclude))
            cfg = model.config.quantization_config  # quantize_model_ wrote the concrete description
            self.quantization_config = cfg
        else:
            self._check_checkpoint_keys(model)
        check_loaded_(model)
        if cfg.dtype is not None:
            # nn.Module.to, not PreTrainedModel.to: transformers refuses dtype casts of quantized models.
            nn.Module.to(model, DTYPES[cfg.dtype])
        model.config.quantization_config = cfg
        return model

    def is_serializable(self, safe_serialization=None, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Pruned-only models train normally; quantized ones are inference artifacts.
        return not self.quantization_config.has_quantized_modules

    @property
    def is_qat_trainable(self) -> bool:
        return False


_lock = threading.Lock()


def register() -> None:
    """Register ``quant_method: "hf_optim"`` with transformers (idempotent; safe to call many times)."""
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                              register_quantization_config, register_quantizer)

    with _lock:
        if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not HfOptimConfig:
            AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)  # a stale class from a module reload
            register_quantization_config(QUANT_METHOD)(HfOptimConfig)
        if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not HfOptimQuantizer:
            AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
            register_quantizer(QUANT_METHOD)(HfOptimQuantizer)


register()
