"""Write a run's report: enrich ``report.json`` (lineage, Pareto, cost) and write ``report.md`` + PNG plots."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .config import ReportConfig
from .markdown import render_markdown
from .plots import PLOT_FILES, draw_plots, matplotlib_missing
from .summary import load_report, summarize

__all__ = ["write_report", "atomic_write", "REPORT_MD"]

logger = logging.getLogger("hf_optim")
REPORT_MD = "report.md"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it over ``path`` (readers never see half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(run_dir: str | Path, report: dict[str, Any] | None = None, config: ReportConfig | None = None,
                 plots: bool | None = None) -> dict[str, Any]:
    """Summarize a run and write ``report.json`` (enriched), ``report.md`` and the plots into ``run_dir``.

    Args:
        run_dir (`str` or `Path`): the run's output directory.
        report (`dict`, *optional*): the report; read from ``run_dir/report.json`` when not given.
        config (`ReportConfig`, *optional*): price and volume; defaults to the settings stored in the report.
        plots (`bool`, *optional*): draw the PNG plots; defaults to ``config.plots``. Without matplotlib the
            markdown says so and no plot is drawn.

    Returns:
        `dict`: the summarized report (what ``report.json`` now holds).
    """
    run_dir = Path(run_dir)
    if report is None:
        report = load_report(run_dir)
    summary = summarize(report, config)
    from .. import __version__

    # `hf_optim` is the version that ran the stages (the runner writes it); a report assembled elsewhere gets
    # this one, and `hf_optim_report` always says which version wrote these files
    summary.setdefault("hf_optim", __version__)
    summary["hf_optim_report"] = __version__
    want_plots = summary["cost"]["settings"]["plots"] if plots is None else plots
    drawn, note = None, None
    if not summary["artifacts"]:
        note = "no evaluated artifact"
    elif not want_plots:
        note = "disabled (report.plots: false or --no-plots)"
    else:
        note = matplotlib_missing()
    if note is None:
        paths = draw_plots(summary, run_dir)
        drawn = {k: p.name for k, p in paths.items()}
    else:
        for name in PLOT_FILES.values():  # stale plots of an earlier report would contradict this one
            (run_dir / name).unlink(missing_ok=True)
    atomic_write(run_dir / "report.json", json.dumps(summary, indent=2, default=str))
    atomic_write(run_dir / REPORT_MD, render_markdown(summary, drawn, note))
    logger.info("report: %s", run_dir / REPORT_MD)
    return summary
