"""Pruning: ``PruningCallback`` (scheduled unstructured, N:M and structured pruning inside ``Trainer``) and
``prune_structured_`` (physical removal of attention heads and feed-forward neurons).

Importing this package is light; the torch-based parts load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .config import PruneConfig

_LAZY = {
    "PruningCallback": "hf_optim.prune.callback",
    "Pruner": "hf_optim.prune.callback",
    "prune_structured_": "hf_optim.prune.structure",
    "pruned_units": "hf_optim.prune.structure",
    "find_unit_groups": "hf_optim.prune.structure",
    "structure_summary": "hf_optim.prune.structure",
    "sparsity_at": "hf_optim.prune.schedule",
}

__all__ = ["PruneConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
