"""``report.md``: the human-readable view of a summarized run report."""

from __future__ import annotations

from typing import Any

from .summary import higher_is_better, lineage_text

__all__ = ["render_markdown", "fmt", "money", "table"]


def fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
    """``x`` formatted with ``spec``, or an em dash for a missing value."""
    if x is None:
        return "—"
    return f"{x:{spec}}{suffix}"


def money(x: float | None, currency: str) -> str:
    if x is None:
        return "—"
    digits = 4 if abs(x) < 1 else 2
    return f"{x:,.{digits}f} {currency}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def _delta(value: float | None, base: float | None, metric: str) -> str:
    if value is None or base is None:
        return "—"
    if metric in ("perplexity", "loss", "eval_loss"):
        return f"{value - base:+.3f}"
    return f"{100 * (value - base):+.1f}"


def _machine(report: dict[str, Any]) -> str | None:
    for st in report.get("stages", []):
        m = (st.get("metrics") or {}).get("machine")
        if m:
            return ", ".join(f"{k} {v}" for k, v in m.items())
    return None


def throughput_batch(rows: list[dict[str, Any]]) -> str:
    """``32`` when every row's throughput was measured at batch 32; ``32/64`` when they differ."""
    sizes = sorted({r.get("throughput_batch_size") or 32 for r in rows})
    return "/".join(str(b) for b in sizes)


def _artifact_table(report: dict[str, Any]) -> list[str]:
    rows = report["artifacts"]
    base = next((r for r in rows if r.get("baseline")), None)
    ref = next((r for r in rows if r.get("reference")), None)
    metric = rows[0]["metric"]
    unit = "" if metric in ("perplexity", "loss", "eval_loss") else " (points)"
    out = []
    for r in rows:
        name = r["artifact"] + (" (baseline)" if r.get("baseline") else "") + (" (reference)" if r.get("reference") else "")
        if sum(x["artifact"] == r["artifact"] for x in rows) > 1:
            name += f" [{r['evaluated_by']}]"
        cells = [
            name, fmt(r.get("value"), ".4f"), _delta(r.get("value"), base and base.get("value"), metric),
            fmt(r.get("latency_ms_p50"), ".2f"), fmt(r.get("latency_ms_p95"), ".2f"),
            fmt(r.get("throughput_samples_per_s"), ".1f"),
            _ratio(r.get("throughput_samples_per_s"), base and base.get("throughput_samples_per_s")),
            fmt(r.get("size_mb"), ".1f"), _ratio(base and base.get("size_mb"), r.get("size_mb")),
            fmt(r.get("peak_memory_mb"), ".0f"), "yes" if r.get("pareto") else "",
        ]
        if ref:
            cells[3:3] = [_delta(r.get("value"), ref.get("value"), metric)]
            cells[8:8] = [_ratio(r.get("throughput_samples_per_s"), ref.get("throughput_samples_per_s"))]
        out.append(cells)
    header = ["artifact", metric, f"Δ {metric} vs baseline{unit}", "p50 ms (batch 1)", "p95 ms (batch 1)",
              f"samples/s (batch {throughput_batch(rows)})", "throughput vs baseline", "size MB", "smaller than baseline", "peak memory MB",
              "Pareto"]
    if ref:
        header[3:3] = [f"Δ {metric} vs reference{unit}"]
        header[8:8] = ["throughput vs reference"]
    return table(header, out)


def _generation_table(report: dict[str, Any]) -> list[str]:
    """Causal LMs: time to first token and decode tokens/s per measured batch size, vs the baseline."""
    rows = report["artifacts"]
    sizes = sorted({int(k.rsplit("_b", 1)[1]) for r in rows for k in r if k.startswith("decode_tokens_per_s_b")})
    if not sizes:
        return []
    base = next((r for r in rows if r.get("baseline")), None)
    header = ["artifact", rows[0]["metric"]]
    for b in sizes:
        header += [f"TTFT ms (batch {b})", f"decode tokens/s (batch {b})", "vs baseline"]
    out = []
    for r in rows:
        cells = [r["artifact"] + (" (baseline)" if r.get("baseline") else ""), fmt(r.get("value"), ".4f")]
        for b in sizes:
            tps = r.get(f"decode_tokens_per_s_b{b}")
            cells += [fmt(r.get(f"ttft_ms_b{b}"), ".1f"), fmt(tps, ".2f"),
                      _ratio(tps, base and base.get(f"decode_tokens_per_s_b{b}"))]
        out.append(cells)
    return table(header, out)


def _cost(report: dict[str, Any]) -> list[str]:
    c = report["cost"]
    cur = c["currency"]
    n = c["requests"]
    lines = [
        f"Price: **{c['price_per_hour']:g} {cur} per machine-hour** ({c['price_source']}). Serving cost assumes one "
        f"such machine kept busy at the measured batch-{throughput_batch(report['artifacts'])} throughput; the "
        "batch-1 column is a service that answers one request at a time at the measured p50 latency. Optimization cost is the wall time of every stage of "
        f"this run ({c['optimization_seconds']:,.0f} s = {c['optimization_seconds'] / 3600:.2f} h, evaluations and "
        f"the baseline's own training included) at the same price: **{money(c['optimization_cost'], cur)}**. "
        f"Benefit and ROI = (benefit − optimization cost) / optimization cost are stated for **{n:,} requests**; "
        "payback is the number of requests after which the saving has paid for the optimization.",
        "",
    ]
    rows = []
    for r in c["artifacts"]:
        payback = "—" if r["payback_requests"] is None else f"{r['payback_requests']:,}"
        if r["baseline"]:
            payback = "(baseline)"
        elif r["savings_per_million"] is not None and r["savings_per_million"] <= 0:
            payback = "never (costs more than the baseline)"
        rows.append([r["artifact"], money(r["cost_per_million"], cur), money(r["cost_per_million_batch1"], cur),
                     money(r["savings_per_million"], cur), fmt(r["savings_percent"], ".1f", " %"),
                     money(r["benefit"], cur), fmt(r["roi"], ".1f"), payback])
    lines += table(["artifact", f"cost / 1M requests (batch {throughput_batch(report['artifacts'])})", "cost / 1M requests (batch 1)",
                    "saving / 1M vs baseline", "saving", f"benefit at {n:,} requests", "ROI", "payback (requests)"],
                   rows)
    return lines


