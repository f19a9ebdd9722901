"""Sparsity schedules: the fraction pruned at a training step (pure Python)."""

from __future__ import annotations

import math

__all__ = ["resolve_step", "sparsity_at", "is_update_step", "units_to_prune"]


def resolve_step(value: float, max_steps: int) -> int:
    """A schedule bound: values in [0, 1] are fractions of ``max_steps``, larger values are step numbers."""
    return int(round(value * max_steps)) if value <= 1 else int(value)


def sparsity_at(step: int, final: float, schedule: str, start: int, end: int, initial: float = 0.0) -> float:
    """Target sparsity after ``step`` optimizer steps.

    ``oneshot``: ``final`` from ``start`` on. ``linear``: ``initial`` to ``final`` linearly over ``[start, end]``.
    ``cubic`` (Zhu & Gupta 2017): ``final + (initial - final) * (1 - (step - start) / (end - start)) ** 3``.
    Before ``start`` the sparsity is ``initial`` (0 unless resumed from a pruned model).
    """
    if step < start:
        return initial
    if schedule == "oneshot" or step >= end:
        return final
    progress = (step - start) / (end - start)
    if schedule == "linear":
        return initial + (final - initial) * progress
    if schedule == "cubic":
        return final + (initial - final) * (1.0 - progress) ** 3
    raise ValueError(f"unknown schedule {schedule!r} (oneshot, linear, cubic)")


def is_update_step(step: int, schedule: str, start: int, end: int, frequency: int) -> bool:
    """Whether masks are recomputed after ``step``: every ``frequency`` steps in ``[start, end]``, and at ``end``."""
    if step < start:
        return False
    if schedule == "oneshot":
        return step == start
    if step > end:
        return False
    return step == end or (step - start) % frequency == 0


def units_to_prune(fraction: float, n_units: int) -> int:
    """Units removed for ``fraction`` of ``n_units`` (rounded down; never all of them)."""
    return min(n_units - 1, int(math.floor(fraction * n_units + 1e-9)))
