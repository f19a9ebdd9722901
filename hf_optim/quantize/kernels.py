"""The one seam between hf_optim's quantized modules and the CPU kernels that run them.

Chosen by measurement on a 2-core AVX-512 VNNI CPU, torch 2.13 (``scripts/bench_quant_kernels.py``, one
thread, best of 15, MiniLM-L6 Linear shapes, 1024 and 32 rows): FBGEMM's int8 GEMM behind
``torch.ops.quantized`` runs 3.4-5.1x faster than fp32 ``F.linear`` at 1024 rows and 2.2-3.6x at 32 rows;
``torch._int_mm`` with the activation quantized in eager ops reaches 1.2-2.7x; ``torch._weight_int8pack_mm``
is 0.02x (a decode kernel) and ``torch._weight_int4pack_mm_for_cpu`` 0.8-1.0x (bf16 activations only).
At 32-1024 rows the weight-only schemes dequantize on the fly there (0.4-1.1x of fp32).

Weight-only Linears at decode sizes (a few rows) are another matter: with **bfloat16** activations,
``_weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` read the packed weights directly and beat fp32
``F.linear`` (SmolLM2-135M shapes, one thread: ~65 us vs ~100 us at one row), while dequantizing a weight costs
more than the matmul. :func:`weight_only_kernel` decides per module, once, whether a packed kernel applies,
:func:`pack_weight_only` packs (derived state, never saved) and :func:`linear_packed` runs it
(``scripts/bench_lm_kernels.py`` measures both paths; ``HF_OPTIM_INT4_KERNEL=0`` turns the kernels off).
``_dyn_quant_matmul_4bit`` (int8 activations) was measured too: on x86 it is a reference loop, 15-50x slower
than fp32.

The ``torch.ops.quantized`` ops are deprecated in favour of torchao; everything that touches them lives
here so they can be swapped without changing the stored format (int8 values + float32 scales).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from ..cpu import cpu_flags

__all__ = ["ACT_QMIN", "ACT_QMAX", "pack_int8", "linear_dynamic_int8", "linear_static_int8", "linear_token_int8",
           "quantize_weight", "quantize_weight_affine", "weight_qparams", "quantize_with_qparams",
           "dequantize_weight", "pack_int4", "unpack_int4", "check_group_size", "num_groups", "KERNEL_ENV",
           "kernels_enabled", "weight_only_kernel", "PackedWeight", "pack_weight_only", "linear_packed"]

# Activations are quantized to 7 bits (quint8 values 0..127). FBGEMM's u8*s8 path can saturate 16-bit
# intermediate sums on CPUs without VNNI when activations use the full 8 bits; the reduced range is the
# setting torch.ao uses for the same reason and keeps a checkpoint portable across x86 machines.
ACT_QMIN, ACT_QMAX = 0, 127
REDUCE_RANGE = True


def _has_vnni() -> bool:
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


# Per-token activations (causal LMs) use all 8 bits where the CPU has VNNI, whose int8 dot products accumulate
# in 32 bits and cannot saturate; elsewhere 7 bits as above. On SmolLM2-135M 7-bit per-token activations cost
# ~5 % perplexity and 8-bit ~1.5 %, so outputs of a per-token model depend on the CPU's int8 instructions.
TOKEN_REDUCE_RANGE = not _has_vnni()


def check_group_size(group_size: int | None, in_features: int, name: str = "", partial: bool = False) -> None:
    """Raise ``ValueError`` unless ``group_size`` (``None`` = per channel) divides ``in_features``.

    ``partial=True`` allows a shorter last group per row (``ceil(in_features / group_size)`` groups).
    """
    if group_size is None:
        return
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be a positive integer")
    if in_features % group_size and not partial:
        fits = [g for g in (16, 32, 64, 128, 256) if in_features % g == 0]
        where = f" of {name}" if name else ""
        raise ValueError(f"group_size={group_size} does not divide the input size {in_features}{where}; group sizes "
                         f"that fit: {', '.join(map(str, fits)) or 'none of 16..256'} (or allow a shorter last "
                         "group with partial_groups=True, or exclude the layer)")


def check_qparams(name: str, bits: int, scale: torch.Tensor, zero_point: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless the scales are finite and positive (non-zero for a symmetric int4 grid, whose
    scales are signed, see :func:`weight_qparams`), the zero points finite and on the integer grid's range, and
    every dequantized weight fits the range of float16 (the narrowest dtype hf_optim loads a model in): a scale
    of 1e30 is a tampered or corrupt checkpoint, never a trained one."""
    signed = zero_point is None and bits <= 4
    if not bool(torch.isfinite(scale).all()) or bool(((scale == 0) if signed else (scale <= 0)).any()):
        raise ValueError(f"hf_optim: {name}.weight_scale is missing from the checkpoint or invalid "
                         f"(non-finite or {'zero' if signed else '<= 0'} scales)")
    scale = scale.abs()
    levels = 2 ** bits
    if zero_point is not None and not (bool(torch.isfinite(zero_point).all())
                                       and float(zero_point.abs().max()) <= levels):
        raise ValueError(f"hf_optim: {name}.weight_zero_point is missing from the checkpoint, not finite or outside "
                         f"the {bits}-bit range")
    limit = torch.finfo(torch.float16).max
    if float(scale.max()) * levels > limit:
        raise ValueError(f"hf_optim: {name}.weight_scale holds {float(scale.max()):.3g}: weights of up to "
                         f"{float(scale.max()) * levels:.3g} exceed the float16 range ({limit:.0f}); the checkpoint "
                         "is corrupt or was tampered with")


