"""Prunable structures of BERT-family and Llama-family models, and their physical removal.

A *unit group* is one layer's attention heads or one layer's feed-forward neurons. Each unit (a head, a
key/value group of heads, a neuron) owns one contiguous block of rows or columns in several Linear layers:

* BERT heads: ``block`` rows of ``query``/``key``/``value`` (weight and bias) and ``block`` columns of the
  attention output ``dense`` (``block`` = head size);
* Llama heads (grouped-query attention): one key/value head with its query heads: rows of ``q_proj``
  (``block`` = heads per group x head size), ``k_proj``, ``v_proj`` and columns of ``o_proj``;
* neurons: a row of ``intermediate.dense`` (BERT) or ``gate_proj`` + ``up_proj`` (Llama) and a column of
  ``output.dense`` / ``down_proj``.

Zeroing a unit's blocks (masking) and deleting them (:func:`prune_structured_`) give the same outputs: a head
whose query, key and value are zero attends uniformly to zero values, and a neuron with zero input weights and
bias outputs ``act(0) = 0`` (GELU, SiLU). Works on transformers 4.57 and 5.x (neither needs ``prune_heads``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..checkpoint import HfOptimConfig, set_module

__all__ = ["Part", "UnitGroup", "find_unit_groups", "prune_structured_", "pruned_units", "structure_summary"]

logger = logging.getLogger("hf_optim")


@dataclasses.dataclass(frozen=True)
class Part:
    """Unit ``j`` of a group owns ``[j * block, (j + 1) * block)`` along ``dim`` of ``module.weight`` (and, for
    rows, of ``module.bias``)."""

    module: str
    dim: int  # 0: output rows, 1: input columns
    block: int


@dataclasses.dataclass
class UnitGroup:
    """One layer's heads (``kind="heads"``) or feed-forward neurons (``kind="ffn"``)."""

    kind: str
    layer: int
    n_units: int
    parts: list[Part]
    attn_module: Optional[str] = None  # BERT: the module whose head counts change
    head_dim: int = 0

    def linears(self, model: nn.Module) -> list[tuple[Part, nn.Linear]]:
        return [(p, model.get_submodule(p.module)) for p in self.parts]


def _is_linear(mod) -> bool:
    return isinstance(mod, nn.Linear)


