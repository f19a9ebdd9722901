"""Quantized replacements for ``nn.Linear`` and the fake-quantized Linear used for QAT.

On-disk format (safetensors, one entry per module in ``quantization_config.modules``):

* ``weight``: the quantized values **flattened to 1-D** (int8 ``[out * in]``, or uint8 ``[out * in / 2]`` for
  int4, two values per byte). A loader without hf_optim expects a 2-D float ``weight`` and stops with a size
  mismatch instead of silently reading int8 values as floats.
* ``weight_scale``: float32 ``[out, groups]`` (``groups = 1`` per channel).
* asymmetric weight-only only (spec ``"symmetric": false``): ``weight_zero_point`` float32 ``[out, groups]``;
  values are ``[-2^(b-1), 2^(b-1)-1]`` and ``w = (q - zero_point) * scale``.
* embeddings (spec ``"kind": "embedding"``, :class:`QuantEmbedding`): the same tensors for the ``[num, dim]``
  table (``out_features = num_embeddings``, ``in_features = embedding_dim``), no bias.
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
from .kernels import check_qparams
from .schemes import SCHEMES as _TABLE, WEIGHT_ONLY_SCHEMES

__all__ = ["QuantLinear", "Int8DynamicLinear", "Int8StaticLinear", "WeightOnlyLinear", "Int4WeightOnlyLinear",
           "Int8WeightOnlyLinear", "QuantEmbedding", "FakeQuantLinear", "SCHEMES", "module_for_scheme",
           "module_from_spec"]


class QuantLinear(nn.Module):
    """Base of the quantized Linear modules. Subclasses set ``scheme``, ``bits`` and implement ``forward``."""

    scheme: ClassVar[str] = ""
    bits: ClassVar[int] = 8
    packed_int4: ClassVar[bool] = False

    weight_only: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None, symmetric: bool = True, partial_groups: bool = False):
        super().__init__()
        kernels.check_group_size(group_size, in_features, partial=partial_groups)
        if not symmetric and not self.weight_only:
            raise ValueError(f"{self.scheme} stores symmetric weights; asymmetric (zero points) is for the "
                             "weight-only schemes int8_weight_only / int4_weight_only")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.symmetric = symmetric
        groups = kernels.num_groups(in_features, group_size)
        numel = out_features * in_features
        if self.packed_int4:
            if numel % 2:
                raise ValueError(f"int4 packing needs an even number of weights, got {out_features}x{in_features}")
            self.register_buffer("weight", torch.zeros(numel // 2, dtype=torch.uint8, device=device))
        else:
            self.register_buffer("weight", torch.zeros(numel, dtype=torch.int8, device=device))
        # NaN until loaded: a checkpoint that lacks the scale cannot pass for a quantized one.
        self.register_buffer("weight_scale", torch.full((out_features, groups), float("nan"), device=device))
        if not symmetric:
            self.register_buffer("weight_zero_point", torch.full((out_features, groups), float("nan"), device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._cache_key: tuple | None = None
        self._cache: Any = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None, symmetric: bool = True,
                    partial_groups: bool = False, integer_zero_points: bool = False, **extra: Any) -> "QuantLinear":
        """Quantize a float ``nn.Linear`` by round-to-nearest (its weights are read, not changed)."""
        q, scale, zp = kernels.quantize_weight_affine(linear.weight, cls.bits, group_size, symmetric, partial_groups,
                                                      integer_zero_points)
        mod = cls.from_quantized(q, scale, zp, linear.bias, group_size=group_size)
        mod._init_extra(linear, **extra)
        return mod

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
                       bias: torch.Tensor | None = None, group_size: int | None = None, **kwargs: Any):
        """Build the module from already quantized values (int8 ``[out, in]``), scales and zero points."""
        out_f, in_f = q.shape
        partial = bool(group_size and in_f % group_size)
        mod = cls(in_f, out_f, bias is not None, group_size=group_size, device=q.device,
                  symmetric=zero_point is None, **({"partial_groups": True} if partial else {}), **kwargs)
        with torch.no_grad():
            mod.weight.copy_(kernels.pack_int4(q) if cls.packed_int4 else q.reshape(-1))
            mod.weight_scale.copy_(scale)
            if zero_point is not None:
                mod.weight_zero_point.copy_(zero_point)
            if bias is not None:
                mod.bias.copy_(bias.detach().float())
        return mod

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None) -> "QuantLinear":
        """An empty module (to be filled by ``load_state_dict``) for a ``quantization_config.modules`` entry."""
        return cls(spec["in_features"], spec["out_features"], bias=bool(spec.get("bias", True)),
                   group_size=spec.get("group_size"), device=device, symmetric=bool(spec.get("symmetric", True)),
                   partial_groups=bool(spec.get("partial_groups", False)))

    def _init_extra(self, linear: nn.Linear, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{type(self).__name__} takes no extra arguments, got {sorted(extra)}")

    def spec(self) -> dict[str, Any]:
        """The module's entry in ``quantization_config.modules``."""
        out = {"scheme": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
               "bias": self.bias is not None, "group_size": self.group_size}
        if not self.symmetric:  # only written when set: older checkpoints stay byte-identical
            out["symmetric"] = False
        if self.group_size and self.in_features % self.group_size:
            out["partial_groups"] = True
        return out

    # -- helpers --------------------------------------------------------------------------------------
    def int_weight(self) -> torch.Tensor:
        """The quantized values as int8 ``[out, in]``."""
        if self.packed_int4:
            return kernels.unpack_int4(self.weight, self.out_features, self.in_features)
        return self.weight.reshape(self.out_features, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.dequantize_weight(self.int_weight(), self.weight_scale, dtype,
                                         None if self.symmetric else self.weight_zero_point, self.group_size)

    def check_loaded(self, name: str = "") -> None:
        """Raise ``ValueError`` if a tensor is missing (still on meta / NaN) or has the wrong shape."""
        for key, t in list(self.named_buffers(recurse=False)) + list(self.named_parameters(recurse=False)):
            if t.device.type == "meta":
                raise ValueError(f"hf_optim: tensor {name}.{key} is missing from the checkpoint")
        expected = self.out_features * self.in_features // (2 if self.packed_int4 else 1)
        if self.weight.numel() != expected:
            raise ValueError(f"hf_optim: {name}.weight has {self.weight.numel()} values, expected {expected} "
                             f"for {self.out_features}x{self.in_features} {self.scheme}")
        check_qparams(name, self.bits, self.weight_scale, None if self.symmetric else self.weight_zero_point)

    def _key(self) -> tuple:
        # Packed kernels are derived state: rebuild when a tensor was replaced or modified (load, .to()).
        ts = [self.weight, self.weight_scale] + ([self.bias] if self.bias is not None else [])
        ts += [] if self.symmetric else [self.weight_zero_point]
        return tuple((t.data_ptr(), t._version, t.device) for t in ts)

    def extra_repr(self) -> str:
        gs = f", group_size={self.group_size}" if self.group_size else ""
        gs += "" if self.symmetric else ", symmetric=False"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}{gs}")


