"""A zero-padded plain checkpoint of a model pruned to different sizes per layer.

A config states one size for every layer (and BERT's derives the head size from ``hidden_size /
num_attention_heads``), so a model whose layers were pruned to different sizes has no plain config. Padding every
layer back to one size with units that contribute exactly nothing gives one, at the cost of the padding's weights:

* FFN neurons: zero rows in the intermediate weights (Llama ``gate_proj`` / ``up_proj``, BERT
  ``intermediate.dense``) and their biases, zero columns in the output weight (``down_proj`` / ``output.dense``):
  the padded neuron's activation is ``act(0) * 0`` and its output column is zero;
* attention heads: zero query/key/value rows (and biases) and zero output-projection columns. An all-zero query
  scores every key 0, so the softmax is uniform, and it averages value vectors that are zero: the head's output
  is zero, and its output-projection columns are zero as well.

Llama pads key/value heads with the query heads that share them (``num_attention_heads / num_key_value_heads``
query heads per key/value head, as pruning keeps them), so grouped-query attention pairs every kept query head
with its own key/value head. Padded units go after the kept ones; quantized weight-only layers are padded on their
integer grid (padded groups get scale 1, zero point 0 and value 0: exactly zero, no NaN scale).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..quantize import kernels
from ..quantize.modules import QuantLinear, WeightOnlyLinear
from .weights import Grid, grid_of, layer_sizes, load_model, plain_config

__all__ = ["Padding", "pad_layers_", "plain_model"]

SPEED_NOTE = ("loads anywhere; as large as the widest layer; for the speed of the pruning use hf_optim or ONNX")


@dataclasses.dataclass
class Padding:
    """What :func:`pad_layers_` added.

    Args:
        layers (`list[dict]`): each layer's sizes before padding (``heads``, ``kv_heads`` for Llama, ``ffn``).
        padded_to (`dict`): the sizes every layer has after it.
        parameters (`int`): weights and biases of the padded model.
        padding_parameters (`int`): how many of them are padding zeros.
        max_abs_error (`float`): the largest change of a kept weight (0 except for asymmetric quantized groups
            that padding extends and whose zero point is not an integer).
    """

    layers: list[dict[str, int]]
    padded_to: dict[str, int]
    parameters: int
    padding_parameters: int
    max_abs_error: float = 0.0

    @property
    def share(self) -> float:
        return self.padding_parameters / self.parameters if self.parameters else 0.0

    def note(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.padded_to.items())
        return (f"zero-padded to the same sizes in every layer ({sizes}): {self.padding_parameters:,} of "
                f"{self.parameters:,} parameters ({self.share:.1%}) are padding; {SPEED_NOTE}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "share": round(self.share, 6)}


def _zero_grid(rows: int, cols: int, like: Grid) -> Grid:
    """Padding values on ``like``'s grid: value 0, scale 1, zero point 0 (exactly zero in every precision)."""
    groups = -(-cols // like.group_size) if like.group_size else 1
    zp = None if like.symmetric else torch.zeros(rows, groups)
    return Grid(torch.zeros(rows, cols, dtype=torch.int8), torch.ones(rows, groups), zp, like.bits, like.group_size)


def _pad_grid_cols(grid: Grid, cols: int) -> tuple[Grid, float]:
    """``grid`` with zero columns appended up to ``cols``, and the largest change to a kept value (a partial
    last group that padding fills keeps its scale; an asymmetric one needs an integer zero point to hold 0)."""
    out_f, in_f = grid.q.shape
    extra = cols - in_f
    if extra <= 0:
        return grid, 0.0
    pad_q = torch.zeros(out_f, extra, dtype=torch.int8)
    error = 0.0
    gs = grid.group_size
    shared = bool(gs and in_f % gs)  # the last group straddles kept and padded columns
    if not grid.symmetric and (shared or gs is None):
        zp = grid.zero_point[:, -1:]
        rounded = torch.round(zp).clamp(*kernels.qrange(grid.bits, symmetric=False))
        pad_q[:, : (gs - in_f % gs) if shared else extra] = rounded.to(torch.int8)
        error = float(((rounded - zp).abs() * grid.scale[:, -1:]).max())
    q = torch.cat([grid.q, pad_q], 1)
    if gs is None:
        return Grid(q, grid.scale, grid.zero_point, grid.bits, gs), error
    new_groups = -(-cols // gs) - grid.scale.shape[1]
    fill = _zero_grid(out_f, new_groups * gs, grid)
    scale = torch.cat([grid.scale, fill.scale], 1)
    zp = None if grid.symmetric else torch.cat([grid.zero_point, fill.zero_point], 1)
    return Grid(q, scale, zp, grid.bits, gs), error


def _padded(module: nn.Module, rows: int, cols: int) -> tuple[nn.Module, float]:
    """``module`` grown to ``rows`` outputs and ``cols`` inputs, the new weights (and biases) zero."""
    out_f, in_f = module.out_features, module.in_features
    if (out_f, in_f) == (rows, cols):
        return module, 0.0
    bias = None
    if module.bias is not None:
        bias = torch.cat([module.bias.detach().float(), module.bias.new_zeros(rows - out_f).float()])
    if isinstance(module, WeightOnlyLinear):
        grid, error = _pad_grid_cols(grid_of(module), cols)
        fill = _zero_grid(rows - out_f, cols, grid)
        zp = None if grid.symmetric else torch.cat([grid.zero_point, fill.zero_point])
        return type(module).from_quantized(torch.cat([grid.q, fill.q]), torch.cat([grid.scale, fill.scale]), zp,
                                           bias, group_size=grid.group_size), error
    if isinstance(module, QuantLinear):
        raise ConfigError(f"zero padding takes float and weight-only layers, not {module.scheme}", field="pad_uneven")
    weight = module.weight.detach().new_zeros(rows, cols)
    weight[:out_f, :in_f] = module.weight.detach()
    new = nn.Linear(cols, rows, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new, 0.0


def _targets(model: nn.Module, sizes: list[dict[str, int]]) -> dict[str, int]:
    ffn = max(s["ffn"] for s in sizes)
    if "kv_heads" not in sizes[0]:  # BERT's config derives the head size: every layer gets all its heads back
        return {"heads": model.config.num_attention_heads, "ffn": ffn}
    ratios = {s["heads"] // max(s["kv_heads"], 1) for s in sizes if s["kv_heads"]}
    if len(ratios) > 1 or any(s["heads"] % max(s["kv_heads"], 1) for s in sizes):
        raise ConfigError("layers with different numbers of query heads per key/value head cannot be padded to one "
                          f"grouped-query layout (per layer: {sizes})", field="pad_uneven")
    kv = max(s["kv_heads"] for s in sizes)
    return {"heads": kv * ratios.pop(), "kv_heads": kv, "ffn": ffn}


def _layer_plan(model: nn.Module, target: dict[str, int], head_dim: int, hidden: int) -> list[tuple]:
    """``(parent, attribute, rows, cols)`` of every Linear a layer pads."""
    heads, kv, ffn = target["heads"] * head_dim, target.get("kv_heads", 0) * head_dim, target["ffn"]
    inner = getattr(model, "model", None) or getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    plan = []
    if "kv_heads" in target:
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            plan += [(a, "q_proj", heads, hidden), (a, "k_proj", kv, hidden), (a, "v_proj", kv, hidden),
                     (a, "o_proj", hidden, heads), (m, "gate_proj", ffn, hidden), (m, "up_proj", ffn, hidden),
                     (m, "down_proj", hidden, ffn)]
        return plan
    for layer in inner.encoder.layer:
        s = layer.attention.self
        plan += [(s, "query", heads, hidden), (s, "key", heads, hidden), (s, "value", heads, hidden),
                 (layer.attention.output, "dense", hidden, heads), (layer.intermediate, "dense", ffn, hidden),
                 (layer.output, "dense", hidden, ffn)]
        # BERT's attention reshapes by these (its config's values once the heads are back)
        s.num_attention_heads, s.all_head_size = target["heads"], heads
    return plan


def _parameters(model: nn.Module) -> int:
    """Weights and biases, a quantized Linear's stored as integers counted one per weight."""
    stored = sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, QuantLinear))
    return stored + sum(p.numel() for p in model.parameters())


def pad_layers_(model: nn.Module) -> Padding | None:
    """Pad ``model``'s pruned layers in place with zero units to the sizes one plain config states (see the module
    docstring); ``None`` when every layer already has them.

    Args:
        model (`PreTrainedModel`): a Llama- or BERT-family model (float or weight-only quantized), pruned.

    Returns:
        [`Padding`]: the sizes before and after, and how many parameters are padding.
    """
    sizes = layer_sizes(model)
    if sizes is None:
        raise ConfigError(f"zero padding takes Llama- and BERT-family layers, not {type(model).__name__}",
                          field="pad_uneven")
    target = _targets(model, sizes)
    if all({k: s[k] for k in target} == target for s in sizes):
        return None
    before = _parameters(model)
    error = 0.0
    for parent, attr, rows, cols in _layer_plan(model, target, sizes[0]["head_dim"], sizes[0]["hidden"]):
        new, err = _padded(getattr(parent, attr), rows, cols)
        setattr(parent, attr, new)
        error = max(error, err)
    after = _parameters(model)
    layers = [{k: s[k] for k in target} for s in sizes]
    return Padding(layers=layers, padded_to=target, parameters=after, padding_parameters=after - before,
                   max_abs_error=error)


def plain_model(model_or_dir: Any, pad: bool = False) -> tuple[nn.Module, Any, Padding | None]:
    """The model an exporter writes, its plain config (:func:`~hf_optim.export.weights.plain_config`) and, with
    ``pad``, the padding that made its layers uniform (a model object passed in is copied, not padded)."""
    model = load_model(model_or_dir)
    padding = None
    if pad:
        if model is model_or_dir:
            model = copy.deepcopy(model)
        padding = pad_layers_(model)
    return model, plain_config(model), padding
