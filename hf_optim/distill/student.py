"""``make_student``: a smaller model initialised from a teacher's own weights (DistilBERT-style).

Depth: the student keeps a subset of the teacher's layers (``uniform``, ``first``, ``last`` or explicit
indices) and copies embeddings and head. Width: hidden size, attention heads and feed-forward width shrink by
keeping the teacher's most important rows/columns (squared weight norms, or hidden activations on sample data),
never simply the first ones. The result is a standard model of the teacher's class with a standard config, so
``save_pretrained`` / ``AutoModelFor*.from_pretrained`` need nothing from hf_optim.

How each parameter is sliced is data: per family, a table maps parameter names to the meaning of each axis
(``hidden`` = residual width, ``q`` = attention inner width, ``kv`` = key/value width, ``ffn``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["make_student", "SUPPORTED_MODEL_TYPES"]

_W = r"\.(weight|bias)"
_BERT_RULES = (
    (r"attention\.self\.(query|key|value)" + _W, {0: "q", 1: "hidden"}),
    (r"attention\.output\.dense" + _W, {0: "hidden", 1: "q"}),
    (r"attention\.output\.LayerNorm" + _W, {0: "hidden"}),
    (r"intermediate\.dense" + _W, {0: "ffn", 1: "hidden"}),
    (r"output\.dense" + _W, {0: "hidden", 1: "ffn"}),
    (r"output\.LayerNorm" + _W, {0: "hidden"}),
)
_DISTILBERT_RULES = (
    (r"attention\.(q_lin|k_lin|v_lin)" + _W, {0: "q", 1: "hidden"}),
    (r"attention\.out_lin" + _W, {0: "hidden", 1: "q"}),
    (r"(sa_layer_norm|output_layer_norm)" + _W, {0: "hidden"}),
    (r"ffn\.lin1" + _W, {0: "ffn", 1: "hidden"}),
    (r"ffn\.lin2" + _W, {0: "hidden", 1: "ffn"}),
)
_LLAMA_RULES = (
    (r"self_attn\.q_proj" + _W, {0: "q", 1: "hidden"}),
    (r"self_attn\.(k_proj|v_proj)" + _W, {0: "kv", 1: "hidden"}),
    (r"self_attn\.o_proj" + _W, {0: "hidden", 1: "q"}),
    (r"mlp\.(gate_proj|up_proj)" + _W, {0: "ffn", 1: "hidden"}),
    (r"mlp\.down_proj" + _W, {0: "hidden", 1: "ffn"}),
    (r"(input_layernorm|post_attention_layernorm)" + _W, {0: "hidden"}),
)


@dataclasses.dataclass(frozen=True)
class _Family:
    rules: tuple
    layers: str          # config attribute names
    hidden: str
    heads: str
    ffn: str
    grouped_kv: bool     # Llama: head size fixed, key/value heads shared by groups of query heads


_FAMILIES = {
    "bert": _Family(_BERT_RULES, "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", False),
    "roberta": _Family(_BERT_RULES, "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                       False),
    "xlm-roberta": _Family(_BERT_RULES, "num_hidden_layers", "hidden_size", "num_attention_heads",
                           "intermediate_size", False),
    "distilbert": _Family(_DISTILBERT_RULES, "n_layers", "dim", "n_heads", "hidden_dim", False),
    "llama": _Family(_LLAMA_RULES, "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                     True),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))
_LAYER_KEY = re.compile(r"^(.*?\.layers?\.)(\d+)\.(.*)$")


def _select_layers(layers, num_layers: int, n_teacher: int) -> list[int]:
    if num_layers < 1 or num_layers > n_teacher:
        raise ValueError(f"num_layers = {num_layers}: the teacher has {n_teacher} layers; choose 1..{n_teacher}")
    if isinstance(layers, str):
        if layers == "uniform":  # evenly spaced, keeping the first and the last layer
            if num_layers == 1:
                return [n_teacher - 1]
            return sorted({round(i * (n_teacher - 1) / (num_layers - 1)) for i in range(num_layers)})
        if layers == "first":
            return list(range(num_layers))
        if layers == "last":
            return list(range(n_teacher - num_layers, n_teacher))
        raise ValueError(f"layers = {layers!r}: use 'uniform', 'first', 'last' or a list of layer indices")
    idx = [int(i) for i in layers]
    if len(idx) != num_layers or len(set(idx)) != len(idx) or any(not 0 <= i < n_teacher for i in idx):
        raise ValueError(f"layers = {list(layers)}: need {num_layers} distinct indices in 0..{n_teacher - 1}")
    return idx


def _rule(family: _Family, suffix: str):
    for pattern, axes in family.rules:
        if re.fullmatch(pattern, suffix):
            return axes
    return None


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order (k = all keeps the identity order)."""
    return torch.topk(scores, k).indices.sort().values