def num_groups(in_features: int, group_size: int | None) -> int:
    return -(-in_features // group_size) if group_size else 1


def _pad_to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    # A shorter last group is padded with copies of its last column: its min/max (and so its grid) are unchanged.
    pad = num_groups(w.shape[1], group_size) * group_size - w.shape[1]
    return torch.cat([w, w[:, -1:].expand(-1, pad)], 1) if pad else w


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of ``bits``-bit values: ``[-2^(b-1), 2^(b-1)-1]``, except symmetric int8's ``[-127, 127]``:
    symmetric grids are GGML's Q8_0 and Q4_0 (all 16 levels, signed scales; see :func:`weight_qparams`)."""
    half = 2 ** (bits - 1)
    return (-(half - 1), half - 1) if symmetric and bits > 4 else (-half, half - 1)


def weight_qparams(w: torch.Tensor, bits: int, symmetric: bool = True,
                   integer_zero_point: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(scale, zero_point)`` over the last dim of ``w`` (one pair per group); ``zero_point`` is ``None`` if symmetric.

    Symmetric int8: ``scale = absmax / 127``. Symmetric int4: llama.cpp's Q4_0 rule, ``scale = x / -8`` for the
    group's largest-magnitude weight ``x``, which lands exactly on -8 (a weight past ``7 * |scale|`` on the other
    side clips to +7). SmolLM2-135M, group 32, round to nearest: perplexity 31.88, against 35.87 with levels -7..7
    and 34.01 with torchao's positive ``absmax / 7.5`` on -8..7 (FP32 25.66).

    Asymmetric: ``scale = (max - min) / (2^b - 1)`` and a float zero point that maps ``min`` to the lowest level,
    so ``w = (q - zero_point) * scale`` spans the group's exact range (a Q4_1-style ``min + q * d`` grid).
    ``integer_zero_point``: the range is widened to include 0 and the zero point rounded (ONNX Runtime's
    ``MatMulNBits`` grid), so it stays on the integer range.
    """
    w = w.float()
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        tiny = torch.finfo(torch.float32).tiny
        if qmin == -qmax:
            return (w.abs().amax(-1) / qmax).clamp(min=tiny), None
        extreme = w.gather(-1, w.abs().argmax(-1, keepdim=True))[..., 0]
        scale = extreme / qmin
        return torch.where(scale.abs() < tiny, torch.full_like(scale, tiny), scale), None
    lo, hi = w.amin(-1), w.amax(-1)
    if integer_zero_point:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        span = hi - lo
        scale = torch.where(span > 0, span / (qmax - qmin), torch.ones_like(span))
        return scale, (qmin - lo / scale).round().clamp(qmin, qmax)
    span = hi - lo
    # A constant group: scale 1 and a zero point that reproduces the constant exactly.
    scale = torch.where(span > 0, span / (qmax - qmin), torch.ones_like(span))
    return scale, qmin - lo / scale


def weight_qparams_mse(w: torch.Tensor, bits: int, symmetric: bool = True,
                       shrink: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7),
                       integer_zero_point: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`weight_qparams` with the range shrunk per group by the factor (of ``shrink``) that minimises the
    group's squared rounding error: clipping a few extreme weights buys a finer grid for all the others."""
    w = w.float()
    best_s, best_z, best_err = None, None, None
    for p in shrink:
        s, z = weight_qparams(w * p, bits, symmetric, integer_zero_point)
        err = (dequantize_grouped(quantize_with_qparams(w, s, z, bits, symmetric), s, z) - w).pow(2).sum(-1)
        if best_err is None:
            best_s, best_z, best_err = s, z, err
            continue
        better = err < best_err
        best_s = torch.where(better, s, best_s)
        best_z = None if z is None else torch.where(better, z, best_z)
        best_err = torch.minimum(err, best_err)
    return best_s, best_z


def dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """``(q - zero_point) * scale`` for ``q`` ``[..., n]`` and per-group ``scale``/``zero_point`` ``[...]``."""
    x = q.float()
    if zero_point is not None:
        x = x - zero_point[..., None]
    return x * scale[..., None]


def quantize_with_qparams(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int,
                          symmetric: bool = True) -> torch.Tensor:
    """Round ``w`` (``[..., n]``) onto the grid of ``scale``/``zero_point`` (``[...]``); int8 values."""
    qmin, qmax = qrange(bits, symmetric)
    x = w.float() / scale[..., None]
    if zero_point is not None:
        x = x + zero_point[..., None]
    return torch.round(x).clamp(qmin, qmax).to(torch.int8)


def quantize_weight_affine(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = True,
                           partial: bool = False, integer_zero_point: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest quantization of a ``[out, in]`` weight, per channel (``group_size=None``) or group-wise.

    Returns ``(q, scale, zero_point)``: ``q`` int8 ``[out, in]``, float32 ``scale`` and ``zero_point``
    ``[out, groups]`` (``zero_point`` is ``None`` when ``symmetric``). ``partial``: see :func:`check_group_size`;
    ``integer_zero_point``: see :func:`weight_qparams`.
    """
    w = weight.detach().float()
    out_f, in_f = w.shape
    check_group_size(group_size, in_f, partial=partial)
    gs = group_size or in_f
    g = _pad_to_groups(w, gs).reshape(out_f, num_groups(in_f, gs), gs)
    scale, zp = weight_qparams(g, bits, symmetric, integer_zero_point)
    q = quantize_with_qparams(g, scale, zp, bits, symmetric).reshape(out_f, -1)[:, :in_f]
    return q.contiguous(), scale, zp


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel (``group_size=None``) or group-wise quantization of a ``[out, in]`` weight.

    Returns ``(q, scale)``: ``q`` int8 ``[out, in]`` in :func:`qrange` ``(bits, True)`` and float32 ``scale``
    ``[out, in // group_size]`` (``[out, 1]`` per channel).
    """
    q, scale, _ = quantize_weight_affine(weight, bits, group_size, symmetric=True)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32,
                      zero_point: torch.Tensor | None = None, group_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`quantize_weight_affine`: ``(q - zero_point) * scale`` per group (``group_size`` needed
    only when the last group is shorter)."""
    out_f, in_f = q.shape
    groups = scale.shape[1]
    gs = group_size or in_f // groups
    w = _pad_to_groups(q, gs).reshape(out_f, groups, gs).to(torch.float32)
    if zero_point is not None:
        w = w - zero_point[..., None]
    return (w * scale[..., None]).reshape(out_f, -1)[:, :in_f].to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit values per byte: ``[out, in]`` int8 in [-8, 7] -> flat uint8 ``[out * in // 2]``."""
    u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(-1, 2)
    return (u[:, 0] | (u[:, 1] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: flat uint8 -> int8 ``[out, in]``."""
    lo = (packed & 0x0F).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    return (torch.stack((lo, hi), -1).reshape(out_features, in_features) - 8)


def pack_int8(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """FBGEMM packed weight from int8 ``[out, in]`` values and per-channel float32 scales ``[out]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            q.contiguous(), scale.reshape(-1).double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


def linear_dynamic_int8(x: torch.Tensor, packed) -> torch.Tensor:
    """int8 x int8 GEMM with the activation quantized per tensor at run time; float32 out."""
    _check_cpu(x)
    shape = x.shape
    y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), packed, REDUCE_RANGE)
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def linear_static_int8(x: torch.Tensor, packed, scale: float, zero_point: int) -> torch.Tensor:
    """int8 GEMM with the activation quantized by calibrated ``(scale, zero_point)``; float32 out (no requant)."""
    _check_cpu(x)
    shape = x.shape
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        x.reshape(-1, shape[-1]).float().contiguous(), scale, zero_point, packed)
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def quantize_rows_(x: torch.Tensor, reduce_range: bool = True) -> torch.Tensor:
    """Fake-quantize each row of ``x`` (``[m, k]``) as :func:`linear_dynamic_int8` quantizes a one-row input:
    asymmetric 7-bit (``reduce_range``) or 8-bit, with the range widened to include 0."""
    qmax = ACT_QMAX if reduce_range else 255
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zp = torch.round(-lo / scale).clamp(0, qmax)
    return (torch.round(x / scale + zp).clamp(0, qmax) - zp) * scale


def linear_token_int8(x: torch.Tensor, packed, dequantized: torch.Tensor, bias: torch.Tensor | None,
                      rows_per_call: int = 8) -> torch.Tensor:
    """Dynamic int8 with one activation scale **per token** (row): LLM activations have outlier channels that a
    single per-tensor scale over a whole sequence cannot represent. 8-bit activations on VNNI CPUs, else 7-bit
    (:data:`TOKEN_REDUCE_RANGE`).

    Up to ``rows_per_call`` rows (decoding) run FBGEMM's int8 GEMM once per row, where per-tensor is per-token;
    longer inputs (prefill, perplexity) fake-quantize each row the same way and multiply by the dequantized
    weight in float, which is faster there and agrees with the int8 path to float rounding.
    """
    _check_cpu(x)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float().contiguous()
    if x2.shape[0] <= rows_per_call:
        # One thread: a one-row int8 GEMM is ~30 us; FBGEMM's multi-threaded path measured ~10 ms per call on a
        # shared 2-core machine (threads waiting for each other).
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            y = torch.cat([torch.ops.quantized.linear_dynamic(x2[i:i + 1], packed, TOKEN_REDUCE_RANGE)
                           for i in range(x2.shape[0])]) if x2.shape[0] else x2.new_zeros(0, dequantized.shape[0])
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
    else:
        y = F.linear(quantize_rows_(x2, TOKEN_REDUCE_RANGE), dequantized, None if bias is None else bias.float())
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def _check_cpu(x: torch.Tensor) -> None:
    if x.device.type != "cpu":
        raise RuntimeError(f"hf_optim int8 kernels run on CPU only; got an input on {x.device}. Use a "
                           "weight-only scheme (int8_weight_only / int4_weight_only) or fp16/bf16 on accelerators.")


def fake_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


# -- packed weight-only kernels (CPU, bfloat16 activations) -------------------------------------------------------

KERNEL_ENV = "HF_OPTIM_INT4_KERNEL"
# Group sizes ``_weight_int4pack_mm_for_cpu`` accepts (largest first: fewer scales to read); it also needs the
# output features to be a multiple of 16 and the input features a multiple of the group size.
INT4_KERNEL_GROUP_SIZES = (256, 128, 64, 32)
# Activation dtypes the kernels take (cast to bfloat16); float64 keeps the exact dequantize path.
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rows (tokens) up to which forward runs the packed kernel; longer inputs (prefill, perplexity) dequantize the
# weight to bfloat16 once per call and use the bfloat16 GEMM. One 576 -> 1536 Linear, one thread, kernel vs
# bfloat16 dequantize + GEMM: int4 g32 1.8 vs 2.0 ms at 64 rows and 23.6 vs 6.1 ms at 512; int8 0.25 vs 0.43 ms
# at 8 rows and 3.8 vs 1.5 ms at 64 (scripts/bench_lm_kernels.py, "linear", times the same paths). Where the CPU
# has no bfloat16 GEMM the kernel runs at every size.
KERNEL_MAX_ROWS = {"int4pack": 64, "int8pack": 16}


@functools.lru_cache(maxsize=1)
def bf16_gemm() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def kernels_enabled() -> bool:
    """Whether the packed weight-only kernels may run: ``HF_OPTIM_INT4_KERNEL=0`` (or false/off/no) turns them off
    for int4 and int8 alike (the exact dequantize path, for debugging)."""
    return os.environ.get(KERNEL_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@functools.lru_cache(maxsize=None)
def _op_works(kernel: str) -> bool:
    """Whether this torch has the op and it computes what :func:`pack_weight_only` assumes (one tiny call)."""
    try:
        q = torch.arange(16 * 32).reshape(16, 32) % 16
        x = torch.ones(1, 32, dtype=torch.bfloat16)
        if kernel == "int4pack":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            sz = torch.stack((torch.full((1, 16), 0.5), torch.full((1, 16), 1.0)), -1).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)
            expected = ((q - 8) * 0.5 + 1.0).sum(1)
        else:
            w = (q - 8).to(torch.int8)
            y = torch.ops.aten._weight_int8pack_mm(x, w, torch.full((16,), 0.5, dtype=torch.bfloat16))
            expected = (q - 8).sum(1) * 0.5
        return bool(torch.equal(y.float().reshape(-1), expected.float()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=None)
def weight_only_kernel(bits: int, in_features: int, out_features: int,
                       group_size: int | None) -> tuple[str, int | None]:
    """The packed kernel a weight-only Linear can use on CPU: ``("int4pack", kernel_group_size)``,
    ``("int8pack", None)`` or ``("dequantize", None)``.

    A stored group of ``group_size`` (a shorter last one included) is split into kernel groups of the largest
    accepted size dividing both ``group_size`` and ``in_features``, each repeating the group's scale and zero:
    576 inputs in groups of 128 (4x128 + 64) run as nine groups of 64, exactly. int8 needs one scale per output
    channel and a multiple of 16 input features.
    """
    if bits == 4 and out_features % 16 == 0:
        span = math.gcd(group_size or in_features, in_features)
        gs = next((g for g in INT4_KERNEL_GROUP_SIZES if span % g == 0), None)
        if gs is not None and _op_works("int4pack"):
            return "int4pack", gs
    # The int8 op reads the input features 16 at a time and returns garbage (or crashes) for other widths.
    if bits == 8 and group_size in (None, in_features) and in_features % 16 == 0 and _op_works("int8pack"):
        return "int8pack", None
    return "dequantize", None


@dataclasses.dataclass
class PackedWeight:
    """A weight-only Linear's weights in a packed kernel's layout (``scales``: bfloat16; ``correction``: the
    per-channel ``scale * zero_point`` an asymmetric int8 weight subtracts times the row sum of the input)."""

    kernel: str
    weight: torch.Tensor
    scales: torch.Tensor
    group_size: int | None = None
    correction: torch.Tensor | None = None


def pack_weight_only(kernel: str, kernel_group_size: int | None, weight: torch.Tensor, scale: torch.Tensor,
                     zero_point: torch.Tensor | None, group_size: int | None, shape: tuple[int, int]) -> PackedWeight:
    """Pack a stored weight-only Linear (``weight``: flat packed int4 bytes or int8 values, ``scale`` and
    ``zero_point`` ``[out, groups]``) for :func:`linear_packed`."""
    out_f, in_f = shape
    if kernel == "int8pack":
        corr = None if zero_point is None else (scale * zero_point).reshape(1, out_f).float()
        # A copy with slack after it: the op reads past the last row, which crashes on a checkpoint's memory-mapped
        # tensor ending at a page boundary.
        own = torch.empty(out_f * in_f + 64, dtype=torch.int8, device=weight.device)[:out_f * in_f]
        return PackedWeight(kernel, own.copy_(weight.reshape(-1)).view(out_f, in_f),
                            scale.reshape(out_f).to(torch.bfloat16), correction=corr)
    # The op takes the 0..15 nibbles (value + 8) and computes (nibble - 8) * scale + zero per group, so
    # w = (q - zero_point) * scale needs zero = -zero_point * scale.
    nibbles = torch.stack((weight & 0x0F, weight >> 4), -1).reshape(out_f, in_f).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1)
    groups = torch.arange(0, in_f, kernel_group_size, device=scale.device) // (group_size or in_f)
    s = scale[:, groups].float()
    zero = torch.zeros_like(s) if zero_point is None else -zero_point[:, groups].float() * s
    sz = torch.stack((s, zero), -1).transpose(0, 1).to(torch.bfloat16).contiguous()
    return PackedWeight(kernel, packed, sz, kernel_group_size)


def linear_packed(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None,
                  dequantize: Callable[[torch.dtype], torch.Tensor] | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` through a packed kernel: ``x`` rounded to bfloat16, the output cast back to ``x``'s
    dtype (bfloat16 activations are what the kernels run fast; float32 ones take a slow path).

    Over :data:`KERNEL_MAX_ROWS` rows, ``dequantize(torch.bfloat16)`` (the full weight) feeds the bfloat16 GEMM
    instead, with the same bfloat16 rounding of the activations.
    """
    shape = x.shape
    xb = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
    if dequantize is not None and xb.shape[0] > KERNEL_MAX_ROWS[packed.kernel] and bf16_gemm():
        y = F.linear(xb, dequantize(torch.bfloat16))
    elif packed.kernel == "int4pack":
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed.weight, packed.group_size, packed.scales)
    else:
        y = torch.ops.aten._weight_int8pack_mm(xb, packed.weight, packed.scales)
        if packed.correction is not None:
            y = y.float() - xb.float().sum(-1, keepdim=True) * packed.correction
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.reshape(*shape[:-1], y.shape[-1])
