"""Quantized replacements for ``nn.Linear`` and the fake-quantized Linear used for QAT.

On-disk format (safetensors, one entry per module in ``quantization_config.modules``):

* ``weight``: the quantized values **flattened to 1-D** (int8 ``[out * in]``, or uint8 ``[out * in / 2]`` for
  int4, two values per byte). A loader without hf_optim expects a 2-D float ``weight`` and stops with a size
  mismatch instead of silently reading int8 values as floats.
* ``weight_scale``: float32 ``[out, groups]`` (``groups = 1`` per channel).
* ``bias``: float32 ``[out]`` (when the Linear has one).
* static int8 only: ``input_scale`` float32 ``[1]`` and ``input_zero_point`` int32 ``[1]`` from calibration.

Quantized values and scales are buffers, not parameters (int Parameters cannot exist; nothing here trains).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels

__all__ = ["QuantLinear", "Int8DynamicLinear", "Int8StaticLinear", "WeightOnlyLinear", "Int4WeightOnlyLinear",
           "Int8WeightOnlyLinear", "FakeQuantLinear", "SCHEMES", "module_for_scheme"]


class QuantLinear(nn.Module):
    """Base of the quantized Linear modules. Subclasses set ``scheme``, ``bits`` and implement ``forward``."""

    scheme: ClassVar[str] = ""
    bits: ClassVar[int] = 8
    packed_int4: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None):
        super().__init__()
        if group_size is not None and (group_size < 1 or in_features % group_size):
            raise ValueError(f"group_size={group_size} must divide in_features={in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size if group_size else 1
        numel = out_features * in_features
        if self.packed_int4:
            if numel % 2:
                raise ValueError(f"int4 packing needs an even number of weights, got {out_features}x{in_features}")
            self.register_buffer("weight", torch.zeros(numel // 2, dtype=torch.uint8, device=device))
        else:
            self.register_buffer("weight", torch.zeros(numel, dtype=torch.int8, device=device))
        # NaN until loaded: a checkpoint that lacks the scale cannot pass for a quantized one.
        self.register_buffer("weight_scale", torch.full((out_features, groups), float("nan"), device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._cache_key: tuple | None = None
        self._cache: Any = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None, **extra: Any) -> "QuantLinear":
        """Quantize a float ``nn.Linear`` (its weights are read, not changed)."""
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size=group_size,
                  device=linear.weight.device)
        q, scale = kernels.quantize_weight(linear.weight, cls.bits, group_size)
        with torch.no_grad():
            mod.weight.copy_(kernels.pack_int4(q) if cls.packed_int4 else q.reshape(-1))
            mod.weight_scale.copy_(scale)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias.detach().float())
        mod._init_extra(linear, **extra)
        return mod

    def _init_extra(self, linear: nn.Linear, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{type(self).__name__} takes no extra arguments, got {sorted(extra)}")

    def spec(self) -> dict[str, Any]:
        """The module's entry in ``quantization_config.modules``."""
        return {"scheme": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "group_size": self.group_size}

    # -- helpers --------------------------------------------------------------------------------------
    def int_weight(self) -> torch.Tensor:
        """The quantized values as int8 ``[out, in]``."""
        if self.packed_int4:
            return kernels.unpack_int4(self.weight, self.out_features, self.in_features)
        return self.weight.reshape(self.out_features, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.dequantize_weight(self.int_weight(), self.weight_scale, dtype)

    def check_loaded(self, name: str = "") -> None:
        """Raise ``ValueError`` if a tensor is missing (still on meta / NaN) or has the wrong shape."""
        for key, t in list(self.named_buffers(recurse=False)) + list(self.named_parameters(recurse=False)):
            if t.device.type == "meta":
                raise ValueError(f"hf_optim: tensor {name}.{key} is missing from the checkpoint")
        expected = self.out_features * self.in_features // (2 if self.packed_int4 else 1)
        if self.weight.numel() != expected:
            raise ValueError(f"hf_optim: {name}.weight has {self.weight.numel()} values, expected {expected} "
                             f"for {self.out_features}x{self.in_features} {self.scheme}")
        if not bool(torch.isfinite(self.weight_scale).all()) or bool((self.weight_scale <= 0).any()):
            raise ValueError(f"hf_optim: {name}.weight_scale is missing from the checkpoint or invalid "
                             "(non-finite or <= 0 scales)")

    def _key(self) -> tuple:
        # Packed kernels are derived state: rebuild when a tensor was replaced or modified (load, .to()).
        ts = [self.weight, self.weight_scale] + ([self.bias] if self.bias is not None else [])
        return tuple((t.data_ptr(), t._version, t.device) for t in ts)

    def extra_repr(self) -> str:
        gs = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}{gs}")


