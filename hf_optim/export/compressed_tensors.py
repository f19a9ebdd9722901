"""Write an hf_optim weight-only int8/int4 checkpoint in the compressed-tensors format, which ``transformers``
(with the ``compressed-tensors`` package) and vLLM load without hf_optim.

Layout (compressed-tensors' ``PackedQuantizationCompressor`` / ``NaiveQuantizationCompressor``), per quantized
Linear ``N``:

* ``pack-quantized`` (int4, and int8 by default: vLLM runs weight-only int8 only from this format):
  ``N.weight_packed`` int32 ``[out, ceil(in * bits / 32)]`` (``32 / bits`` values per word, value ``k`` at bit
  ``k * bits``, each stored as ``q + 2^(bits-1)``), ``N.weight_shape`` int64 ``[2]``, and for asymmetric grids
  ``N.weight_zero_point`` packed the same way along the output dimension ``[ceil(out * bits / 32), groups]``;
* ``naive-quantized`` (int8 on request): ``N.weight`` int8 ``[out, in]``, ``N.weight_zero_point`` int8;
* both: ``N.weight_scale`` float32 ``[out, groups]`` (``groups = 1`` per channel), ``N.bias`` when present.

``w = (q - zero_point) * scale`` as in hf_optim, except that compressed-tensors stores integer zero points where
hf_optim stores float ones: asymmetric grids are re-rounded to the nearest integer zero point (the error is
measured and reported). Symmetric grids are copied exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..quantize import kernels
from ..quantize.modules import QuantEmbedding, QuantLinear, WeightOnlyLinear
from .padding import plain_model
from .weights import ExportReport, Grid, error_stats, grid_of, model_dir, source_of, write_checkpoint

__all__ = ["save_compressed_tensors", "pack_to_int32"]

FORMATS = ("pack-quantized", "naive-quantized")


def pack_to_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed ``bits``-bit values (int8 ``[rows, cols]``) along the last dim into int32 words, as
    compressed-tensors' ``pack_to_int32`` does for 4 and 8 bits."""
    if bits not in (4, 8):
        raise ValueError(f"packing supports 4 and 8 bits, got {bits}")
    per_word = 32 // bits
    rows, cols = q.shape
    u = q.to(torch.int64) + (1 << (bits - 1))
    pad = -cols % per_word
    if pad:
        u = torch.cat([u, u.new_zeros(rows, pad)], 1)
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (u.reshape(rows, -1, per_word) << shifts).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _integer_zero_points(grid: Grid, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scale, zero_point)`` on an integer-zero-point grid for an asymmetric hf_optim grid: each group keeps
    its scale with the zero point rounded; a group whose zero point leaves the integer range (all its weights of
    one sign) gets the min/max grid widened to include 0, as compressed-tensors' observers make it."""
    out_f, in_f = weight.shape
    groups = grid.scale.shape[1]
    gs = in_f // groups
    qmin, qmax = kernels.qrange(grid.bits, symmetric=False)
    g = weight.reshape(out_f, groups, gs)
    scale, zp = grid.scale.clone(), torch.round(grid.zero_point)
    outside = (zp < qmin) | (zp > qmax)
    if bool(outside.any()):
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        wide = ((hi - lo) / (qmax - qmin)).clamp(min=torch.finfo(torch.float32).tiny)
        scale = torch.where(outside, wide, scale)
        zp = torch.where(outside, torch.round(qmin - lo / wide).clamp(qmin, qmax), zp)
    q = kernels.quantize_with_qparams(g, scale, zp, grid.bits, symmetric=False).reshape(out_f, in_f)
    return q, scale, zp.to(torch.int8)