_CALIBRATION_PHASES = (("gptq_s", "GPTQ"), ("layer_tuning_s", "layer tuning"), ("e2e_tuning_s", "end-to-end tuning"))


def calibration_cost(c: dict[str, Any]) -> str:
    """``"812 s of calibration (GPTQ 120 s, layer tuning 300 s, end-to-end tuning 380 s; 2 threads)"``."""
    def secs(x: float) -> str:
        return f"{x:,.0f} s" if x >= 100 else f"{x:.1f} s"

    parts = [f"{label} {secs(c[k])}" for k, label in _CALIBRATION_PHASES if isinstance(c.get(k), (int, float))]
    threads = c.get("threads")
    detail = ", ".join(parts) + (f"; {threads} thread{'s' if threads != 1 else ''}" if threads else "")
    return f"{secs(c.get('seconds') or 0.0)} of calibration" + (f" ({detail})" if detail else "")


def _calibration(report: dict[str, Any]) -> list[str]:
    """Calibrated artifacts: the time their calibration took next to the quality it reached."""
    rows = report["artifacts"]
    base = next((r for r in rows if r.get("baseline")), None)
    metric = rows[0]["metric"]
    lines = [f"- **{r['artifact']}**: {metric} {fmt(r.get('value'), '.4f')} "
             f"({_delta(r.get('value'), base and base.get('value'), metric)} vs baseline) after "
             f"{calibration_cost(r['calibration'])}" for r in rows if r.get("calibration")]
    return ["Calibration cost next to the quality it bought:", "", *lines, ""] if lines else []


def _stages(report: dict[str, Any]) -> list[str]:
    rows = []
    for st in report.get("stages", []):
        m = st.get("metrics") or {}
        metric = m.get("metric")
        key = f"{metric} {m[metric]:.4f}" if metric and isinstance(m.get(metric), (int, float)) else ""
        if not key and m.get("calibration"):
            key = calibration_cost(m["calibration"])
        if st.get("error"):
            key = st["error"].replace("|", "\\|")
        rows.append([st["name"], st.get("kind", ""), st.get("status", ""), fmt(st.get("seconds"), ",.1f"), key])
    total = sum(float(s.get("seconds") or 0) for s in report.get("stages", []))
    return table(["stage", "kind", "status", "seconds", "result"], rows) + [
        "", f"Total stage time: {total:,.1f} s (skipped stages count the time of the run that made them)."]


def render_markdown(report: dict[str, Any], plots: dict[str, str] | None, plots_note: str | None) -> str:
    """The markdown text of a summarized report (see :func:`~hf_optim.report.summary.summarize`).

    ``plots`` maps ``tradeoff``/``size`` to image paths relative to the report; ``plots_note`` says why there
    are none.
    """
    lines = [f"# Run report: {report.get('recipe', '?')}", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    lines += [f"- status: **{report.get('status', '?')}**, started {report.get('started', '?')}, updated "
              f"{report.get('updated', '?')}",
              f"- recipe fingerprint `{report.get('fingerprint', '?')}`, hf_optim {report.get('hf_optim', '?')}"]
    machine = _machine(report)
    if machine:
        lines.append(f"- measured on: {machine}")
    lines.append("")
    rows = report.get("artifacts") or []
    if not rows:
        lines += ["No artifact was evaluated in this run (add `evaluate` stages to compare artifacts).", ""]
    else:
        metric = rows[0]["metric"]
        base = next((r["artifact"] for r in rows if r.get("baseline")), None)
        ref = next((r["artifact"] for r in rows if r.get("reference")), None)
        lines += ["## Artifacts", "",
                  f"Every evaluated artifact on the {rows[0].get('split') or ''} split of `{rows[0].get('task')}`; "
                  f"ratios are relative to the baseline `{base}`"
                  + (f" (and, where marked, to the reference `{ref}`)" if ref else "")
                  + f". Latency is per request at batch size 1, throughput at batch size {throughput_batch(rows)}. "
                  f"Pareto: no other artifact has both a better {metric} "
                  f"({'higher' if higher_is_better(metric) else 'lower'} is better) and a lower p50 latency.", ""]
        lines += _artifact_table(report) + [""] + _calibration(report)
        generation = _generation_table(report)
        if generation:
            lines += ["## Generation", "",
                      "Greedy decoding with the KV cache from prompts of the evaluation text: time to first token "
                      "and decode tokens/s (all sequences of the batch together), medians of the measured repeats.",
                      ""] + generation + [""]
        lines += ["## Plots", ""]
        if plots:
            lines += [f"![{metric} vs latency]({plots['tradeoff']})", "", f"![size]({plots['size']})", ""]
        else:
            lines += [f"Plots not drawn: {plots_note}.", ""]
        lines += ["## Cost and benefit", ""] + _cost(report) + ["", "## Lineage", ""]
        for r in rows:
            lines.append(f"- **{r['artifact']}**: {lineage_text(r.get('lineage') or [])}")
        lines.append("")
    lines += ["## Stages", ""] + _stages(report) + [""]
    return "\n".join(lines)