def find_unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Every prunable head group and FFN group of ``model`` (BERT family or Llama family), in layer order.

    Raises ``ValueError`` for architectures whose attention/FFN blocks are not recognised.
    """
    groups: list[UnitGroup] = []
    layer_of: dict[str, int] = {}

    def layer_index(name: str) -> int:
        parent = name
        while parent:
            parent, _, last = parent.rpartition(".")
            if last.isdigit():
                key = f"{parent}.{last}"
                return layer_of.setdefault(key, len(layer_of))
        return layer_of.setdefault(name, len(layer_of))

    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        # BERT family: BertAttention has .self (query/key/value) and .output.dense
        self_attn = getattr(mod, "self", None)
        out = getattr(getattr(mod, "output", None), "dense", None)
        if self_attn is not None and all(_is_linear(getattr(self_attn, k, None)) for k in ("query", "key", "value")) \
                and _is_linear(out):
            head_dim = int(getattr(self_attn, "attention_head_size"))
            n = self_attn.query.out_features // head_dim
            parts = [Part(f"{prefix}self.{k}", 0, head_dim) for k in ("query", "key", "value")]
            parts.append(Part(f"{prefix}output.dense", 1, head_dim))
            groups.append(UnitGroup("heads", layer_index(name), n, parts, attn_module=f"{prefix}self",
                                    head_dim=head_dim))
        # BERT family: BertLayer has .intermediate.dense and .output.dense (and .attention)
        inter = getattr(getattr(mod, "intermediate", None), "dense", None)
        if _is_linear(inter) and _is_linear(out) and hasattr(mod, "attention"):
            parts = [Part(f"{prefix}intermediate.dense", 0, 1), Part(f"{prefix}output.dense", 1, 1)]
            groups.append(UnitGroup("ffn", layer_index(name), inter.out_features, parts))
        # Llama family: self_attn with q/k/v/o_proj, mlp with gate/up/down_proj
        if all(_is_linear(getattr(mod, k, None)) for k in ("q_proj", "k_proj", "v_proj", "o_proj")):
            head_dim = int(getattr(mod, "head_dim"))
            n_kv = mod.k_proj.out_features // head_dim
            per_group = mod.q_proj.out_features // (n_kv * head_dim)
            parts = [Part(f"{prefix}q_proj", 0, per_group * head_dim), Part(f"{prefix}k_proj", 0, head_dim),
                     Part(f"{prefix}v_proj", 0, head_dim), Part(f"{prefix}o_proj", 1, per_group * head_dim)]
            groups.append(UnitGroup("heads", layer_index(name), n_kv, parts, head_dim=head_dim))
        if all(_is_linear(getattr(mod, k, None)) for k in ("gate_proj", "up_proj", "down_proj")):
            parts = [Part(f"{prefix}gate_proj", 0, 1), Part(f"{prefix}up_proj", 0, 1), Part(f"{prefix}down_proj", 1, 1)]
            groups.append(UnitGroup("ffn", layer_index(name), mod.gate_proj.out_features, parts))
    if not groups:
        raise ValueError(f"{type(model).__name__}: no attention heads or feed-forward blocks hf_optim can prune "
                         "were found; structured pruning supports BERT-family (BERT, RoBERTa, MiniLM ...) and "
                         "Llama-family (Llama, Mistral, Qwen2, SmolLM ...) models")
    return groups


def unit_scores(group: UnitGroup, importance: Mapping[str, torch.Tensor], reduce: str = "sum") -> torch.Tensor:
    """Score per unit: the sum over the unit's blocks of the per-weight ``importance[module]`` (same shape as
    the weight), plus the bias rows' importance under ``module + ".bias"`` if given. ``reduce="l2"`` takes the
    square root of the sum (for squared-weight importance)."""
    total = torch.zeros(group.n_units, dtype=torch.float64)
    for part in group.parts:
        for key in (part.module, f"{part.module}.bias"):
            imp = importance.get(key)
            if imp is None or (key.endswith(".bias") and part.dim == 1):
                continue
            t = imp.detach().double()
            t = t if part.dim == 0 else t.transpose(0, 1)
            total += t.reshape(group.n_units, -1).sum(dim=1).cpu()
    return total.sqrt() if reduce == "l2" else total


def unit_mask(part: Part, keep: torch.Tensor, linear: nn.Linear) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weight (and bias) masks of ``part`` for the kept units ``keep`` (bool, one per unit)."""
    rows = keep.repeat_interleave(part.block).to(linear.weight.device)
    if part.dim == 0:
        wmask = rows[:, None].expand_as(linear.weight)
        bmask = rows if linear.bias is not None else None
    else:
        wmask = rows[None, :].expand_as(linear.weight)
        bmask = None
    return wmask, bmask


def pruned_units(model: nn.Module, groups: Optional[Sequence[UnitGroup]] = None) -> dict[str, dict[int, list[int]]]:
    """``{"heads": {layer: [unit ...]}, "ffn": {...}}``: the units whose weights are all exactly zero (masked)."""
    out: dict[str, dict[int, list[int]]] = {"heads": {}, "ffn": {}}
    for g in groups if groups is not None else find_unit_groups(model):
        zero = torch.ones(g.n_units, dtype=torch.bool)
        for part, lin in g.linears(model):
            w = lin.weight.detach()
            w = w if part.dim == 0 else w.transpose(0, 1)
            zero &= (w.reshape(g.n_units, -1) == 0).all(dim=1).cpu()
            if part.dim == 0 and lin.bias is not None:
                zero &= (lin.bias.detach().reshape(g.n_units, -1) == 0).all(dim=1).cpu()
        units = zero.nonzero().flatten().tolist()
        if units:
            out[g.kind][g.layer] = units
    return out