class Int8DynamicLinear(QuantLinear):
    """int8 per-channel weights; activations quantized per tensor at run time (FBGEMM)."""

    scheme = "int8_dynamic"

    def _packed(self):
        key = self._key()
        if self._cache_key != key:
            self._cache = kernels.pack_int8(self.int_weight(), self.weight_scale, self.bias)
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear_dynamic_int8(x, self._packed())


class Int8StaticLinear(Int8DynamicLinear):
    """int8 per-channel weights; activation scale and zero point fixed by calibration (or QAT)."""

    scheme = "int8_static"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None):
        super().__init__(in_features, out_features, bias, group_size, device)
        self.register_buffer("input_scale", torch.full((1,), float("nan"), device=device))
        self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32, device=device))

    def _init_extra(self, linear: nn.Linear, input_min: float = None, input_max: float = None) -> None:
        if input_min is None or input_max is None:
            raise ValueError("Int8StaticLinear needs the calibrated input range (input_min, input_max)")
        scale, zp = activation_qparams(input_min, input_max)
        self.input_scale.fill_(scale)
        self.input_zero_point.fill_(zp)

    def check_loaded(self, name: str = "") -> None:
        super().check_loaded(name)
        if not (math.isfinite(float(self.input_scale)) and float(self.input_scale) > 0):
            raise ValueError(f"hf_optim: {name}.input_scale is missing from the checkpoint or invalid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear_static_int8(x, self._packed(), float(self.input_scale), int(self.input_zero_point))


class WeightOnlyLinear(QuantLinear):
    """Weights stored quantized (group-wise scales) and dequantized on the fly; activations stay float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8WeightOnlyLinear(WeightOnlyLinear):
    scheme = "int8_weight_only"
    bits = 8


class Int4WeightOnlyLinear(WeightOnlyLinear):
    scheme = "int4_weight_only"
    bits = 4
    packed_int4 = True


SCHEMES: dict[str, type[QuantLinear]] = {c.scheme: c for c in (Int8DynamicLinear, Int8StaticLinear,
                                                               Int8WeightOnlyLinear, Int4WeightOnlyLinear)}


def module_for_scheme(scheme: str) -> type[QuantLinear]:
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(f"unknown hf_optim quantization scheme {scheme!r}; known: {', '.join(sorted(SCHEMES))}. "
                         "The checkpoint may come from a newer hf_optim: `pip install -U hf-optim`") from None


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric per-tensor ``(scale, zero_point)`` for the 7-bit activation range, with 0 exactly representable."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = kernels.ACT_QMIN, kernels.ACT_QMAX
    scale = max((hi - lo) / (qmax - qmin), 1e-8)
    zp = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return scale, zp


class FakeQuantLinear(nn.Module):
    """A Linear that trains through int8 fake quantization (straight-through estimator).

    It shares the original Linear's ``weight`` and ``bias`` Parameters, so an optimizer created before the
    swap keeps updating them. The input range is tracked with an exponential moving average of the batch
    min/max while ``observe`` is on; :meth:`to_quantized` turns it into an :class:`Int8StaticLinear`.
    """

    def __init__(self, linear: nn.Linear, momentum: float = 0.01):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.momentum = momentum
        self.observe = True
        self.register_buffer("input_min", torch.full((), float("nan"), device=linear.weight.device))
        self.register_buffer("input_max", torch.full((), float("nan"), device=linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe and self.training or torch.isnan(self.input_min):
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if torch.isnan(self.input_min):
                    self.input_min.copy_(lo)
                    self.input_max.copy_(hi)
                else:
                    self.input_min.lerp_(lo, self.momentum)
                    self.input_max.lerp_(hi, self.momentum)
        scale, zp = activation_qparams(float(self.input_min), float(self.input_max))
        xq = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, kernels.ACT_QMIN, kernels.ACT_QMAX)
        with torch.no_grad():
            wscale = (self.weight.detach().float().abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        wq = torch.fake_quantize_per_channel_affine(self.weight.float(), wscale,
                                                     torch.zeros_like(wscale, dtype=torch.int32), 0, -127, 127)
        return F.linear(xq, wq, self.bias).to(x.dtype)

    def to_quantized(self) -> Int8StaticLinear:
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return Int8StaticLinear.from_linear(lin, input_min=float(self.input_min), input_max=float(self.input_max))
