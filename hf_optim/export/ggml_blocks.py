"""GGML block encodings of one weight (Q8_0, Q4_0, Q4_1, F16, F32), written from hf_optim's grid where it fits.

Every GGML type here covers a row in blocks of 32 values with a float16 scale ``d`` (Q4_1 also a float16 minimum
``m``): Q8_0 ``w = d * q`` (int8 ``q``), Q4_0 ``w = d * (u - 8)`` and Q4_1 ``w = d * u + m`` (``u`` in 0..15, two
per byte: value ``j`` in the low nibble of byte ``j``, value ``j + 16`` in its high nibble).

hf_optim stores ``w = (q - zero_point) * scale`` per group. A grid whose groups are whole 32-blocks maps onto a
block type without re-rounding any value:

* symmetric int4 or int8 -> Q8_0 (``d = scale``); symmetric int4 -> Q4_0 (``u = q + 8``);
* int4, symmetric or not -> Q4_1 (``u = q + 8``, ``d = scale``, ``m = -scale * (zero_point + 8)``),

so the only added error is the rounding of ``scale`` (and ``m``) to float16. Any other grid, and float weights,
are re-quantized by llama.cpp's own round-to-nearest (``gguf.quants``), and the error is measured.
"""

from __future__ import annotations

import numpy as np
import torch

from .weights import Grid

__all__ = ["QTYPES", "encode", "exact_qtype"]

QK = 32
QTYPES = ("q8_0", "q4_0", "q4_1", "f16", "f32")


def _gguf_type(qtype: str):
    from gguf import GGMLQuantizationType

    return getattr(GGMLQuantizationType, qtype.upper())


def _block_params(grid: Grid) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Each 32-block's scale and zero point ``[out, in / 32]``, or ``None`` when a block straddles two groups."""
    in_f = grid.q.shape[1]
    group = grid.group_size or in_f
    if in_f % QK or group % QK:
        return None
    index = torch.arange(in_f // QK) * QK // group
    return grid.scale[:, index], None if grid.zero_point is None else grid.zero_point[:, index]


def exact_qtype(grid: Grid | None) -> str:
    """The block type that holds ``grid`` without re-rounding its values (``"f16"`` for float weights)."""
    if grid is None:
        return "f16"
    if _block_params(grid) is None:
        return "q8_0"
    if grid.bits == 4:
        return "q4_0" if grid.symmetric else "q4_1"
    return "q8_0"


def _representable(grid: Grid, qtype: str) -> bool:
    if _block_params(grid) is None:
        return False
    if qtype == "q8_0":
        return grid.symmetric
    if qtype == "q4_0":
        return grid.bits == 4 and grid.symmetric
    return qtype == "q4_1" and grid.bits == 4


def _f16_bytes(x: torch.Tensor) -> np.ndarray:
    """float16 values ``[out, nb]`` as bytes ``[out, nb, 2]``."""
    return x.numpy().astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def _nibbles(u: torch.Tensor) -> np.ndarray:
    out, n = u.shape
    u = u.numpy().astype(np.uint8).reshape(out, n // QK, 2, QK // 2)
    return u[:, :, 0, :] | (u[:, :, 1, :] << np.uint8(4))


def _from_grid(grid: Grid, qtype: str) -> np.ndarray:
    scale, zp = _block_params(grid)
    out = grid.q.shape[0]
    if qtype == "q8_0":
        q = grid.q.numpy().astype(np.int8).view(np.uint8).reshape(out, -1, QK)
        blocks = np.concatenate([_f16_bytes(scale), q], -1)
    elif qtype == "q4_0":
        blocks = np.concatenate([_f16_bytes(scale), _nibbles(grid.q.to(torch.int16) + 8)], -1)
    else:
        m = -scale * ((zp if zp is not None else torch.zeros_like(scale)) + 8)
        blocks = np.concatenate([_f16_bytes(scale), _f16_bytes(m), _nibbles(grid.q.to(torch.int16) + 8)], -1)
    return blocks.reshape(out, -1)


def encode(weight: torch.Tensor, grid: Grid | None, qtype: str) -> tuple[np.ndarray, str, bool]:
    """Encode one ``[out, in]`` weight as ``qtype``.

    Args:
        weight (`torch.Tensor`): the float weight hf_optim computes with (dequantized when ``grid`` is set).
        grid (`Grid`, *optional*): hf_optim's integer grid of the weight; ``None`` for a float weight.
        qtype (`str`): one of :data:`QTYPES`.

    Returns:
        ``(data, qtype, from_grid)``: the array to hand to ``GGUFWriter.add_tensor`` (uint8 block bytes, or
        float16 / float32 values), the type actually written (a block type falls back to ``f16`` when the row
        length is not a multiple of 32), and whether the values were taken from ``grid`` without re-rounding.
    """
    if qtype not in QTYPES:
        raise ValueError(f"qtype={qtype!r}; use one of {', '.join(QTYPES)}")
    if qtype in ("q8_0", "q4_0", "q4_1") and weight.shape[-1] % QK:
        qtype = "f16"
    if qtype == "f32":
        return weight.float().numpy(), qtype, False
    if qtype == "f16":
        return weight.float().numpy().astype(np.float16), qtype, False
    if grid is not None and _representable(grid, qtype):
        return _from_grid(grid, qtype), qtype, True
    from gguf import quants

    return quants.quantize(weight.float().numpy(), _gguf_type(qtype)), qtype, False


def decode(data: np.ndarray, qtype: str) -> torch.Tensor:
    """The float32 values GGML reads back from ``encode``'s output (gguf's reference dequantization)."""
    if qtype in ("f16", "f32"):
        return torch.from_numpy(np.ascontiguousarray(data).astype(np.float32))
    from gguf import quants

    return torch.from_numpy(quants.dequantize(data, _gguf_type(qtype)).astype(np.float32))
