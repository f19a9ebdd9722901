"""The GPTQ solve for one weight matrix, and the least-squares refit of its scales.

For a Linear with weight ``W`` and calibration inputs ``X`` it minimises ``||W X - Q X||`` column by column using
the inverse Hessian ``H = 2 X X^T`` (Frantar et al., 2022, "GPTQ").
"""

from __future__ import annotations

import torch

from .. import kernels

__all__ = ["gptq_quantize_weight", "refit_qparams"]


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None,
                         symmetric: bool = True, damp: float = 0.01, block_size: int = 128, partial: bool = False,
                         clip_search: bool = False, act_order: bool = False, refit: bool = False,
                         integer_zero_points: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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
    on the output error (:func:`refit_qparams`). ``integer_zero_points``: every grid's zero point is an integer
    (:func:`kernels.weight_qparams`), and stays one through the refit.
    """
    import functools

    qparams = functools.partial(kernels.weight_qparams_mse if clip_search else kernels.weight_qparams,
                                integer_zero_point=integer_zero_points)
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
        if integer_zero_points and zero is not None:
            # w = s * (q - z) with z fixed is linear in s alone: refit the scales on the shifted values
            shifted = Q.float() - zero.repeat_interleave(gs, 1)[:, :in_f]
            scale, _ = refit_qparams(weight, H0, shifted, scale, None, gs)
        else:
            scale, zero = refit_qparams(weight, H0, Q, scale, zero, gs)
    return Q, scale, zero


_REFIT_CHUNK = 1 << 25  # float64 values in one chunk's design matrix (rows x unknowns x inputs)


@torch.no_grad()
def refit_qparams(weight: torch.Tensor, hessian: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  zero: torch.Tensor | None, group_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and zero points) that minimise each row's output error for fixed integer values ``q``.

    Row ``w`` is approximated by ``a_g * q + b_g`` on each group ``g``; the ``a``/``b`` minimising
    ``(w - ŵ)ᵀ H (w - ŵ)`` (the squared error of the row's output on the calibration inputs) solve a small
    linear system per row (2 unknowns per group; 1 when symmetric). A group whose solution is not a scale of its
    old scale's sign (no input energy, all-zero weights) keeps its parameters, and a row takes the new ones only
    when they lower its error, so the error never grows.
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
    # per group: a group with no input energy or all-zero weights solves to a useless scale (zero, or of the other
    # sign: a symmetric int4 scale is signed, see kernels.weight_qparams); it keeps its own
    ok = torch.isfinite(a) & (a * scale.double() > 0)
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
