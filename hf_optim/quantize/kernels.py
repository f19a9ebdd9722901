"""The one seam between hf_optim's quantized modules and the CPU kernels that run them.

Chosen by measurement on a 2-core AVX-512 VNNI CPU, torch 2.13 (``scripts/bench_quant_kernels.py``, one
thread, best of 15, MiniLM-L6 Linear shapes, 1024 and 32 rows): FBGEMM's int8 GEMM behind
``torch.ops.quantized`` runs 3.4-5.1x faster than fp32 ``F.linear`` at 1024 rows and 2.2-3.6x at 32 rows;
``torch._int_mm`` with the activation quantized in eager ops reaches 1.2-2.7x; ``torch._weight_int8pack_mm``
is 0.02x (a decode kernel) and ``torch._weight_int4pack_mm_for_cpu`` 0.8-1.0x (bf16 activations only).
Weight-only schemes therefore dequantize on the fly (0.4-1.1x of fp32): they save memory and disk, not
time, and the planner reports that.

The ``torch.ops.quantized`` ops are deprecated in favour of torchao; everything that touches them lives
here so they can be swapped without changing the stored format (int8 values + float32 scales).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

__all__ = ["ACT_QMIN", "ACT_QMAX", "pack_int8", "linear_dynamic_int8", "linear_static_int8",
           "quantize_weight", "dequantize_weight", "pack_int4", "unpack_int4"]

# Activations are quantized to 7 bits (quint8 values 0..127). FBGEMM's u8*s8 path can saturate 16-bit
# intermediate sums on CPUs without VNNI when activations use the full 8 bits; the reduced range is the
# setting torch.ao uses for the same reason and keeps a checkpoint portable across x86 machines.
ACT_QMIN, ACT_QMAX = 0, 127
REDUCE_RANGE = True


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel (``group_size=None``) or group-wise quantization of a ``[out, in]`` weight.

    Returns ``(q, scale)``: ``q`` int8 ``[out, in]`` in ``[-(2^(b-1)-1), 2^(b-1)-1]`` and float32 ``scale``
    ``[out, in // group_size]`` (``[out, 1]`` per channel).
    """
    w = weight.detach().float()
    out_f, in_f = w.shape
    gs = group_size or in_f
    qmax = 2 ** (bits - 1) - 1
    g = w.reshape(out_f, in_f // gs, gs)
    scale = (g.abs().amax(-1) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(g / scale[..., None]).clamp(-qmax, qmax).to(torch.int8).reshape(out_f, in_f)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_weight` (``q`` int8 ``[out, in]``, ``scale`` ``[out, groups]``)."""
    out_f, in_f = q.shape
    groups = scale.shape[1]
    w = q.reshape(out_f, groups, in_f // groups).to(torch.float32) * scale[..., None]
    return w.reshape(out_f, in_f).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit values per byte: ``[out, in]`` int8 in [-7, 7] -> flat uint8 ``[out * in // 2]``."""
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


def _check_cpu(x: torch.Tensor) -> None:
    if x.device.type != "cpu":
        raise RuntimeError(f"hf_optim int8 kernels run on CPU only; got an input on {x.device}. Use a "
                           "weight-only scheme (int8_weight_only / int4_weight_only) or fp16/bf16 on accelerators.")


def fake_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