class Int8DynamicLinear(QuantLinear):
    """int8 per-channel weights; activations quantized at run time (FBGEMM), per tensor or per token.

    ``activations="token"`` (spec ``"activations": "token"``) gives every row its own scale: what causal LMs
    need (outlier channels), and at batch-1 decoding exactly what the int8 kernel computes for one row.
    """

    scheme = "int8_dynamic"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None, symmetric: bool = True, activations: str = "tensor", partial_groups: bool = False):
        super().__init__(in_features, out_features, bias, group_size, device, symmetric, partial_groups)
        if group_size is not None:
            raise ValueError(f"{self.scheme} uses one scale per output channel; group_size must be unset")
        if activations not in ("tensor", "token"):
            raise ValueError(f"activations={activations!r}: use 'tensor' or 'token'")
        self.activations = activations

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None) -> "Int8DynamicLinear":
        mod = super().from_spec(spec, device)
        mod.activations = spec.get("activations", "tensor")
        return mod

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self.activations != "tensor":
            out["activations"] = self.activations
        return out

    def _packed(self):
        key = self._key()
        if self._cache_key != key:
            dq = self.dequantized_weight() if getattr(self, "activations", "tensor") == "token" else None
            self._cache = (kernels.pack_int8(self.int_weight(), self.weight_scale, self.bias), dq)
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed, dq = self._packed()
        if dq is not None:
            return kernels.linear_token_int8(x, packed, dq, self.bias)
        return kernels.linear_dynamic_int8(x, packed)