def _importance(teacher_sd, family: _Family, selected: list[int], sample_hidden: Optional[torch.Tensor]):
    """Squared-norm importance per axis kind: ``{"hidden": (H,), "q"/"kv"/"ffn": {layer: (n,)}}``."""
    imp: dict = {"hidden": None, "q": {}, "kv": {}, "ffn": {}}
    for name, w in teacher_sd.items():
        m = _LAYER_KEY.match(name)
        if not m or int(m.group(2)) not in selected:
            continue
        axes = _rule(family, m.group(3))
        if axes is None:
            continue
        layer = int(m.group(2))
        w = w.detach().float() ** 2
        for axis, kind in (axes.items() if w.dim() > 1 else [(0, axes[0])]):
            other = [d for d in range(w.dim()) if d != axis]
            s = w.sum(dim=other) if other else w
            if kind == "hidden":
                imp["hidden"] = s if imp["hidden"] is None else imp["hidden"] + s
            else:
                imp[kind][layer] = imp[kind].get(layer, 0) + s
    if sample_hidden is not None:
        imp["hidden"] = sample_hidden
    return imp


def _hidden_activation_energy(teacher, sample_inputs) -> torch.Tensor:
    with torch.no_grad():
        out = teacher(**sample_inputs, output_hidden_states=True)
    mask = sample_inputs.get("attention_mask")
    total = 0
    for hs in out.hidden_states:
        e = hs.float() ** 2
        if mask is not None:
            e = e * mask[..., None].to(e.dtype)
        total = total + e.sum(dim=(0, 1))
    return total


