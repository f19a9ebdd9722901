"""GPTQ: weight-only quantization that compensates each column's rounding error on the columns not yet quantized.

For a Linear with weight ``W`` and calibration inputs ``X`` it minimises ``||W X - Q X||`` column by column using
the inverse Hessian ``H = 2 X X^T`` (Frantar et al., 2022, "GPTQ"). Decoder layers are processed in order and
each layer sees the outputs of the already quantized layers before it, so errors do not compound unseen.

Memory stays small: only the hidden states entering the current layer (calibration tokens x hidden size) and
one Hessian per distinct Linear input (q/k/v share one, gate/up share one) are held.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from ..console import progress as progress_bar
from . import kernels
from .apply import _swap, _targets, check_group_sizes, describe_
from .modules import WeightOnlyLinear, module_for_scheme

__all__ = ["gptq_quantize_weight", "gptq_quantize_", "decoder_layers", "tune_layer_qparams", "tune_model_qparams"]

logger = logging.getLogger("hf_optim")


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None,
                         symmetric: bool = True, damp: float = 0.01, block_size: int = 128, partial: bool = False,
                         clip_search: bool = False, act_order: bool = False, refit: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a ``[out, in]`` weight with GPTQ given the ``[in, in]`` Hessian of its inputs.

    Returns ``(q, scale, zero_point)`` in the layout of :func:`kernels.quantize_weight_affine`. Groups are
    consecutive input columns; each group's scale/zero point is chosen from the error-updated columns when
    the group is reached (``clip_search``: the range shrink with the least rounding error,
    :func:`kernels.weight_qparams_mse`).

    ``act_order`` quantizes the columns in order of decreasing Hessian diagonal (the inputs with the most energy
    first, while the most columns are left to absorb their error) with *static* groups: every group's grid is
    chosen from the original weights before any update, so groups stay consecutive input columns and the
    stored layout is unchanged (no column permutation at inference).

    ``refit`` then re-solves every row's scales (and zero points) for the chosen integer values by least squares
    on the output error (:func:`refit_qparams`).
    """
    qparams = kernels.weight_qparams_mse if clip_search else kernels.weight_qparams
    W = weight.detach().float().clone()
    out_f, in_f = W.shape
    kernels.check_group_size(group_size, in_f, partial=partial)
    H = hessian.detach().double().clone()
    H0 = H.clone() if refit else None
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gs = group_size or in_f
    groups = kernels.num_groups(in_f, gs)
    scale = torch.zeros(out_f, groups)
    zero = None if symmetric else torch.zeros(out_f, groups)
    static = group_size is None or act_order
    if static:  # every grid from the original weights: per channel, or static groups for act_order
        for g in range(groups):
            s0, z0 = qparams(W[:, g * gs:(g + 1) * gs], bits, symmetric)
            scale[:, g] = s0
            if zero is not None:
                zero[:, g] = z0
    perm = None
    if act_order:  # quantize the highest-energy inputs first
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
    except RuntimeError:  # not positive definite even after damping: damp harder once
        H += 0.1 * torch.mean(torch.diag(H)) * torch.eye(in_f, dtype=H.dtype)
        L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()

    qmin, qmax = kernels.qrange(bits, symmetric)
    Q = torch.zeros(out_f, in_f, dtype=torch.int8)
    # Blocks hold whole groups so a group's grid is chosen from columns that already carry the block's updates.
    block = max(gs if group_size else block_size, (block_size // gs) * gs if group_size else block_size)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i if perm is None else int(perm[i1 + i])
            if not static and col % gs == 0:
                s, z = qparams(W1[:, i:i + gs], bits, symmetric)
                scale[:, col // gs] = s
                if zero is not None:
                    zero[:, col // gs] = z
            g = col // gs
            s = scale[:, g]
            w = W1[:, i]
            x = w / s
            if zero is not None:
                x = x + zero[:, g]
            q = torch.round(x).clamp(qmin, qmax)
            Q[:, col] = q.to(torch.int8)
            dq = (q - (zero[:, g] if zero is not None else 0)) * s
            err = (w - dq) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if refit:
        scale, zero = refit_qparams(weight, H0, Q, scale, zero, gs)
    return Q, scale, zero


_REFIT_CHUNK = 1 << 25  # float64 values in one chunk's design matrix (rows x unknowns x inputs)


@torch.no_grad()
def refit_qparams(weight: torch.Tensor, hessian: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  zero: torch.Tensor | None, group_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and zero points) that minimise each row's output error for fixed integer values ``q``.

    Row ``w`` is approximated by ``a_g * q + b_g`` on each group ``g``; the ``a``/``b`` minimising
    ``(w - ŵ)ᵀ H (w - ŵ)`` (the squared error of the row's output on the calibration inputs) solve a small
    linear system per row (2 unknowns per group; 1 when symmetric). A group whose solution is not a positive
    scale (no input energy, all-zero weights) keeps its parameters, and a row takes the new ones only when they
    lower its error, so the error never grows.
    """
    W = weight.detach().double()
    H = hessian.detach().double()
    out_f, in_f = W.shape
    G = scale.shape[1]
    k = G if zero is None else 2 * G
    member = torch.nn.functional.one_hot(torch.arange(in_f) // group_size, G).double()        # [in, G]
    cols = [slice(g * group_size, min((g + 1) * group_size, in_f)) for g in range(G)]
    ones_h = torch.stack([H[c].sum(0) for c in cols]) if zero is not None else None          # [G, in]
    step = max(1, _REFIT_CHUNK // (k * in_f))  # rows per chunk: the products stay within ~512 MB
    thetas = []
    for r0 in range(0, out_f, step):
        Q = q[r0:r0 + step].double()                                                        # [rows, in]
        # row r's design matrix has a row q_r restricted to group g (scale terms) and, with zero points, the
        # indicator of group g (offset terms); MH = design @ H, built group by group: rows x in^2 in all
        MH = torch.stack([Q[:, c] @ H[c] for c in cols], 1)                                 # [rows, G, in]
        if ones_h is not None:
            MH = torch.cat([MH, ones_h[None].expand(len(Q), G, in_f)], 1)                   # [rows, 2G, in]
        lhs = (MH * Q[:, None, :]) @ member                                                  # [rows, k, G]
        if ones_h is not None:
            lhs = torch.cat([lhs, MH @ member], 2)                                           # [rows, 2G, 2G]
        lhs = lhs + 1e-9 * lhs.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(k, dtype=lhs.dtype)
        thetas.append(torch.linalg.solve(lhs, MH @ W[r0:r0 + step, :, None])[..., 0])
    theta = torch.cat(thetas)
    a = theta[:, :G]
    # per group: a group with no input energy or all-zero weights solves to a useless scale; it keeps its own
    ok = torch.isfinite(a) & (a > 0)
    if zero is not None:
        ok &= torch.isfinite(theta[:, G:])
    new_scale = torch.where(ok, a, scale.double()).float()
    new_zero = None if zero is None else torch.where(ok, -theta[:, G:] / a, zero.double()).float()

    def row_error(s, z):
        w_hat = kernels.dequantize_weight(q, s, zero_point=z, group_size=group_size).double()
        e = W - w_hat
        return ((e @ H) * e).sum(-1)

    better = row_error(new_scale, new_zero) < row_error(scale, zero)
    scale = torch.where(better[:, None], new_scale, scale)
    if zero is not None:
        zero = torch.where(better[:, None], new_zero, zero)
    return scale, zero


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


@torch.enable_grad()
def tune_layer_qparams(layer: nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                       inputs: Sequence[tuple[tuple, dict]], targets: Sequence[torch.Tensor], group_size: int | None,
                       steps: int, lr: float = 5e-3, rounding_lr: float = 0.0, bits: int = 4) -> dict[str, float]:
    """Tune a decoder layer's scales and zero points so its output matches the float model's, in place.

    ``weights`` maps the layer's Linear weight names (``"self_attn.q_proj.weight"``) to their ``bits``-bit
    ``(q, scale, zero_point)``. Every group's scale is multiplied by ``exp(m)`` and its zero point shifted by
    ``d`` (``m``, ``d`` start at 0), learned with Adam on the mean squared difference between the layer's output
    on ``inputs`` (the hidden states the quantized layers before it produce) and ``targets`` (the float layer's
    output on the float model's hidden states), one calibration batch per step. Unlike :func:`refit_qparams`,
    which fits each Linear's own output, this sees the whole layer (attention, activation, residual) and the
    error the layers before it left. The tuned parameters are kept only if they lower the loss over all batches.

    The integer values stay fixed unless ``rounding_lr`` > 0: then every value may also move one step up or down
    (AutoRound-style, Cheng et al., 2023): an offset ``v`` in [-1, 1] per value, rounded in the forward pass
    (straight-through gradient), moves by ``rounding_lr`` against the sign of its gradient each step.

    Returns:
        `dict`: ``loss_before`` and ``loss_after`` (summed over the batches; equal when nothing was kept) and
        ``values_moved`` (integer values that changed).
    """
    from torch.func import functional_call

    logm = {n: torch.zeros_like(s, requires_grad=True) for n, (_, s, _) in weights.items()}
    shift = {n: torch.zeros_like(z, requires_grad=True) for n, (_, _, z) in weights.items() if z is not None}
    offset = {n: torch.zeros(q.shape, requires_grad=True) for n, (q, _, _) in weights.items()} if rounding_lr else {}

    def values(n, q):
        if not offset:
            return q
        v = offset[n]
        qmin, qmax = kernels.qrange(bits, weights[n][2] is None)
        return (q + (v + (torch.round(v) - v).detach())).clamp(qmin, qmax)   # straight-through rounding

    def dequantized():
        return {n: kernels.dequantize_weight(values(n, q), s * logm[n].exp(),
                                             zero_point=None if z is None else z + shift[n], group_size=group_size)
                for n, (q, s, z) in weights.items()}

    def loss(i, params):
        args, kwargs = inputs[i]
        out = functional_call(layer, params, args, kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return (out - targets[i]).pow(2).mean()

    with _frozen(layer):
        with torch.no_grad():
            before = sum(float(loss(i, dequantized())) for i in range(len(inputs)))
        opt = torch.optim.Adam([*logm.values(), *shift.values()], lr=lr)
        for step in range(steps):
            opt.zero_grad()
            loss(step % len(inputs), dequantized()).backward()
            opt.step()
            with torch.no_grad():
                for v in offset.values():
                    v.sub_(rounding_lr * v.grad.sign()).clamp_(-1, 1)
                    v.grad = None
        with torch.no_grad():
            after = sum(float(loss(i, dequantized())) for i in range(len(inputs)))
    moved = 0
    if after < before:
        with torch.no_grad():
            for n, (q, s, z) in list(weights.items()):
                q_new = values(n, q.float()).round().to(q.dtype)
                moved += int((q_new != q).sum())
                weights[n] = (q_new, s * logm[n].exp(), None if z is None else z + shift[n])
    return {"loss_before": before, "loss_after": min(before, after), "values_moved": moved}


class _Captured(Exception):
    pass


def _masked_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the (unmasked) tokens of KL(teacher || student), both given as logits."""
    kl = torch.nn.functional.kl_div(student.float().log_softmax(-1), teacher.float().log_softmax(-1),
                                    log_target=True, reduction="none").sum(-1)
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def _output_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head (get_output_embeddings()) to tune against")
    return head


def _inputs_of(model: nn.Module, module: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
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
                       teacher_head: nn.Module | None = None, progress: bool = False) -> dict[str, float]:
    """Tune every weight-only quantized Linear's scales and zero points together, end to end, in place.

    The loss is the KL divergence from the float model's next-token distribution to the quantized model's, per
    token (padding masked), on the calibration ``batches``; ``teacher_head_inputs[i]`` is what the float model fed
    its output head on ``batches[i]``, and ``teacher_head`` that float head (default: the model's own, when it is
    not quantized); the teacher's logits are the head applied to those inputs. As in the end-to-end phase
    of EfficientQAT (Chen et al., 2024), only the quantization parameters move: each group's scale is multiplied
    by ``exp(m)`` and its zero point shifted by ``d``, learned with Adam, one batch per step; the integer values
    stay. Where :func:`tune_layer_qparams` matches each layer's output, this matches what perplexity measures, so
    it can trade one layer's error for another's. The result is kept only if the loss over all batches lowers.
    ``progress`` shows a bar over the steps.

    Returns:
        `dict`: ``loss_before`` and ``loss_after`` (mean KL over the batches; equal when nothing was kept).
    """
    from torch.func import functional_call

    head = teacher_head if teacher_head is not None else _output_head(model)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}
    logm = {n: torch.zeros_like(m.weight_scale, requires_grad=True) for n, m in mods.items()}
    shift = {n: torch.zeros_like(m.weight_zero_point, requires_grad=True) for n, m in mods.items() if not m.symmetric}

    def loss(i: int) -> torch.Tensor:
        over = {f"{n}.weight_scale": m.weight_scale * logm[n].exp() for n, m in mods.items()}
        over.update({f"{n}.weight_zero_point": mods[n].weight_zero_point + d for n, d in shift.items()})
        with torch.no_grad():
            teacher = head(teacher_head_inputs[i])
        student = functional_call(model, over, (), {**batches[i], "use_cache": False}).logits
        return _masked_kl(teacher, student, batches[i].get("attention_mask"))

    with _frozen(model):
        with torch.no_grad():
            before = sum(float(loss(i)) for i in range(len(batches))) / len(batches)
        opt = torch.optim.Adam([*logm.values(), *shift.values()], lr=lr)
        for step in progress_bar(range(steps), desc="GPTQ end-to-end tuning", enabled=progress, unit="step"):
            opt.zero_grad()
            loss(step % len(batches)).backward()
            opt.step()
        with torch.no_grad():
            after = sum(float(loss(i)) for i in range(len(batches))) / len(batches)
            if after < before:
                for n, m in mods.items():
                    m.weight_scale.mul_(logm[n].exp())
                for n, d in shift.items():
                    mods[n].weight_zero_point.add_(d)
    return {"loss_before": before, "loss_after": min(before, after)}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the ``nn.ModuleList`` with ``num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return mod
    raise ValueError(f"could not find the decoder layers of {type(model).__name__} (an nn.ModuleList of "
                     "config.num_hidden_layers blocks); GPTQ supports decoder-only transformers")


@torch.no_grad()
def gptq_quantize_(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], scheme: str = "int4_weight_only",
                   group_size: int | None = 128, symmetric: bool = True, include: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = None, damp: float = 0.01, lm_head: bool = False,
                   embeddings: str | None = None, partial_groups: bool = False, clip_search: bool = False,
                   act_order: bool = True, refit: bool = False, tune_steps: int = 0, tune_lr: float = 5e-3,
                   tune_rounding_lr: float = 0.0, e2e_steps: int = 0, e2e_lr: float = 1e-3,
                   progress: bool = False) -> dict[str, Any]:
    """Quantize the decoder layers' Linear weights of a causal LM with GPTQ, in place, layer by layer.

    Args:
        model (`nn.Module`): a float decoder-only model (``LlamaForCausalLM`` and alike), eval mode.
        batches (`list[dict]`): calibration inputs (``input_ids`` and optionally ``attention_mask``).
        scheme (`str`, *optional*, defaults to ``"int4_weight_only"``): or ``int8_weight_only``.
        group_size (`int`, *optional*, defaults to 128): input columns per scale (``None``: per channel).
        symmetric (`bool`, *optional*, defaults to `True`): ``False`` adds a zero point per group.
        include (`list[str]`, *optional*) / exclude (`list[str]`, *optional*): module-name regexes.
        damp (`float`, *optional*, defaults to 0.01): Hessian damping (fraction of its mean diagonal).
        lm_head (`bool`, *optional*) / embeddings (`str`, *optional*): as in :func:`quantize_model_`; both are
            rounded to nearest (the head's inputs come after the last layer).
        partial_groups (`bool`, *optional*, defaults to `False`): allow a shorter last group where
            ``group_size`` does not divide a layer's input size (otherwise that raises).
        clip_search (`bool`, *optional*, defaults to `False`): choose each group's range by the least squared
            rounding error over a few shrink factors instead of its full min..max.
        act_order (`bool`, *optional*, defaults to `True`): quantize each weight's columns in order of decreasing
            input energy, with static groups (see :func:`gptq_quantize_weight`).
        refit (`bool`, *optional*, defaults to `False`): re-solve the scales and zero points by least squares on
            each layer's output error after its values are chosen (:func:`refit_qparams`).
        tune_steps (`int`, *optional*, defaults to 0): then tune each layer's scales and zero points for this many
            Adam steps (learning rate ``tune_lr``) so the layer's output follows the float model's
            (:func:`tune_layer_qparams`); 0 skips it. ``tune_rounding_lr`` > 0 lets the tuning move integer
            values one step too.
        e2e_steps (`int`, *optional*, defaults to 0): last, tune all the quantized Linear layers' scales and zero
            points together (the head's too, if quantized) for this many Adam steps (learning rate ``e2e_lr``) so
            the model's next-token distribution follows the float model's (:func:`tune_model_qparams`); 0 skips
            it. Each step is a forward and backward pass of the whole model on one calibration batch.
        progress (`bool`, *optional*, defaults to `False`): progress bars over the layers and the tuning steps.

    Returns:
        `dict`: calibration tokens, layers and modules quantized, mean relative output error of the layers.
    """
    from .apply import quantize_embeddings_

    if scheme not in ("int8_weight_only", "int4_weight_only"):
        raise ValueError(f"GPTQ applies to int8_weight_only / int4_weight_only, not {scheme!r}")
    bits = 4 if scheme == "int4_weight_only" else 8
    cls = module_for_scheme(scheme)
    targets = dict(_targets(model, include, exclude, lm_head))
    if not partial_groups:
        check_group_sizes(targets.items(), group_size)
    layers = decoder_layers(model)
    layer_prefix = {id(layer): None for layer in layers}
    for name, mod in model.named_modules():
        if id(mod) in layer_prefix:
            layer_prefix[id(mod)] = name

    # End-to-end tuning compares against the float model's logits: its output head and what it feeds it.
    float_head = _output_head(model) if e2e_steps else None
    head_inputs = _inputs_of(model, float_head, batches) if e2e_steps else None
    # Inputs of the first layer (hidden states + the keyword arguments the model passes to every layer).
    captured: list[tuple[tuple, dict]] = _inputs_of(model, layers[0], batches, with_kwargs=True)
    if not captured:
        raise ValueError("GPTQ calibration got no batches")
    tokens = sum(int(b["input_ids"].numel()) for b in batches)

    def hidden_of(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def with_hidden(args, kwargs, h):
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    def run_layer(layer, args, kwargs):
        out = layer(*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    done, errors, tuned = [], [], []
    # Tuning follows the float model: its hidden states are carried next to the quantized model's.
    float_hidden = [hidden_of(a, k) for a, k in captured] if tune_steps else None
    for layer in progress_bar(layers, desc="GPTQ layers", enabled=progress, unit="layer"):
        prefix = layer_prefix[id(layer)]
        mine = {n: m for n, m in targets.items() if n.startswith(prefix + ".")}
        if float_hidden is not None:
            float_hidden = [run_layer(layer, *with_hidden(a, k, h)) for (a, k), h in zip(captured, float_hidden)]
        if not mine:
            captured = [with_hidden(a, k, run_layer(layer, a, k)) for a, k in captured]
            continue
        hessians: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        # Same input tensor (q/k/v, gate/up): one Hessian. The tensor is kept referenced so its memory cannot be
        # reused by another input of the same shape within the call.
        shared: dict[tuple, tuple[str, torch.Tensor]] = {}

        def hook_for(name):
            def hook(mod, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                key = (x.data_ptr(), tuple(x.shape))
                if key in shared:
                    first = shared[key][0]
                    hessians[name], counts[name] = hessians[first], counts[first]
                    return
                shared[key] = (name, x)
                n_old = counts.get(name, 0)
                n_new = n_old + x.shape[0]
                h = hessians.get(name)
                h = torch.zeros(x.shape[1], x.shape[1]) if h is None else h * (n_old / n_new)
                h.addmm_(x.t(), x, alpha=2.0 / n_new)
                hessians[name], counts[name] = h, n_new
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in mine.items()]
        try:
            float_out = []
            for a, k in captured:
                shared.clear()
                float_out.append(run_layer(layer, a, k))
        finally:
            for h in handles:
                h.remove()
        param = {name: name[len(prefix) + 1:] + ".weight" for name in mine}  # the weight's name in the layer
        weights = {param[name]: gptq_quantize_weight(lin.weight, hessians[name], bits, group_size, symmetric, damp,
                                                     partial=partial_groups, clip_search=clip_search,
                                                     act_order=act_order, refit=refit) for name, lin in mine.items()}
        hessians.clear()
        if tune_steps:
            tuned.append(tune_layer_qparams(layer, weights, captured, float_hidden, group_size, tune_steps, tune_lr,
                                            tune_rounding_lr, bits))
        for name, lin in mine.items():
            q, scale, zero = weights[param[name]]
            _swap(model, name, cls.from_quantized(q, scale, zero, lin.bias, group_size=group_size))
            done.append(name)
        new = []
        num = den = 0.0
        for (a, k), ref in zip(captured, float_out):
            out = run_layer(layer, a, k)
            num += float((out - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
            new.append(with_hidden(a, k, out))
        captured = new
        errors.append(math.sqrt(num / max(den, 1e-30)))
    # What the layers did not cover (lm_head after the last layer) is rounded to nearest.
    rest = [(n, m) for n, m in targets.items() if n not in set(done)]
    for name, lin in rest:
        _swap(model, name, cls.from_linear(lin, group_size=group_size, symmetric=symmetric,
                                           partial_groups=partial_groups))
    if embeddings:
        quantize_embeddings_(model, 4 if embeddings == "int4" else 8,
                             (group_size or 32) if embeddings == "int4" else None, symmetric)
    # Last, so it also makes up for the rounded-to-nearest head and embeddings.
    e2e = tune_model_qparams(model, batches, head_inputs, e2e_steps, e2e_lr, float_head,
                             progress) if e2e_steps else None
    del float_head, head_inputs
    describe_(model, scheme, group_size=group_size, symmetric=None if symmetric else False, method="gptq",
              calibration_tokens=tokens, partial_groups=partial_groups or None)
    logger.info("GPTQ: %d modules in %d layers on %d calibration tokens", len(done), len(errors), tokens)
    out = {"method": "gptq", "clip_search": clip_search, "act_order": act_order, "refit": refit,
           "calibration_tokens": tokens, "modules_gptq": len(done), "modules_rtn": len(rest),
           "layer_output_rel_error_mean": round(sum(errors) / max(1, len(errors)), 5)}
    if tune_steps:  # how much of the layers' output error (vs the float model) tuning removed, averaged
        out.update(tune_steps=tune_steps, tune_loss_reduction_mean=round(
            sum(1 - t["loss_after"] / max(t["loss_before"], 1e-30) for t in tuned) / max(1, len(tuned)), 5),
            tune_values_moved=sum(t["values_moved"] for t in tuned))
    if e2e is not None:  # mean KL to the float model's next-token distribution on the calibration batches
        out.update(e2e_steps=e2e_steps, e2e_kl_before=float(f"{e2e['loss_before']:.4g}"),
                   e2e_kl_after=float(f"{e2e['loss_after']:.4g}"))
    return out
