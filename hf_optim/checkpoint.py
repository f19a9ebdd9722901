"""The on-disk format of hf_optim checkpoints: ``quant_method: "hf_optim"`` in ``config.json``.

One ``quantization_config`` entry in ``config.json`` describes everything hf_optim changed in a model's
structure, so a single loader rebuilds it on the empty skeleton before the weights are read:

.. code-block:: json

    "quantization_config": {
      "quant_method": "hf_optim", "format_version": 1,
      "linear_shapes": {"bert.encoder.layer.0.intermediate.dense": {"in_features": 384, "out_features": 768, "bias": true}},
      "module_attrs":  {"bert.encoder.layer.0.attention.self": {"num_attention_heads": 9, "all_head_size": 288}},
      "modules":       {"bert.encoder.layer.0.attention.self.query": {"scheme": "int8_dynamic", "in_features": 384,
                        "out_features": 288, "bias": true, "group_size": null}},
      "dtype": null, "scheme": "int8_dynamic"
    }

* ``linear_shapes``: ``nn.Linear`` layers whose size differs from what the model config implies (structured
  pruning); they are recreated with that size.
* ``module_attrs``: plain attributes set on modules (per-layer head counts after head pruning).
* ``modules``: Linear layers replaced by quantized modules (:mod:`hf_optim.quantize.modules`), applied after
  ``linear_shapes`` (their own ``in_features``/``out_features`` win).
* ``dtype``: ``float16``/``bfloat16`` when the whole model was cast (restored even where transformers would
  load float32 by default).
* ``scheme`` (+ ``group_size``, ``include``, ``exclude``) with ``modules`` unset: quantize at load time,
  ``from_pretrained(base_dir, quantization_config=HfOptimConfig(scheme="int8_dynamic"))``.

This module is the format alone (what the fields mean, how a model is rebuilt from them, what a complete checkpoint
holds); :mod:`hf_optim.integrations.transformers` plugs it into ``from_pretrained``. Every technique that swaps a
module goes through :func:`set_module`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
# A submodule import: this may run while transformers.quantizers/__init__ is still executing (import hook).
from transformers.utils.quantization_config import QuantizationConfigMixin

from .quantize.modules import SCHEMES as MODULE_SCHEMES
from .quantize.modules import QuantEmbedding, QuantLinear, module_from_spec
from .quantize.schemes import AT_LOAD_SCHEMES

__all__ = ["HfOptimConfig", "QUANT_METHOD", "FORMAT_VERSION", "AT_LOAD_SCHEMES", "DTYPES", "MODULE_ATTRS",
           "set_module", "restore_structure_", "check_loaded_", "quantized_keys", "absent_keys", "raise_missing"]

logger = logging.getLogger("hf_optim")

QUANT_METHOD = "hf_optim"
FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _err(message: str) -> ValueError:
    return ValueError(f"hf_optim quantization_config: {message}")


class HfOptimConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of hf_optim checkpoints (see the module docstring for the fields).

    Args:
        scheme (`str`, *optional*): with ``modules`` unset, quantize at load time with this scheme
            (``int8_dynamic``, ``int8_weight_only``, ``int4_weight_only``, ``fp16``, ``bf16``).
        group_size (`int`, *optional*): weight-only group size for quantization at load time.
        include (`list[str]`, *optional*) / exclude (`list[str]`, *optional*): module-name regexes for
            quantization at load time (defaults as in :class:`~hf_optim.quantize.QuantizeConfig`).
        modules (`dict`, *optional*): quantized modules of a saved checkpoint, ``{name: spec}``.
        linear_shapes (`dict`, *optional*): ``{name: {"in_features", "out_features", "bias"}}``.
        module_attrs (`dict`, *optional*): ``{name: {attribute: value}}``.
        dtype (`str`, *optional*): ``float16`` or ``bfloat16`` for cast models.
        format_version (`int`, *optional*, defaults to 1): on-disk format version.
    """

    def __init__(self, scheme: str | None = None, group_size: int | None = None, include=None, exclude=None,
                 modules: dict | None = None, linear_shapes: dict | None = None, module_attrs: dict | None = None,
                 dtype: str | None = None, format_version: int = FORMAT_VERSION, provenance: dict | None = None,
                 **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.scheme = scheme
        self.group_size = group_size
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude) if exclude is not None else None
        self.modules = None if modules is None else {k: dict(v) for k, v in modules.items()}
        self.linear_shapes = {k: dict(v) for k, v in (linear_shapes or {}).items()}
        self.module_attrs = {k: dict(v) for k, v in (module_attrs or {}).items()}
        self.dtype = dtype
        self.provenance = dict(provenance or {})
        unknown = sorted(k for k in kwargs if k not in ("quant_method",))
        if unknown:
            logger.warning("hf_optim quantization_config: ignoring unknown field(s) %s", ", ".join(unknown))
        self.post_init()

    def post_init(self) -> None:
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise _err(f"format_version {self.format_version!r} is newer than this hf_optim reads "
                       f"(<= {FORMAT_VERSION}); upgrade with `pip install -U hf-optim`")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise _err(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.modules is None:
            if self.scheme is not None and self.scheme not in AT_LOAD_SCHEMES:
                raise _err(f"scheme {self.scheme!r} cannot be applied at load time (allowed: "
                           f"{', '.join(AT_LOAD_SCHEMES)}); int8_static and int8_qat need data: run the "
                           "`quantize` stage or hf_optim.quantize.quantize_model_ and save the result")
            return
        for name, spec in self.modules.items():
            scheme = spec.get("scheme")
            if scheme not in MODULE_SCHEMES:
                raise _err(f"module {name!r} has unknown scheme {scheme!r} (known: "
                           f"{', '.join(sorted(MODULE_SCHEMES))}); the checkpoint is corrupt or from a newer hf_optim")
            for key in ("in_features", "out_features"):
                if not isinstance(spec.get(key), int) or spec[key] < 1:
                    raise _err(f"module {name!r}: {key} must be a positive integer, got {spec.get(key)!r}")
            gs = spec.get("group_size")
            if gs is not None and (not isinstance(gs, int) or gs < 1
                                   or (spec["in_features"] % gs and not spec.get("partial_groups"))):
                raise _err(f"module {name!r}: group_size {gs!r} does not divide in_features {spec['in_features']}")
        for name, shape in self.linear_shapes.items():
            for key in ("in_features", "out_features"):
                if not isinstance(shape.get(key), int) or shape[key] < 1:
                    raise _err(f"linear_shapes[{name!r}]: {key} must be a positive integer, got {shape.get(key)!r}")

    @property
    def quantizes_at_load(self) -> bool:
        return self.modules is None and self.scheme is not None

    @property
    def has_quantized_modules(self) -> bool:
        return bool(self.modules) or self.dtype is not None or self.quantizes_at_load

    def to_dict(self) -> dict[str, Any]:
        out = {"quant_method": QUANT_METHOD, "format_version": self.format_version, "scheme": self.scheme,
               "group_size": self.group_size, "include": self.include, "exclude": self.exclude,
               "modules": self.modules, "linear_shapes": self.linear_shapes, "module_attrs": self.module_attrs,
               "dtype": self.dtype}
        if self.provenance:
            out["provenance"] = self.provenance
        return out

    def to_diff_dict(self) -> dict[str, Any]:  # transformers 4.57 calls it when printing a config
        return self.to_dict()

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        config = cls(**{**config_dict, **kwargs})
        return (config, {}) if return_unused_kwargs else config

    def __repr__(self) -> str:
        n = len(self.modules or {})
        return (f"HfOptimConfig(scheme={self.scheme!r}, modules={n}, linear_shapes={len(self.linear_shapes)}, "
                f"module_attrs={len(self.module_attrs)}, dtype={self.dtype!r})")


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` of ``model``, in place of what is there: the one way pruning,
    quantization and the loader swap a module.

    Args:
        model (`nn.Module`): the model to change (in place).
        name (`str`): a submodule's dotted name, as ``named_modules`` gives it (``"bert.encoder.layer.0.output.dense"``).
        module (`nn.Module`): the new module.

    Raises:
        ValueError: ``name`` is empty (the model itself cannot be replaced in place).
        AttributeError: ``model`` has no module at the parent path.
    """
    parent_name, _, child = name.rpartition(".")
    if not child:
        raise ValueError("set_module needs the dotted name of a submodule, not ''")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _get(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise _err(f"{what} names module {name!r}, which this {type(model).__name__} does not have; the "
                   "config does not belong to this architecture") from None


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        return t.device
    return torch.device("cpu")


# What structured pruning records (head counts of a pruned attention module). A checkpoint may set nothing else:
# config.json is data, and an arbitrary attribute (``eps``, ``forward``) would change what the model computes.
MODULE_ATTRS = ("num_attention_heads", "all_head_size", "num_heads", "num_key_value_heads", "num_key_value_groups")


def _check_module_attr(mod: nn.Module, name: str, attr, value) -> None:
    if attr not in MODULE_ATTRS:
        raise _err(f"module_attrs[{name!r}] sets {str(attr)[:60]!r}; a checkpoint may set only "
                   f"{', '.join(MODULE_ATTRS)}")
    current = getattr(mod, attr, None)
    if not isinstance(current, int) or isinstance(current, bool):
        raise _err(f"module_attrs[{name!r}]: {type(mod).__name__} has no integer attribute {attr!r}")
    # pruning only removes heads: a count above the architecture's own is not a pruned model
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= current:
        raise _err(f"module_attrs[{name!r}][{attr!r}] = {str(value)[:40]} must be an integer in 1..{current}")


def restore_structure_(model: nn.Module, config: HfOptimConfig) -> nn.Module:
    """Rebuild the modules ``config`` describes on ``model`` (in place; weights are left uninitialised).

    Used on the empty skeleton before ``from_pretrained`` loads the weights; structured pruning and
    quantization both go through it.
    """
    for name, shape in config.linear_shapes.items():
        old = _get(model, name, "linear_shapes")
        if not isinstance(old, nn.Linear):
            raise _err(f"linear_shapes[{name!r}] is a {type(old).__name__}, not an nn.Linear")
        dev, dtype = old.weight.device, old.weight.dtype
        set_module(model, name, nn.Linear(shape["in_features"], shape["out_features"],
                                              bias=bool(shape.get("bias", True)), device=dev, dtype=dtype))
    for name, attrs in config.module_attrs.items():
        mod = _get(model, name, "module_attrs")
        if not isinstance(attrs, dict):
            raise _err(f"module_attrs[{name!r}] must map attribute names to values")
        for attr, value in attrs.items():
            _check_module_attr(mod, name, attr, value)
            setattr(mod, attr, value)
    for name, spec in (config.modules or {}).items():
        old = _get(model, name, "modules")
        if not isinstance(old, (nn.Linear, nn.Embedding, QuantLinear, QuantEmbedding)):
            raise _err(f"modules[{name!r}] is a {type(old).__name__}; only nn.Linear and nn.Embedding are quantized")
        set_module(model, name, module_from_spec(spec, device=_device_of(old)))
    return model


def check_loaded_(model: nn.Module) -> None:
    """Raise ``ValueError`` when a quantized module's tensors are missing or inconsistent after loading."""
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            mod.check_loaded(name)


def quantized_keys(model: nn.Module) -> list[str]:
    """State-dict keys that only a complete hf_optim checkpoint provides (quantized values, scales, bias)."""
    keys = []
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            keys += [f"{name}.{k}" for k, _ in mod.named_buffers(recurse=False)]
            keys += [f"{name}.{k}" for k, _ in mod.named_parameters(recurse=False)]
    return keys


def absent_keys(expected: list[str], present) -> list[str]:
    """The ``expected`` state-dict keys absent from ``present``."""
    present = set(present)
    # A base model loaded from a head model's checkpoint sees keys with one extra leading component.
    stripped = {k.split(".", 1)[1] for k in present if "." in k}
    return [k for k in expected if k not in present and k not in stripped]


def raise_missing(missing: list[str]) -> None:
    """Raise ``ValueError`` naming (the first of) the ``missing`` tensors."""
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"hf_optim: tensor {', '.join(missing[:3])}{more} is missing from the checkpoint; "
                         "the checkpoint does not match its quantization_config (was it edited or truncated?)")