def make_student(teacher: nn.Module, num_layers: int, layers: Union[str, Sequence[int]] = "uniform",
                 hidden_size: Optional[int] = None, num_heads: Optional[int] = None,
                 intermediate_size: Optional[int] = None, sample_inputs: Optional[dict] = None) -> nn.Module:
    """Build a smaller model of the teacher's class, initialised from the teacher's weights.

    Args:
        teacher (`PreTrainedModel`): a BERT, RoBERTa/XLM-R, DistilBERT or Llama model with any head.
        num_layers (`int`): student depth (1 .. teacher depth).
        layers (`str` or `list[int]`, *optional*, defaults to ``"uniform"``): teacher layers to copy:
            ``"uniform"`` (evenly spaced, first and last kept), ``"first"``, ``"last"``, or 0-based indices.
        hidden_size (`int`, *optional*): student width; keeps the teacher's most important hidden dimensions.
        num_heads (`int`, *optional*): attention heads. BERT-like models: defaults to keeping the teacher's head
            size, and a smaller head size keeps the most important dimensions of each kept head. Llama: the head
            size is fixed, query heads are kept by whole key/value groups (``num_heads`` must be a multiple of
            the group size).
        intermediate_size (`int`, *optional*): feed-forward width; keeps the most important neurons.
        sample_inputs (`dict`, *optional*): a tokenized batch; when given, hidden dimensions are ranked by their
            activation energy on it instead of by weight norms.

    Returns:
        The student (``eval()`` mode, the teacher's dtype and device). The teacher is not modified.

    Raises:
        ValueError: an unsupported architecture, more layers / a larger width than the teacher, or a head count
            that does not divide the width.
    """
    cfg = getattr(teacher, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in _FAMILIES:
        raise ValueError(f"make_student supports model types {', '.join(SUPPORTED_MODEL_TYPES)}; "
                         f"got {model_type or type(teacher).__name__!r}")
    fam = _FAMILIES[model_type]
    n_teacher = getattr(cfg, fam.layers)
    selected = _select_layers(layers, num_layers, n_teacher)
    H, n_heads, I = getattr(cfg, fam.hidden), getattr(cfg, fam.heads), getattr(cfg, fam.ffn)
    head_dim = (getattr(cfg, "head_dim", None) or H // n_heads) if fam.grouped_kv else H // n_heads
    h = H if hidden_size is None else int(hidden_size)
    i_size = I if intermediate_size is None else int(intermediate_size)
    if not 1 <= h <= H:
        raise ValueError(f"hidden_size = {h}: must be in 1..{H} (the teacher's width); a student cannot be wider")
    if not 1 <= i_size <= I:
        raise ValueError(f"intermediate_size = {i_size}: must be in 1..{I} (the teacher's feed-forward width)")
    if model_type == "distilbert" and h != H and getattr(cfg, "sinusoidal_pos_embds", False):
        raise ValueError("hidden_size cannot shrink a DistilBERT with sinusoidal position embeddings")

    sd = teacher.state_dict()
    sample_hidden = _hidden_activation_energy(teacher, sample_inputs) if sample_inputs is not None else None
    imp = _importance(sd, fam, selected, sample_hidden)
    if imp["hidden"] is None or not imp["q"] or not imp["ffn"]:
        raise ValueError(f"{type(teacher).__name__}: parameter names do not match the {model_type} layout")
    keep: dict = {"hidden": _top(imp["hidden"], h), "q": {}, "kv": {}, "ffn": {}}
    new_cfg = copy.deepcopy(cfg)

    if fam.grouped_kv:
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        group = n_heads // n_kv
        heads = n_heads if num_heads is None else int(num_heads)
        if not 1 <= heads <= n_heads or heads % group:
            raise ValueError(f"num_heads = {heads}: must be a multiple of {group} (query heads per key/value head) "
                             f"in 1..{n_heads}")
        new_kv = heads // group
        for t in selected:
            q = imp["q"][t].view(n_kv, group, head_dim).sum(dim=(1, 2))
            kv = imp["kv"][t].view(n_kv, head_dim).sum(-1)
            groups = _top(q + kv, new_kv)
            keep["q"][t] = torch.cat([torch.arange(g * group * head_dim, (g + 1) * group * head_dim) for g in groups])
            keep["kv"][t] = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in groups])
        new_cfg.num_key_value_heads = new_kv
        new_cfg.head_dim = head_dim  # explicit: the hidden size no longer determines it
    else:
        if num_heads is not None:
            heads = int(num_heads)
        elif h == H:
            heads = n_heads
        elif h % head_dim == 0 and h // head_dim <= n_heads:
            heads = h // head_dim
        elif h % n_heads == 0:
            heads = n_heads
        else:
            raise ValueError(f"hidden_size = {h}: pass num_heads (a divisor of {h}, at most {n_heads})")
        if not 1 <= heads <= n_heads:
            raise ValueError(f"num_heads = {heads}: must be in 1..{n_heads} (the teacher's heads)")
        if h % heads:
            raise ValueError(f"num_heads = {heads} does not divide hidden_size = {h}")
        new_hd = h // heads
        if new_hd > head_dim:
            raise ValueError(f"hidden_size {h} / num_heads {heads} = head size {new_hd} exceeds the teacher's "
                             f"{head_dim}; use more heads (at least {-(-h // head_dim)})")
        for t in selected:
            per_dim = imp["q"][t].view(n_heads, head_dim)
            kept = _top(per_dim.sum(-1), heads)
            keep["q"][t] = torch.cat([hd * head_dim + _top(per_dim[hd], new_hd) for hd in kept])
    for t in selected:
        keep["ffn"][t] = _top(imp["ffn"][t], i_size)

    setattr(new_cfg, fam.layers, num_layers)
    setattr(new_cfg, fam.hidden, h)
    setattr(new_cfg, fam.heads, heads)
    setattr(new_cfg, fam.ffn, i_size)
    student = type(teacher)(new_cfg).to(device=next(teacher.parameters()).device, dtype=teacher.dtype)

    new_sd = {}
    for name, target in student.state_dict().items():
        m = _LAYER_KEY.match(name)
        if m:
            t = selected[int(m.group(2))]
            src = sd[f"{m.group(1)}{t}.{m.group(3)}"]
            axes = _rule(fam, m.group(3))
        else:
            t, src, axes = None, sd[name], None
        value = src
        if axes is not None:
            for axis, kind in (axes.items() if src.dim() > 1 else [(0, axes[0])]):
                idx = keep[kind] if kind == "hidden" else keep[kind][t]
                value = value.index_select(axis, idx.to(value.device))
        elif value.shape != target.shape:
            for axis in range(value.dim()):
                if value.shape[axis] != target.shape[axis] and value.shape[axis] == H:
                    value = value.index_select(axis, keep["hidden"].to(value.device))
        if value.shape != target.shape:
            raise ValueError(f"cannot map teacher parameter {name} {tuple(src.shape)} onto the student's "
                             f"{tuple(target.shape)}")
        new_sd[name] = value.clone()
    student.load_state_dict(new_sd, strict=True)
    return student.eval()
