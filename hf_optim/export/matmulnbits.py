"""ONNX Runtime ``MatMulNBits`` from an hf_optim checkpoint's own weight-only grid (``method: checkpoint``).

ONNX Runtime's quantizer (:func:`~hf_optim.export.ort_quant.quantize_int4_onnx`) rounds the float weights again by
its own rule, so a grid hf_optim tuned (GPTQ, clip search, scale tuning) never reaches the kernel. Here the
checkpoint's integers, scales and zero points go into ``MatMulNBits`` as they are:

1. :func:`float_checkpoint` writes the model with every quantized module replaced by its float (dequantized)
   equivalent, a plain directory any exporter reads, and returns each weight-only Linear's :class:`Grid`;
2. the float graph is exported (and optimized) as for any model;
3. :func:`apply_checkpoint_grid` finds each grid's MatMul by the value of its weight initializer (the exported
   initializer is the dequantized weight, transposed, bit for bit) and replaces it by ``MatMulNBits``.

``MatMulNBits`` computes ``(q_u - zp_u) * scale`` with unsigned values ``q_u = q + 2^(bits-1)``; hf_optim's
``(q - zero_point) * scale`` maps onto it exactly except that ``zp_u`` is an integer: fractional zero points
(asymmetric RTN, tuned zero points) are rounded, and the weight change this causes is measured and recorded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..quantize import kernels
from .weights import Grid, grid_of, load_model, plain_config

logger = logging.getLogger("hf_optim")

__all__ = ["float_checkpoint", "apply_checkpoint_grid", "matmulnbits_tensors", "decode_matmulnbits"]

# MLAS' block-quantized GEMM runs blocks of 16 to 256 inputs (powers of two)
_MIN_BLOCK, _MAX_BLOCK = 16, 256


def float_checkpoint(src: str | Path, dst: str | Path, bits: int) -> dict[str, Grid]:
    """Write ``src`` to ``dst`` with every quantized module dequantized to float32 (``nn.Linear`` /
    ``nn.Embedding``, a plain config); returns ``{module name: Grid}`` of its weight-only ``bits``-bit Linears.

    Raises :class:`~hf_optim.errors.HfOptimError` when ``src`` holds no such Linear.
    """
    from ..checkpoint import set_module
    from ..errors import HfOptimError
    from ..quantize.modules import QuantEmbedding, QuantLinear
    from .onnx import copy_preprocessors

    src, dst = Path(src), Path(dst)
    model = load_model(src)
    grids: dict[str, Grid] = {}
    for name, mod in list(model.named_modules()):
        grid = grid_of(mod)
        if grid is None:
            continue
        weight = nn.Parameter(grid.dequantized(), requires_grad=False)
        if isinstance(mod, QuantLinear):
            new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            new.weight = weight
            if mod.bias is not None:
                new.bias = nn.Parameter(mod.bias.detach().float(), requires_grad=False)
            if mod.weight_only and mod.bits == bits:
                grids[name] = grid
        elif isinstance(mod, QuantEmbedding):
            new = nn.Embedding(mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx)
            new.weight = weight
        else:  # pragma: no cover - grid_of knows these two kinds only
            continue
        set_module(model, name, new)
    if not grids:
        raise HfOptimError(f"{src} holds no {bits}-bit weight-only Linear layers: method 'checkpoint' exports the "
                           f"grid of a model hf_optim quantized (scheme int{bits}_weight_only, RTN or GPTQ); "
                           "quantize it first, or use method 'rtn'")
    config = plain_config(model)
    config.__dict__.pop("_pre_quantization_dtype", None)  # set by the loader's quantizer; not JSON
    model.config, model.hf_quantizer = config, None
    model.save_pretrained(dst)
    copy_preprocessors(src, dst)
    return grids


def _block_size(group: int, name: str) -> int:
    """The ``MatMulNBits`` block: the largest power of two (16..256) dividing the group, so every block lies in one
    group and takes its scale (a group of 576 inputs runs as 9 blocks of 64 with the same scale)."""
    block = min(group & -group, _MAX_BLOCK)
    if block < _MIN_BLOCK:
        from ..compat import FeatureUnavailable

        raise FeatureUnavailable(f"{name}: a group of {group} inputs is not a multiple of 16, the smallest block "
                                 "MatMulNBits runs; quantize with a group size that is a power of two >= 16")
    return block


def matmulnbits_tensors(grid: Grid, name: str = "", block: int | None = None) -> dict[str, Any]:
    """The ``MatMulNBits`` inputs and attributes for one grid (numpy arrays; ``zero_points`` ``None`` when
    symmetric) and, for asymmetric grids, what rounding the zero points to integers changed. ``block`` (a power of
    two dividing the group) overrides the block chosen from the group size.

    Returns a dict with ``B`` (uint8 ``[N, n_blocks, block_size * bits / 8]``, low nibble first), ``scales``
    (float32 ``[N, n_blocks]``), ``zero_points`` (uint8 ``[N, ceil(n_blocks * bits / 8)]``), ``attrs`` (``K``,
    ``N``, ``bits``, ``block_size``) and ``zero_point_rounding`` (see :func:`_rounding_stats`).
    """
    bits = grid.bits
    n_out, k = grid.q.shape
    group = grid.group_size or k
    block = block or _block_size(group, name)
    n_blocks = -(-k // block)
    offset = 2 ** (bits - 1)
    q_u = (grid.q.to(torch.int16) + offset).to(torch.uint8)
    pad = n_blocks * block - k
    if pad:  # padding columns meet no input (MatMulNBits reads K of them); any value will do
        q_u = torch.cat([q_u, torch.full((n_out, pad), offset, dtype=torch.uint8)], 1)
    q_u = q_u.reshape(n_out, n_blocks, block)
    group_of_block = torch.arange(n_blocks) * block // group
    out: dict[str, Any] = {
        "B": _pack(q_u, bits).numpy(),
        "scales": grid.scale[:, group_of_block].float().contiguous().numpy(),
        "zero_points": None, "zero_point_rounding": None,
        "attrs": {"K": k, "N": n_out, "bits": bits, "block_size": block},
    }
    if grid.zero_point is not None:
        zp = (grid.zero_point.float() + offset).round().clamp(0, 2 ** bits - 1)
        out["zero_point_rounding"] = _rounding_stats(grid, zp - offset)
        zp_blocks = zp[:, group_of_block].to(torch.uint8)
        if bits == 4 and n_blocks % 2:
            zp_blocks = torch.cat([zp_blocks, torch.zeros((n_out, 1), dtype=torch.uint8)], 1)
        out["zero_points"] = _pack(zp_blocks, bits).numpy()
    return out


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Two 4-bit values per byte along the last dim, low nibble first (8-bit values as they are)."""
    if bits == 8:
        return values.contiguous()
    return (values[..., 0::2] | (values[..., 1::2] << 4)).contiguous()