def _module_tensors(name: str, module: QuantLinear, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    grid = grid_of(module)
    weight = grid.dequantized()
    if grid.group_size and module.in_features % grid.group_size:
        raise ValueError(f"{name}: a shorter last group (in_features {module.in_features}, group_size "
                         f"{grid.group_size}) has no compressed-tensors layout; quantize with a group size that "
                         "divides every layer's input size")
    if grid.symmetric:
        q, scale, zp = grid.q, grid.scale, None
    else:
        q, scale, zp = _integer_zero_points(grid, weight)
    out: dict[str, torch.Tensor] = {f"{name}.weight_scale": scale.float().contiguous()}
    if fmt == "pack-quantized":
        out[f"{name}.weight_packed"] = pack_to_int32(q, grid.bits)
        out[f"{name}.weight_shape"] = torch.tensor([module.out_features, module.in_features], dtype=torch.int64)
        if zp is not None:
            out[f"{name}.weight_zero_point"] = pack_to_int32(zp.t().contiguous(), grid.bits).t().contiguous()
    else:
        out[f"{name}.weight"] = q.to(torch.int8).contiguous()
        if zp is not None:
            out[f"{name}.weight_zero_point"] = zp.contiguous()
    if module.bias is not None:
        out[f"{name}.bias"] = module.bias.detach().float().clone()
    written = kernels.dequantize_weight(q, scale, torch.float32, None if zp is None else zp.float(), grid.group_size)
    info = {"type": f"int{grid.bits}", "source": source_of(grid), "from_grid": grid.symmetric,
            **error_stats(weight, written)}
    return out, info


def _scheme(grid: Grid, fmt: str) -> dict[str, Any]:
    weights = {"num_bits": grid.bits, "type": "int", "symmetric": grid.symmetric,
               "group_size": grid.group_size, "strategy": "group" if grid.group_size else "channel",
               "dynamic": False}
    return {"weights": weights, "input_activations": None, "output_activations": None, "format": fmt}


def quantization_config(groups: dict[tuple, list[str]], formats: dict[tuple, str], ignore: list[str]) -> dict:
    """config.json's ``quantization_config`` for the quantized Linear names grouped by ``(bits, symmetric,
    group_size)``; one group targets every ``Linear`` not in ``ignore``, several name their modules."""
    config_groups = {}
    for i, (key, names) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        bits, symmetric, group_size = key
        grid = Grid(torch.empty(0), torch.empty(0), None if symmetric else torch.empty(0), bits, group_size)
        config_groups[f"group_{i}"] = {"targets": ["Linear"] if len(groups) == 1 else sorted(names),
                                       **_scheme(grid, formats[key])}
    used = set(formats.values())
    return {"quant_method": "compressed-tensors", "format": used.pop() if len(used) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": sorted(ignore),
            "kv_cache_scheme": None, "global_compression_ratio": None}


def save_compressed_tensors(model_or_dir: Any, out_dir: str | Path, *, int8_format: str = "pack-quantized",
                            pad_uneven: bool = False) -> ExportReport:
    """Write an hf_optim weight-only checkpoint as a compressed-tensors checkpoint (weights, config, tokenizer).

    Args:
        model_or_dir (`str`, `Path` or `PreTrainedModel`): an hf_optim checkpoint directory (``int8_weight_only``
            or ``int4_weight_only``, optionally pruned), ``builtin:<name>``, or the model itself.
        out_dir (`str` or `Path`): the directory to write; ``from_pretrained(out_dir)`` loads it where the
            ``compressed-tensors`` package is installed, and vLLM serves it.
        int8_format (`str`, *optional*, defaults to ``"pack-quantized"``): layout of int8 layers:
            ``pack-quantized`` (four values per int32; what vLLM's weight-only kernels read) or
            ``naive-quantized`` (plain int8 tensors).
        pad_uneven (`bool`, *optional*, defaults to `False`): pad a Llama or BERT model pruned to different sizes
            per layer (or, for BERT, with pruned heads) with zero units to the sizes one plain config states (see
            :mod:`~hf_optim.export.padding`): the same outputs, as large as the widest layer.

    A float model (pruned or not) is written as a plain dense checkpoint when one config describes every layer's
    shapes; layers pruned to different sizes raise ``ValueError`` without ``pad_uneven`` (only hf_optim loads
    those). Quantized embedding tables are written dequantized (compressed-tensors quantizes Linear layers).

    Returns:
        [`~hf_optim.export.weights.ExportReport`]: per quantized layer its bits, whether its integer values were
        copied exactly, and the error against the weight hf_optim computes with; notes.
    """
    if int8_format not in FORMATS:
        raise ValueError(f"int8_format={int8_format!r}; use one of {', '.join(FORMATS)}")
    from .gguf_vocab import load_tokenizer

    source_dir = model_dir(model_or_dir)
    model, config, padding = plain_model(model_or_dir, pad_uneven)
    notes: list[str] = [padding.note()] if padding else []
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    for name, module in quantized.items():
        if isinstance(module, QuantLinear) and not isinstance(module, WeightOnlyLinear):
            raise ValueError(f"{name} is {module.scheme}: compressed-tensors export takes weight-only schemes "
                             "(int8_weight_only / int4_weight_only)")
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, dict[str, Any]] = {}
    groups: dict[tuple, list[str]] = {}
    formats: dict[tuple, str] = {}
    with torch.no_grad():
        for name, module in quantized.items():
            if isinstance(module, QuantEmbedding):
                tensors[f"{name}.weight"] = module.dequantized_weight().contiguous()
                notes.append(f"{name}: quantized embedding table written dequantized (float32)")
                continue
            grid = grid_of(module)
            fmt = "pack-quantized" if grid.bits == 4 else int8_format
            out, report[name] = _module_tensors(name, module, fmt)
            tensors.update(out)
            key = (grid.bits, grid.symmetric, grid.group_size)
            groups.setdefault(key, []).append(name)
            formats[key] = fmt
        seen: set[int] = set()
        for key, value in model.state_dict().items():
            owner = key.rpartition(".")[0]
            if owner in quantized or value.data_ptr() in seen:  # tied weights are stored once
                continue
            seen.add(value.data_ptr())
            tensors[key] = value.detach().contiguous()
    if groups:
        ignore = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        config.quantization_config = quantization_config(groups, formats, ignore)
    else:
        notes.append("no quantized layers: written as a plain dense checkpoint")
    if any(not r["from_grid"] for r in report.values()):
        worst = max(r["max_abs_error"] for r in report.values() if not r["from_grid"])
        notes.append(f"asymmetric grids re-rounded to integer zero points (max abs weight error {worst:.3g})")
    out_dir = write_checkpoint(out_dir, tensors, config, model, load_tokenizer(source_dir))
    fmt = config.quantization_config["format"] if groups else "dense"
    return ExportReport(path=out_dir, format=f"compressed-tensors {fmt}", tensors=report, notes=notes,
                        padding=padding.to_dict() if padding else None)
