"""Run reports (``report.json`` enrichment, ``report.md`` with plots), cost/benefit, model cards, A/B comparison.

Importing this package is light (no torch, no matplotlib): the public API loads on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "ReportConfig": "hf_optim.report.config",
    "DEFAULT_PRICE_PER_HOUR": "hf_optim.report.config",
    "summarize": "hf_optim.report.summary",
    "write_report": "hf_optim.report.writer",
    "build_model_card": "hf_optim.report.card",
    "write_model_card": "hf_optim.report.card",
    "check_artifact": "hf_optim.report.card",
    "compare_runs": "hf_optim.report.compare",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