class Int8StaticLinear(Int8DynamicLinear):
    """int8 per-channel weights; activation scale and zero point fixed by calibration (or QAT)."""

    scheme = "int8_static"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None, symmetric: bool = True, partial_groups: bool = False):
        super().__init__(in_features, out_features, bias, group_size, device, symmetric,
                         partial_groups=partial_groups)
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
        return kernels.linear_static_int8(x, self._packed()[0], float(self.input_scale), int(self.input_zero_point))


class WeightOnlyLinear(QuantLinear):
    """Weights stored quantized (group-wise scales, optional zero points); activations stay float. On CPU a packed
    kernel runs the matmul where one applies (:attr:`kernel`; packed at the first forward, never saved); elsewhere,
    and while gradients flow to the input or the quantization parameters, the weight is dequantized on the fly.
    ``use_kernel = False`` (or ``HF_OPTIM_INT4_KERNEL=0``) forces dequantizing."""

    weight_only = True
    use_kernel: bool | None = None  # None: follow HF_OPTIM_INT4_KERNEL

    @property
    def kernel(self) -> str:
        """The path of a float input on this module's device: ``"int4pack"``, ``"int8pack"`` or ``"dequantize"``."""
        on = kernels.kernels_enabled() if self.use_kernel is None else self.use_kernel
        if not on or self.weight.device.type != "cpu":
            return "dequantize"
        return kernels.weight_only_kernel(self.bits, self.in_features, self.out_features, self.group_size)[0]

    def _packed(self, x: torch.Tensor) -> kernels.PackedWeight | None:
        zp = None if self.symmetric else self.weight_zero_point
        if (x.dtype not in kernels.KERNEL_DTYPES or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.is_grad_enabled() and (x.requires_grad or self.weight_scale.requires_grad
                                                or zp is not None and zp.requires_grad)):
            return None
        kernel = self.kernel
        if kernel == "dequantize" or x.device.type != "cpu":
            return None
        # Packed weights are derived state: rebuilt when a tensor was replaced (.to(), assignment) or changed in place.
        src = (self.weight, self.weight_scale, zp)
        versions = tuple(-1 if t is None else t._version for t in src)
        old = self._cache_key
        if old is None or old[0] != kernel or old[2] != versions or any(a is not b for a, b in zip(old[1], src)):
            gs = kernels.weight_only_kernel(self.bits, self.in_features, self.out_features, self.group_size)[1]
            self._cache = kernels.pack_weight_only(kernel, gs, self.weight, self.weight_scale, zp, self.group_size,
                                                   (self.out_features, self.in_features))
            self._cache_key = (kernel, src, versions)
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed(x)
        if packed is not None:
            return kernels.linear_packed(x, packed, self.bias, self.dequantized_weight)
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


class Int8WeightOnlyLinear(WeightOnlyLinear):
    scheme = "int8_weight_only"
    bits = 8


class Int4WeightOnlyLinear(WeightOnlyLinear):
    scheme = "int4_weight_only"
    bits = 4
    packed_int4 = True


class QuantEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table is stored int8 or packed int4 (per row or group-wise, optional zero points).

    Only the looked-up rows are unpacked and dequantized, so a forward costs what the tokens need, not the table.
    """

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 8, group_size: int | None = None,
                 symmetric: bool = True, padding_idx: int | None = None, device=None):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"QuantEmbedding stores 8 or 4 bits, got {bits}")
        kernels.check_group_size(group_size, embedding_dim, "the embedding table")
        if bits == 4 and embedding_dim % 2:
            raise ValueError(f"int4 packing needs an even embedding_dim, got {embedding_dim}")
        self.num_embeddings, self.embedding_dim, self.bits = num_embeddings, embedding_dim, bits
        self.group_size, self.symmetric, self.padding_idx = group_size, symmetric, padding_idx
        groups = embedding_dim // group_size if group_size else 1
        per_row = embedding_dim // 2 if bits == 4 else embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings * per_row, device=device,
                                                   dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("weight_scale", torch.full((num_embeddings, groups), float("nan"), device=device))
        if not symmetric:
            self.register_buffer("weight_zero_point", torch.full((num_embeddings, groups), float("nan"),
                                                                 device=device))

    @property
    def scheme(self) -> str:
        return next(n for n in WEIGHT_ONLY_SCHEMES if _TABLE[n].weight_bits == self.bits)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8, group_size: int | None = None,
                       symmetric: bool = True) -> "QuantEmbedding":
        q, scale, zp = kernels.quantize_weight_affine(emb.weight, bits, group_size, symmetric)
        mod = cls(emb.num_embeddings, emb.embedding_dim, bits, group_size, symmetric, emb.padding_idx,
                  device=emb.weight.device)
        with torch.no_grad():
            mod.weight.copy_(kernels.pack_int4(q) if bits == 4 else q.reshape(-1))
            mod.weight_scale.copy_(scale)
            if zp is not None:
                mod.weight_zero_point.copy_(zp)
        return mod

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None) -> "QuantEmbedding":
        bits = _TABLE[spec["scheme"]].weight_bits
        return cls(spec["out_features"], spec["in_features"], bits, spec.get("group_size"),
                   bool(spec.get("symmetric", True)), spec.get("padding_idx"), device=device)

    def spec(self) -> dict[str, Any]:
        out = {"scheme": self.scheme, "kind": self.kind, "in_features": self.embedding_dim,
               "out_features": self.num_embeddings, "bias": False, "group_size": self.group_size,
               "padding_idx": self.padding_idx}
        if not self.symmetric:
            out["symmetric"] = False
        return out

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantized rows ``[len(ids), dim]`` for a 1-D tensor of ids."""
        dim = self.embedding_dim
        if self.bits == 4:
            packed = self.weight.view(self.num_embeddings, dim // 2)[ids]
            q = kernels.unpack_int4(packed.reshape(-1), ids.numel(), dim)
        else:
            q = self.weight.view(self.num_embeddings, dim)[ids]
        zp = None if self.symmetric else self.weight_zero_point[ids]
        return kernels.dequantize_weight(q, self.weight_scale[ids], dtype, zp, self.group_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        return self.rows(flat).reshape(*input_ids.shape, self.embedding_dim)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings, device=self.weight.device), dtype)

    def check_loaded(self, name: str = "") -> None:
        for key, t in self.named_buffers(recurse=False):
            if t.device.type == "meta":
                raise ValueError(f"hf_optim: tensor {name}.{key} is missing from the checkpoint")
        expected = self.num_embeddings * self.embedding_dim // (2 if self.bits == 4 else 1)
        if self.weight.numel() != expected:
            raise ValueError(f"hf_optim: {name}.weight has {self.weight.numel()} values, expected {expected}")
        check_qparams(name, self.bits, self.weight_scale, None if self.symmetric else self.weight_zero_point)

    def extra_repr(self) -> str:
        gs = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}{gs}, symmetric={self.symmetric}"


# The module class of each scheme stored as quantized Linears (int8_qat is stored as int8_static).
SCHEMES: dict[str, type[QuantLinear]] = {name: globals()[s.module] for name, s in _TABLE.items()
                                         if s.module and globals()[s.module].scheme == name}


def module_from_spec(spec: dict[str, Any], device=None) -> nn.Module:
    """The empty quantized module a ``quantization_config.modules`` entry describes (Linear or embedding)."""
    if spec.get("kind", "linear") == "embedding":
        if spec.get("scheme") not in WEIGHT_ONLY_SCHEMES:
            raise ValueError(f"quantized embeddings use {' or '.join(WEIGHT_ONLY_SCHEMES)}, got {spec.get('scheme')!r}")
        return QuantEmbedding.from_spec(spec, device)
    if spec.get("kind", "linear") != "linear":
        raise ValueError(f"unknown hf_optim module kind {spec.get('kind')!r}; known: linear, embedding")
    return module_for_scheme(spec["scheme"]).from_spec(spec, device)


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
