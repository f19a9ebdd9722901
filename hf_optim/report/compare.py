"""``hf-optim compare RUN_A RUN_B``: two runs' reports side by side (metric, latency, throughput, size, cost)."""

from __future__ import annotations

from typing import Any

from .config import ReportConfig
from .markdown import table
from .summary import load_report, summarize

__all__ = ["compare_runs", "render_comparison"]

# (label, artifact-row key, format, relative change?)
_COLUMNS = [("metric", "value", ".4f", False), ("p50 ms", "latency_ms_p50", ".2f", True),
            ("p95 ms", "latency_ms_p95", ".2f", True), ("samples/s", "throughput_samples_per_s", ".1f", True),
            ("size MB", "size_mb", ".1f", True), ("peak MB", "peak_memory_mb", ".0f", True),
            ("cost/1M", "cost_per_million", ".4f", True)]


def _rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    costs = {c["evaluated_by"]: c for c in summary["cost"]["artifacts"]}
    out = {}
    for r in summary["artifacts"]:
        key = r["artifact"] if r["artifact"] not in out else f"{r['artifact']} [{r['evaluated_by']}]"
        out[key] = {**r, "cost_per_million": (costs.get(r["evaluated_by"]) or {}).get("cost_per_million")}
    return out


def _delta(a: float | None, b: float | None, relative: bool) -> float | None:
    if a is None or b is None:
        return None
    if relative:
        return None if a == 0 else round(100.0 * (b - a) / a, 2)
    return round(b - a, 6)


def compare_runs(run_a, run_b, config: ReportConfig | None = None) -> dict[str, Any]:
    """Compare two runs' reports artifact by artifact (matched by name) and by their final artifacts.

    Args:
        run_a, run_b (`str` or `Path`): run directories (or their ``report.json``).
        config (`ReportConfig`, *optional*): one price for both, so costs are comparable; defaults to run A's
            stored settings (or the defaults).

    Returns:
        `dict` with ``runs`` (name, path, total stage seconds, optimization cost), ``rows`` (per artifact: A, B and
        the delta of each column: metric in absolute units, every other column in percent of A), and ``final``
        (the last evaluated artifact of each run, compared the same way).
    """
    ra, rb = load_report(run_a), load_report(run_b)
    if config is None:
        stored = (ra.get("cost") or {}).get("settings")
        config = ReportConfig.from_dict(stored) if stored else ReportConfig()
    sa, sb = summarize(ra, config), summarize(rb, config)
    rows_a, rows_b = _rows(sa), _rows(sb)

    def pair(a: dict | None, b: dict | None) -> dict[str, Any]:
        out = {}
        for _, key, _, rel in _COLUMNS:
            va, vb = (a or {}).get(key), (b or {}).get(key)
            out[key] = {"a": va, "b": vb, "delta": _delta(va, vb, rel)}
        return out

    names = list(rows_a) + [n for n in rows_b if n not in rows_a]
    rows = [{"artifact": n, "in": "".join(x for x, rows_ in (("A", rows_a), ("B", rows_b)) if n in rows_),
             **pair(rows_a.get(n), rows_b.get(n))} for n in names]
    last_a = list(rows_a.values())[-1] if rows_a else None
    last_b = list(rows_b.values())[-1] if rows_b else None
    return {
        "runs": [{"label": lab, "recipe": s.get("recipe"), "path": str(p),
                  "metric": s["artifacts"][0]["metric"] if s["artifacts"] else None,
                  "optimization_seconds": s["cost"]["optimization_seconds"],
                  "optimization_cost": s["cost"]["optimization_cost"]}
                 for lab, s, p in (("A", sa, run_a), ("B", sb, run_b))],
        "currency": config.currency, "price_per_hour": config.price_per_hour,
        "rows": rows,
        "final": {"a": last_a and last_a["artifact"], "b": last_b and last_b["artifact"],
                  **pair(last_a, last_b)} if last_a and last_b else None,
    }


def _cell(entry: dict[str, Any], spec: str, relative: bool) -> str:
    a, b, d = entry["a"], entry["b"], entry["delta"]
    fa = "—" if a is None else f"{a:{spec}}"
    fb = "—" if b is None else f"{b:{spec}}"
    fd = "" if d is None else (f" ({d:+.1f} %)" if relative else f" ({d:+.4f})")
    return f"{fa} → {fb}{fd}"


def render_comparison(cmp: dict[str, Any]) -> str:
    """Markdown tables of :func:`compare_runs`' result: one row per artifact, each cell ``A → B (delta)``."""
    a, b = cmp["runs"]
    lines = [f"A: {a['recipe']} ({a['path']})", f"B: {b['recipe']} ({b['path']})",
             f"Cells read A → B (change); metric change in {a['metric'] or 'metric'} units, others in % of A. "
             f"Cost at {cmp['price_per_hour']:g} {cmp['currency']}/machine-hour.", ""]
    header = ["artifact", "runs"] + [lab for lab, *_ in _COLUMNS]
    body = [[r["artifact"], r["in"]] + [_cell(r[key], spec, rel) for _, key, spec, rel in _COLUMNS]
            for r in cmp["rows"]]
    if cmp["final"]:
        f = cmp["final"]
        body.append([f"final: {f['a']} vs {f['b']}", "AB"] + [_cell(f[key], spec, rel) for _, key, spec, rel in _COLUMNS])
    lines += table(header, body)
    lines += ["", f"Optimization compute: A {a['optimization_seconds']:,.0f} s ({a['optimization_cost']:.4f} "
              f"{cmp['currency']}), B {b['optimization_seconds']:,.0f} s ({b['optimization_cost']:.4f} {cmp['currency']})."]
    return "\n".join(lines)