def _rounding_stats(grid: Grid, integral: torch.Tensor) -> dict[str, float]:
    """How far the integral zero points moved (in grid steps) and the weight error that adds, relative to the
    checkpoint's dequantized weight (Frobenius norm)."""
    shift = (integral - grid.zero_point.float()).abs()
    exact = grid.dequantized()
    moved = kernels.dequantize_weight(grid.q, grid.scale, torch.float32, integral, grid.group_size)
    return {"groups": int(shift.numel()), "fractional_groups": int((shift > 1e-6).sum()),
            "clamped_groups": int((shift > 0.5 + 1e-6).sum()), "max_shift": float(shift.max()),
            "mean_shift": float(shift.mean()), "sq_error": float((moved - exact).pow(2).sum()),
            "sq_weight": float(exact.pow(2).sum())}


def decode_matmulnbits(node, initializers: dict) -> dict[str, Any]:
    """Inverse of :func:`matmulnbits_tensors` for a ``MatMulNBits`` node: ``q`` (int8 ``[N, K]``, signed as
    hf_optim stores it), ``scales`` (``[N, n_blocks]``) and ``zero_points`` (``[N, n_blocks]`` signed, or
    ``None``), read from the graph's ``initializers`` (``{name: TensorProto}``)."""
    from onnx import numpy_helper

    attrs = {a.name: a.i for a in node.attribute}
    k, n_out, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    n_blocks = -(-k // block)
    offset = 2 ** (bits - 1)
    packed = torch.from_numpy(numpy_helper.to_array(initializers[node.input[1]]).copy())
    q = _unpack(packed, bits).reshape(n_out, n_blocks * block)[:, :k].to(torch.int16) - offset
    scales = torch.from_numpy(numpy_helper.to_array(initializers[node.input[2]]).copy()).reshape(n_out, n_blocks)
    zp = None
    if len(node.input) > 3 and node.input[3]:
        raw = torch.from_numpy(numpy_helper.to_array(initializers[node.input[3]]).copy()).reshape(n_out, -1)
        zp = _unpack(raw, bits)[:, :n_blocks].to(torch.int16) - offset
    return {"q": q.to(torch.int8), "scales": scales, "zero_points": zp, "block_size": block}


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed
    return torch.stack((packed & 0x0F, packed >> 4), -1).reshape(*packed.shape[:-1], -1)


def _weight_key(array) -> tuple:
    return array.shape, hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()


def apply_checkpoint_grid(src: str | Path, dst: str | Path, grids: dict[str, Grid],
                          accuracy_level: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Replace the MatMul of every grid in ``grids`` (from :func:`float_checkpoint`) in the graph ``src`` by a
    ``MatMulNBits`` holding the grid's integers, scales and zero points; writes ``dst``.

    A grid's MatMul is the one whose weight initializer is its dequantized weight, transposed, bit for bit.
    Returns ``dst`` and a record: ``matmuls`` converted, ``block_size``, ``bits`` and, for asymmetric grids, the
    ``zero_point_rounding`` (groups, how many had a fractional zero point, the largest and mean shift in grid
    steps, and ``weight_rel_error``: the Frobenius norm of the weight change over that of the weights). Raises
    :class:`~hf_optim.errors.StageError` when a grid's MatMul is not in the graph (a fused or folded weight).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from ..errors import StageError

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_value: dict[tuple, str] = {}
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            by_value.setdefault(_weight_key(numpy_helper.to_array(w)), w.name)

    missing, blocks, rounding = [], set(), []
    converted = 0
    replaced: dict[int, list] = {}
    for module, grid in grids.items():
        weight = grid.dequantized().t().contiguous().numpy()
        init_name = by_value.get(_weight_key(weight))
        if init_name is None:
            missing.append(module)
            continue
        t = matmulnbits_tensors(grid, module)
        blocks.add(t["attrs"]["block_size"])
        if t["zero_point_rounding"]:
            rounding.append(t["zero_point_rounding"])
        stem = f"{module}.MatMulNBits"
        names = [f"{stem}.B", f"{stem}.scales"] + ([f"{stem}.zero_points"] if t["zero_points"] is not None else [])
        arrays = [t["B"], t["scales"]] + ([t["zero_points"]] if t["zero_points"] is not None else [])
        graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in zip(names, arrays))
        attrs = dict(t["attrs"])
        if accuracy_level is not None:
            attrs["accuracy_level"] = accuracy_level
        for node in consumers[init_name]:
            if node.op_type != "MatMul" or node.input[1] != init_name:
                continue
            new = helper.make_node("MatMulNBits", [node.input[0]] + names, list(node.output),
                                   name=f"{node.name or stem}_Q{grid.bits}", domain="com.microsoft", **attrs)
            replaced[id(node)] = [new]
            converted += 1
    if missing:
        raise StageError(f"{len(missing)} of {len(grids)} quantized layers have no MatMul with their weight in the "
                         f"exported graph (first: {missing[0]}): graph optimization fused or changed it; export "
                         "with optimization 'none' or 'O1'")
    nodes = [n for node in graph.node for n in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    record: dict[str, Any] = {"matmuls": converted, "layers": len(grids), "bits": next(iter(grids.values())).bits,
                              "block_size": sorted(blocks), "accuracy_level": accuracy_level}
    if rounding:
        record["zero_point_rounding"] = _merge_rounding(rounding)
    return dst, record


def _merge_rounding(stats: list[dict[str, float]]) -> dict[str, float]:
    groups = sum(s["groups"] for s in stats)
    return {"groups": groups, "fractional_groups": sum(s["fractional_groups"] for s in stats),
            "clamped_groups": sum(s["clamped_groups"] for s in stats),
            "max_shift": round(max(s["max_shift"] for s in stats), 6),
            "mean_shift": round(sum(s["mean_shift"] * s["groups"] for s in stats) / groups, 6),
            "weight_rel_error": round((sum(s["sq_error"] for s in stats) / sum(s["sq_weight"] for s in stats)) ** 0.5,
                                      8)}