def _new_linear(old: nn.Linear, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def prune_structured_(model: nn.Module, heads: Optional[Mapping[int, Iterable[int]]] = None,
                      ffn: Optional[Mapping[int, Iterable[int]]] = None) -> dict:
    """Physically remove attention heads and feed-forward neurons from ``model`` (in place).

    Args:
        model: a BERT-family or Llama-family model (any head class).
        heads: ``{layer: [head indices]}`` to remove (Llama with grouped-query attention: key/value group
            indices, each removing its query heads too).
        ffn: ``{layer: [neuron indices]}`` to remove.

    Layers get smaller Linear modules and per-layer head counts; the changes are recorded in
    ``model.config.quantization_config`` (``quant_method: "hf_optim"``: ``linear_shapes`` + ``module_attrs``), so
    ``save_pretrained`` writes a checkpoint that plain ``AutoModelFor*.from_pretrained`` restores after
    ``import hf_optim``. At least one head and one neuron stay in every layer.

    Returns ``{"heads": {layer: remaining}, "ffn": {layer: remaining}}``.
    """
    todo = {"heads": {int(k): sorted(set(int(i) for i in v)) for k, v in (heads or {}).items()},
            "ffn": {int(k): sorted(set(int(i) for i in v)) for k, v in (ffn or {}).items()}}
    groups = find_unit_groups(model)
    layers = {g.layer for g in groups}
    for kind, spec in todo.items():
        bad = sorted(set(spec) - layers)
        if bad:
            raise ValueError(f"prune_structured_: {kind} names layer(s) {bad}; the model has layers "
                             f"0..{max(layers)}")
    remaining: dict[str, dict[int, int]] = {"heads": {}, "ffn": {}}
    for g in groups:
        drop = todo[g.kind].get(g.layer, [])
        if any(i < 0 or i >= g.n_units for i in drop):
            raise ValueError(f"prune_structured_: layer {g.layer} has {g.n_units} {g.kind} units (0..{g.n_units - 1}), "
                             f"cannot remove {drop}")
        if len(drop) >= g.n_units:
            raise ValueError(f"prune_structured_: removing all {g.n_units} {g.kind} of layer {g.layer} would "
                             "disconnect it; keep at least one")
        remaining[g.kind][g.layer] = g.n_units - len(drop)
        if not drop:
            continue
        keep = torch.ones(g.n_units, dtype=torch.bool)
        keep[drop] = False
        for part, lin in g.linears(model):
            idx = keep.repeat_interleave(part.block).nonzero().flatten().to(lin.weight.device)
            weight = lin.weight.detach().index_select(part.dim, idx)
            bias = None if lin.bias is None else (lin.bias.detach().index_select(0, idx) if part.dim == 0
                                                  else lin.bias.detach())
            set_module(model, part.module, _new_linear(lin, weight, bias))
        if g.attn_module is not None:
            attn = model.get_submodule(g.attn_module)
            attn.num_attention_heads = int(keep.sum())
            attn.all_head_size = int(keep.sum()) * g.head_dim
    _record(model, groups)
    return remaining


def _record(model: nn.Module, groups: Sequence[UnitGroup]) -> None:
    """Describe every resized Linear and head count in ``model.config.quantization_config``."""
    old = getattr(model.config, "quantization_config", None)
    if old is not None and not isinstance(old, HfOptimConfig):
        raise ValueError(f"{type(model).__name__} is quantized by {type(old).__name__}; prune before quantizing")
    shapes = dict(old.linear_shapes) if old is not None else {}
    attrs = dict(old.module_attrs) if old is not None else {}
    # Only layers that differ from a freshly built model of this config need describing.
    fresh = _reference_sizes(model, groups)
    for g in groups:
        for part, lin in g.linears(model):
            if (lin.out_features, lin.in_features) != fresh[part.module]:
                shapes[part.module] = {"in_features": lin.in_features, "out_features": lin.out_features,
                                       "bias": lin.bias is not None}
        if g.attn_module is not None:
            attn = model.get_submodule(g.attn_module)
            if attn.all_head_size != fresh[g.parts[0].module][0]:
                attrs[g.attn_module] = {"num_attention_heads": attn.num_attention_heads,
                                        "all_head_size": attn.all_head_size}
    if old is not None:
        old.linear_shapes, old.module_attrs = shapes, attrs
    else:
        model.config.quantization_config = HfOptimConfig(linear_shapes=shapes, module_attrs=attrs)


def _reference_sizes(model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, tuple[int, int]]:
    """(out, in) of every grouped Linear in a model freshly built from ``model.config`` (from the config's
    sizes, without building the model)."""
    cfg = model.config
    hidden = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    inter = cfg.intermediate_size
    sizes = {}
    for g in groups:
        for part in g.parts:
            leaf = part.module.rsplit(".", 2)
            tail = ".".join(leaf[-2:])
            if g.kind == "heads":
                if tail.endswith(("self.query", "self.key", "self.value", "q_proj")):
                    sizes[part.module] = (n_heads * head_dim, hidden)
                elif tail.endswith(("k_proj", "v_proj")):
                    sizes[part.module] = (n_kv * head_dim, hidden)
                else:  # attention output
                    sizes[part.module] = (hidden, n_heads * head_dim)
            else:
                sizes[part.module] = (inter, hidden) if part.dim == 0 else (hidden, inter)
    return sizes


def structure_summary(model: nn.Module) -> dict:
    """Per-layer head and neuron counts: ``{"heads": [..], "ffn": [..], "params": n}``."""
    out: dict = {"heads": [], "ffn": []}
    for g in find_unit_groups(model):
        out[g.kind].append(g.n_units)
    out["params"] = sum(p.numel() for p in model.parameters())
    return out
