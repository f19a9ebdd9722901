"""Tuning the grid GPTQ chose: scales and zero points move, the integer values stay.

:func:`tune_layer_qparams` fits one decoder layer's output to the float model's; :func:`tune_model_qparams`
fits the whole model's next-token distribution. Both multiply every group's scale by ``exp(m)`` and shift its
zero point by ``d`` (``m``, ``d`` start at 0, learned with Adam, one calibration batch per step) and keep the
result only if the loss over all batches lowers.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from ...console import progress as progress_bar
from ...distill.losses import soft_kl
from .. import kernels
from ..modules import WeightOnlyLinear
from .calibration import CACHE, TeacherLogits

__all__ = ["tune_layer_qparams", "tune_model_qparams", "output_head", "inputs_of"]


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """``module``'s parameters without gradients inside the block, as they were after it."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _grid_offsets(scales: dict[str, torch.Tensor], zeros: dict[str, torch.Tensor | None]):
    """Trainable ``(log scale factor, zero point shift)`` per name, both zero: the grid as it is."""
    logm = {n: torch.zeros_like(s, requires_grad=True) for n, s in scales.items()}
    shift = {n: torch.zeros_like(z, requires_grad=True) for n, z in zeros.items() if z is not None}
    return logm, shift


def _shifted(zero: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor | None:
    return zero if zero is None or shift is None else zero + shift


def _adam(params: list[torch.Tensor], grid: Callable[[], dict], loss: Callable[[int, dict], torch.Tensor],
          batches: int, steps: Iterable[int], lr: float) -> tuple[float, float]:
    """Adam on ``params``, one batch per step (``loss(i, grid())``); the summed loss over all batches before and
    after. ``grid()`` builds the tensors that depend on ``params``; the passes over all batches build it once
    (the same values for every batch) unless :data:`~.calibration.CACHE` is off."""

    def total() -> float:
        with torch.no_grad():
            fixed = grid() if CACHE.enabled else None
            return sum(float(loss(i, fixed if fixed is not None else grid())) for i in range(batches))

    before = total()
    opt = torch.optim.Adam(params, lr=lr)
    for step in steps:
        opt.zero_grad()
        loss(step % batches, grid()).backward()
        opt.step()
    return before, total()


@torch.enable_grad()
def tune_layer_qparams(layer: nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                       inputs: Sequence[tuple[tuple, dict]], targets: Sequence[torch.Tensor], group_size: int | None,
                       steps: int, lr: float = 5e-3, integer_zero_points: bool = False) -> dict[str, float]:
    """Tune a decoder layer's scales and zero points so its output matches the float model's, in place.

    ``weights`` maps the layer's Linear weight names (``"self_attn.q_proj.weight"``) to their
    ``(q, scale, zero_point)``. Every group's scale is multiplied by ``exp(m)`` and its zero point shifted by
    ``d``, learned with Adam on the mean squared difference between the layer's output on ``inputs`` (the hidden
    states the quantized layers before it produce) and ``targets`` (the float layer's output on the float model's
    hidden states), one calibration batch per step (``integer_zero_points``: the zero points stay, only the
    scales move). Unlike :func:`~hf_optim.quantize.gptq.refit_qparams`, which
    fits each Linear's own output, this sees the whole layer (attention, activation, residual) and the error the
    layers before it left. The tuned parameters are kept only if they lower the loss over all batches.

    Returns:
        `dict`: ``loss_before`` and ``loss_after`` (summed over the batches; equal when nothing was kept).
    """
    from torch.func import functional_call

    logm, shift = _grid_offsets({n: s for n, (_, s, _) in weights.items()},
                                {} if integer_zero_points else {n: z for n, (_, _, z) in weights.items()})

    def grid() -> dict[str, torch.Tensor]:
        return {n: kernels.dequantize_weight(q, s * logm[n].exp(), zero_point=_shifted(z, shift.get(n)),
                                             group_size=group_size)
                for n, (q, s, z) in weights.items()}

    def loss(i: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
        args, kwargs = inputs[i]
        out = functional_call(layer, params, args, kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return (out - targets[i]).pow(2).mean()

    with _frozen(layer):
        before, after = _adam([*logm.values(), *shift.values()], grid, loss, len(inputs), range(steps), lr)
    if after < before:
        with torch.no_grad():
            for n, (q, s, z) in list(weights.items()):
                weights[n] = (q, s * logm[n].exp(), _shifted(z, shift.get(n)))
    return {"loss_before": before, "loss_after": min(before, after)}


class _Captured(Exception):
    pass


def output_head(model: nn.Module) -> nn.Module:
    """The model's output head (``get_output_embeddings()``); ``ValueError`` when it has none."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head (get_output_embeddings()) to tune against")
    return head


def inputs_of(model: nn.Module, module: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
              with_kwargs: bool = False) -> list:
    """What ``module`` gets on each batch: its first input, or ``(args, kwargs)`` with ``with_kwargs``. The model
    stops there (``module`` itself and what comes after it are not run)."""
    seen: list = []

    def grab(mod, args, kwargs=None):
        seen.append((args, dict(kwargs)) if with_kwargs else args[0].detach())
        raise _Captured

    handle = module.register_forward_pre_hook(grab, with_kwargs=with_kwargs)
    try:
        for batch in batches:
            try:
                model(**batch, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return seen


@torch.enable_grad()
def tune_model_qparams(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                       teacher_head_inputs: Sequence[torch.Tensor], steps: int, lr: float = 1e-3,
                       teacher_head: nn.Module | None = None, progress: bool = False,
                       integer_zero_points: bool = False) -> dict[str, float]:
    """Tune every weight-only quantized Linear's scales and zero points together, end to end, in place.

    The loss is the KL divergence from the float model's next-token distribution to the quantized model's, per
    token (padding masked), on the calibration ``batches``; ``teacher_head_inputs[i]`` is what the float model fed
    its output head on ``batches[i]``, and ``teacher_head`` that float head (default: the model's own, when it is
    not quantized); the teacher's logits are the head applied to those inputs. As in the end-to-end phase
    of EfficientQAT (Chen et al., 2024), only the quantization parameters move, one batch per step; the integer
    values stay. Where :func:`tune_layer_qparams` matches each layer's output, this matches what perplexity
    measures, so it can trade one layer's error for another's. The result is kept only if the loss over all
    batches lowers. ``progress`` shows a bar over the steps; ``integer_zero_points``: only the scales move.

    Returns:
        `dict`: ``loss_before`` and ``loss_after`` (mean KL over the batches; equal when nothing was kept), and
        what the float model's logits cost (:meth:`~.calibration.TeacherLogits.stats`).
    """
    from torch.func import functional_call

    head = teacher_head if teacher_head is not None else output_head(model)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}
    logm, shift = _grid_offsets({n: m.weight_scale for n, m in mods.items()},
                                {n: None if m.symmetric or integer_zero_points else m.weight_zero_point
                                 for n, m in mods.items()})

    def grid() -> dict[str, torch.Tensor]:
        over = {f"{n}.weight_scale": m.weight_scale * logm[n].exp() for n, m in mods.items()}
        over.update({f"{n}.weight_zero_point": mods[n].weight_zero_point + d for n, d in shift.items()})
        return over

    def loss(i: int, over: dict[str, torch.Tensor]) -> torch.Tensor:
        student = functional_call(model, over, (), {**batches[i], "use_cache": False}).logits
        return soft_kl(student, teacher(i), mask=batches[i].get("attention_mask"))

    steps_bar = progress_bar(range(steps), desc="GPTQ end-to-end tuning", enabled=progress, unit="step")
    # the float model's logits: one head matmul per batch instead of one per use (~3 uses per batch)
    with _frozen(model), TeacherLogits(lambda i: head(teacher_head_inputs[i])) as teacher:
        before, after = _adam([*logm.values(), *shift.values()], grid, loss, len(batches), steps_bar, lr)
        cache = teacher.stats()
    before, after = before / len(batches), after / len(batches)
    if after < before:
        with torch.no_grad():
            for n, m in mods.items():
                m.weight_scale.mul_(logm[n].exp())
            for n, d in shift.items():
                mods[n].weight_zero_point.add_(d)
    return {"loss_before": before, "loss_after": min(before, after), **cache}
