"""PNG plots of a summarized report (matplotlib, the ``plots`` extra): accuracy vs latency, size bars.

Figures are drawn with matplotlib's object API (``Figure`` + Agg canvas): no global pyplot state, no
display backend needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PLOT_FILES", "matplotlib_missing", "draw_plots"]

PLOT_FILES = {"tradeoff": "report-accuracy-latency.png", "size": "report-size.png"}


def matplotlib_missing() -> str | None:
    """`None` when matplotlib can be imported, else the reason (with the install command)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); `pip install 'hf-optim[plots]'` adds it"
    return None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    dup = sum(r["artifact"] == row["artifact"] for r in rows) > 1
    return f"{row['artifact']} ({row['evaluated_by']})" if dup else row["artifact"]


def _tradeoff(rows: list[dict[str, Any]], metric: str, higher_better: bool, path: Path) -> None:
    pts = [r for r in rows if r.get("value") is not None and r.get("latency_ms_p50") is not None]
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for r in pts:
        x, y = r["latency_ms_p50"], r["value"]
        style = dict(marker="*", s=180, color="tab:red", zorder=3) if r["pareto"] else \
            dict(marker="o", s=55, color="tab:gray", zorder=2)
        if r["baseline"]:
            style.update(edgecolors="black", linewidths=1.2)
        ax.scatter([x], [y], **style)
        ax.annotate(_label(r, rows) + (" (baseline)" if r["baseline"] else ""), (x, y),
                    textcoords="offset points", xytext=(6, 5), fontsize=8)
    front = sorted((r["latency_ms_p50"], r["value"]) for r in pts if r["pareto"])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red", linewidth=1,
                alpha=0.6, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("latency p50 at batch 1 (ms)")
    ax.set_ylabel(f"{metric} ({'higher' if higher_better else 'lower'} is better)")
    ax.set_title(f"{metric} vs latency (stars: Pareto front)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _sizes(rows: list[dict[str, Any]], path: Path) -> None:
    bars = [r for r in rows if r.get("size_mb") is not None]
    fig = _figure(7.0, 0.5 * len(bars) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    labels = [_label(r, rows) for r in bars]
    sizes = [r["size_mb"] for r in bars]
    colors = ["tab:blue" if r["baseline"] else ("tab:red" if r["pareto"] else "tab:gray") for r in bars]
    ax.barh(range(len(bars)), sizes, color=colors)
    ax.set_yticks(range(len(bars)), labels=labels, fontsize=8)
    ax.invert_yaxis()
    base = next((r["size_mb"] for r in bars if r["baseline"]), None)
    for i, s in enumerate(sizes):
        ratio = f"  ({base / s:.1f}x smaller)" if base and s and not bars[i]["baseline"] else ""
        ax.text(s, i, f" {s:.1f} MB{ratio}", va="center", fontsize=8)
    ax.set_xlabel("weights size (MB)")
    ax.set_title("size on disk (blue: baseline, red: Pareto front)")
    ax.set_xlim(0, max(sizes, default=1) * 1.6)
    fig.tight_layout()
    fig.savefig(path, format="png")


def draw_plots(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Draw the plots of a summarized report into ``directory`` (each file written whole, then renamed).

    Returns ``{plot: path}``; raises ``ImportError`` without matplotlib (see :func:`matplotlib_missing`).
    """
    import os
    import tempfile

    from .summary import higher_is_better

    rows = report["artifacts"]
    metric = rows[0]["metric"] if rows else "metric"
    out = {}
    for key, name in PLOT_FILES.items():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            if key == "tradeoff":
                _tradeoff(rows, metric, higher_is_better(metric), Path(tmp))
            else:
                _sizes(rows, Path(tmp))
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        out[key] = directory / name
    return out
