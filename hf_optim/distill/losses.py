"""Distillation losses as plain functions of tensors (no Trainer state), so they can be tested by hand."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["soft_kl", "token_mask", "hidden_mse", "attention_kl", "default_layer_map"]


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(teacher || student) of temperature-scaled softmaxes, in float32."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def _masked_kl_sum(student, teacher, mask, temperature):
    return (_kl_rows(student, teacher, temperature) * mask).sum()


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: Optional[torch.Tensor] = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T)) * T^2``, averaged over the rows that ``mask`` keeps.

    Args:
        student_logits (`torch.Tensor`): ``(..., C)`` logits; leading dims are rows (examples or tokens).
        teacher_logits (`torch.Tensor`): same shape; no gradient flows into it.
        temperature (`float`, *optional*, defaults to 1.0): softmax temperature ``T``.
        mask (`torch.Tensor`, *optional*): bool/0-1 tensor of the leading shape; rows with 0 are ignored.
        chunk_size (`int`, *optional*): rows per chunk. Each chunk is recomputed in backward (activation
            checkpointing), so peak memory is ``chunk_size x C`` instead of ``rows x C`` (large vocabularies).

    Returns:
        A scalar tensor (0 when no row is kept).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the student and teacher must share the label set "
                         "/ vocabulary")
    n_cls = student_logits.shape[-1]
    s = student_logits.reshape(-1, n_cls)  # a view for contiguous logits: no copy of tokens x vocab
    t = teacher_logits.detach().reshape(-1, n_cls)
    m = (torch.ones(s.shape[0], device=s.device) if mask is None
         else mask.reshape(-1).to(device=s.device, dtype=torch.float32))
    count = m.sum()
    if chunk_size is None or chunk_size >= s.shape[0]:
        total = _masked_kl_sum(s, t, m, temperature)
    else:
        total = s.new_zeros((), dtype=torch.float32)
        for i in range(0, s.shape[0], chunk_size):
            mc = m[i:i + chunk_size]
            if not bool(mc.any()):
                continue
            args = (s[i:i + chunk_size], t[i:i + chunk_size], mc, temperature)
            if torch.is_grad_enabled() and s.requires_grad:
                total = total + checkpoint(_masked_kl_sum, *args, use_reentrant=False)
            else:
                total = total + _masked_kl_sum(*args)
    return total / count.clamp_min(1.0) * temperature ** 2


def token_mask(shape: Sequence[int], labels: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
               causal: bool, device=None) -> torch.Tensor:
    """Bool ``(batch, seq)`` mask of the token positions whose distributions are compared.

    Padding (``attention_mask == 0``) and ``-100`` labels are dropped. For a causal LM the logits at position
    ``i`` predict token ``i + 1``: position ``i`` counts when token ``i + 1`` is a real, labelled token, and the
    last position never counts. The logits are not sliced (which would copy ``tokens x vocab``): only the mask is.
    """
    batch, seq = shape[0], shape[1]
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    if attention_mask is not None:
        mask &= attention_mask.to(device=device).bool()
    if causal:
        nxt = torch.zeros_like(mask)
        nxt[:, :-1] = mask[:, 1:]
        if labels is not None:
            nxt[:, :-1] &= labels[:, 1:].to(device) != -100
        mask &= nxt
    elif labels is not None and labels.dim() == 2:
        mask &= labels.to(device) != -100
    return mask


def default_layer_map(student_layers: int, teacher_layers: int, with_embeddings: bool) -> list[list[int]]:
    """Student layer ``i`` (1-based) -> teacher layer ``round(i * L_t / L_s)``; plus ``0 -> 0`` when asked."""
    pairs = [[i, max(1, round(i * teacher_layers / student_layers))] for i in range(1, student_layers + 1)]
    return ([[0, 0]] if with_embeddings else []) + pairs


def hidden_mse(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
               layer_map: Sequence[Sequence[int]], projection: Optional[torch.nn.Module] = None,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over ``layer_map`` pairs of the MSE between hidden states at the kept (non-padding) positions.

    ``student_hidden[i]`` / ``teacher_hidden[j]`` are ``(batch, seq, width)`` (index 0 = embeddings, as returned
    with ``output_hidden_states=True``). ``projection`` maps the student's width to the teacher's.
    """
    losses = []
    for si, ti in layer_map:
        s, t = student_hidden[si], teacher_hidden[ti].detach()
        if projection is not None:
            s = projection(s)
        if s.shape != t.shape:
            raise ValueError(f"hidden states of student layer {si} {tuple(s.shape)} and teacher layer {ti} "
                             f"{tuple(t.shape)} differ in shape")
        losses.append(_masked_mean((s.float() - t.float()).pow(2).mean(-1), mask))
    return torch.stack(losses).mean()


def attention_kl(student_attn: Sequence[torch.Tensor], teacher_attn: Sequence[torch.Tensor],
                 layer_map: Sequence[Sequence[int]], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over ``layer_map`` pairs (1-based layers) of ``KL(teacher || student)`` of attention rows.

    Attention tensors are probabilities ``(batch, heads, query, key)``; the KL is averaged over heads and the
    non-padding query positions. Padded keys carry ~0 probability and contribute nothing.
    """
    losses = []
    for sl, tl in layer_map:
        s, t = student_attn[sl - 1], teacher_attn[tl - 1].detach()
        if s.shape != t.shape:
            raise ValueError(f"attention of student layer {sl} {tuple(s.shape)} and teacher layer {tl} "
                             f"{tuple(t.shape)} differ in shape: the attention loss needs equal head counts")
        s, t = s.float(), t.float()
        kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))).sum(-1).mean(1)  # (batch, query)
        losses.append(_masked_mean(kl, mask))
    return torch.stack(losses).mean()


def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``(batch, seq)`` values over the positions ``mask`` keeps (all of them without a mask)."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)
