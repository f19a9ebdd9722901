"""What a run report derives from its stages: each artifact's lineage, the Pareto front, cost and ROI.

Everything here is a pure function of the ``report.json`` dict the runner writes, so a report can be
re-derived (``hf-optim report RUN_DIR``) with another price without re-running anything.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..errors import HfOptimError
from .config import ReportConfig

__all__ = ["summarize", "artifact_table", "lineage", "lineage_text", "pareto_front", "cost_section",
           "higher_is_better", "load_report"]

# Task metrics where smaller is better; every other metric (accuracy, f1, ...) is higher-is-better.
_LOWER_IS_BETTER = {"perplexity", "loss", "eval_loss"}
_NOT_SETTINGS = {"kind", "version", "task"}


def higher_is_better(metric: str | None) -> bool:
    return metric not in _LOWER_IS_BETTER


def load_report(path) -> dict[str, Any]:
    """Read ``report.json`` from a run directory (or the file itself), with a clear error when it is not one."""
    import json
    from pathlib import Path

    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise HfOptimError(f"{path} is not a run directory: it has no report.json (run a recipe with "
                           "`hf-optim run RECIPE -o DIR` first)")
    try:
        report = json.loads(file.read_text())
    except ValueError as e:
        raise HfOptimError(f"{file} is not valid JSON ({e}); re-run the recipe to rewrite it") from None
    if not isinstance(report, dict) or not isinstance(report.get("stages"), list):
        raise HfOptimError(f"{file} is not an hf-optim run report (no `stages` list)")
    return report


def artifact_table(stages: list[dict]) -> list[dict]:
    """One row per evaluated artifact: which stage produced it and its measured metric, speed and size.

    Args:
        stages (`list[dict]`): the ``stages`` of a run's ``report.json`` (each with ``name`` and ``metrics``).
    """
    rows = []
    by_name = {st.get("name"): st for st in stages}
    for st in stages:
        m = st.get("metrics") or {}
        if "model_stage" not in m or "metric" not in m:
            continue
        rows.append({
            "artifact": m["model_stage"], "evaluated_by": st["name"], "task": m.get("task"), "split": m.get("split"),
            "metric": m["metric"], "value": m.get(m["metric"]),
            "latency_ms_p50": (m.get("latency_ms") or {}).get("p50"),
            "latency_ms_p95": (m.get("latency_ms") or {}).get("p95"),
            "throughput_samples_per_s": (m.get("throughput") or {}).get("samples_per_s"),
            "size_mb": (m.get("size") or {}).get("weights_mb"),
            "peak_memory_mb": (m.get("memory") or {}).get("model_peak_mb"),
        })
        gen = m.get("generation") or {}
        for key, g in gen.items():  # causal LMs: time to first token and decode speed per batch size
            if key.startswith("batch_") and isinstance(g, dict):
                b = key.split("_", 1)[1]
                rows[-1][f"ttft_ms_b{b}"] = g.get("ttft_ms")
                rows[-1][f"decode_tokens_per_s_b{b}"] = g.get("decode_tokens_per_s")
        # what the artifact's own calibration (GPTQ and its tuning) cost, to show next to what it bought
        calibration = ((by_name.get(m["model_stage"]) or {}).get("metrics") or {}).get("calibration")
        if calibration:
            rows[-1]["calibration"] = calibration
    return rows


def _input_fields(kind: str, config: dict[str, Any]) -> tuple[str, ...]:
    from ..recipe import stage_kinds

    cls = stage_kinds().get(kind)
    fields = cls.inputs if cls is not None else ("model", "teacher")
    return tuple(f for f in fields if isinstance(config.get(f), str))


def _settings(kind: str, config: dict[str, Any], inputs: tuple[str, ...], metrics: dict[str, Any]) -> dict[str, Any]:
    """A stage's key fields and those that differ from its kind's defaults (what the recipe author chose);
    a field the stage resolved at run time (``backend: auto`` -> ``optimum``) shows the resolved value."""
    from ..recipe import stage_kinds
    from ..registry import stage_kind

    cls = stage_kinds().get(kind)
    row = stage_kind(kind)
    key_fields = row.key_fields if row is not None else ()  # shown even at their defaults: what the step did
    defaults = {}
    if cls is not None:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    out = {}
    for k, v in config.items():
        if k in _NOT_SETTINGS or k in inputs:
            continue
        d = defaults.get(k, dataclasses.MISSING)
        if isinstance(d, tuple):
            d = list(d)
        if d is dataclasses.MISSING or d != v or k in key_fields:
            resolved = metrics.get(k)
            out[k] = resolved if isinstance(resolved, (str, int, float)) and v == "auto" else v
    return out


def lineage(stages: list[dict[str, Any]], artifact: str) -> list[dict[str, Any]]:
    """The stages that produced ``artifact``, upstream first.

    Each step is ``{"stage", "kind", "inputs": {field: reference}, "settings": {non-default fields}}``; a
    reference that is not a stage (``builtin:...`` or a path) is where the lineage starts.
    """
    by_name = {s["name"]: s for s in stages if s.get("config")}
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        seen.add(name)
        st = by_name[name]
        config = st["config"]
        fields = _input_fields(st["kind"], config)
        for f in fields:
            visit(config[f])
        steps.append({"stage": name, "kind": st["kind"], "inputs": {f: config[f] for f in fields},
                      "settings": _settings(st["kind"], config, fields, st.get("metrics") or {})})

    visit(artifact)
    return steps


def lineage_text(steps: list[dict[str, Any]], markdown: bool = True) -> str:
    """``builtin:minilm-l6 → teacher (finetune: epochs=2.0) → ...`` for a lineage from :func:`lineage`."""
    if not steps:
        return "(not produced by a stage of this run)"
    names = {s["stage"] for s in steps}
    code = (lambda s: f"`{s}`") if markdown else (lambda s: s)
    bold = (lambda s: f"**{s}**") if markdown else (lambda s: s)
    root = steps[0]["inputs"].get("model")
    parts = [code(root)] if root and root not in names else []
    for s in steps:
        extra = [f"{f}={v}" for f, v in s["inputs"].items() if f != "model"]
        extra += [f"{k}={v}" for k, v in s["settings"].items() if k not in s["inputs"]]
        detail = s["kind"] + (": " + ", ".join(extra) if extra else "")
        parts.append(f"{bold(s['stage'])} ({detail})")
    return " → ".join(parts)


def pareto_front(points: list[tuple[float | None, float | None]], higher_better: bool = True) -> list[bool]:
    """For ``(metric, latency)`` points: `True` where no other point is as good on both and better on one."""
    sign = 1.0 if higher_better else -1.0
    out = []
    for i, (m, lat) in enumerate(points):
        if m is None or lat is None:
            out.append(False)
            continue
        dominated = any(
            j != i and m2 is not None and l2 is not None and sign * m2 >= sign * m and l2 <= lat
            and (sign * m2 > sign * m or l2 < lat)
            for j, (m2, l2) in enumerate(points))
        out.append(not dominated)
    return out


def _artifact_index(rows: list[dict[str, Any]], name: str | None, field: str) -> int | None:
    """Index of the row whose artifact (or evaluate stage) is ``name``; ``None`` for no name."""
    if name is None:
        return None
    for i, r in enumerate(rows):
        if name in (r["artifact"], r.get("evaluated_by")):
            return i
    raise HfOptimError(f"report.{field} = {name!r} is not an evaluated artifact of this run; "
                       f"evaluated: {', '.join(r['artifact'] for r in rows) or 'none'}")


def _baseline_index(rows: list[dict[str, Any]], config: ReportConfig) -> int | None:
    if not rows:
        return None
    return 0 if config.baseline is None else _artifact_index(rows, config.baseline, "baseline")


def _per_million(price: float, seconds_per_request: float | None) -> float | None:
    if not seconds_per_request:
        return None
    return price * seconds_per_request / 3600.0 * 1e6


def cost_section(rows: list[dict[str, Any]], stages: list[dict[str, Any]], config: ReportConfig,
                 baseline: int | None) -> dict[str, Any]:
    """Cost per million requests, savings vs the baseline and ROI of the run's own compute.

    * serving cost: one machine saturated at the measured batch-32 throughput,
      ``price_per_hour / (throughput * 3600) * 1e6`` per million requests (and, for a one-request-at-a-time
      service, ``price_per_hour * p50 latency / 3600 * 1e6``);
    * optimization cost: the wall time of every stage of the run (evaluations and the baseline's own
      fine-tuning included) at the same price;
    * benefit at ``requests``: (baseline cost - artifact cost) per request x ``requests``;
      ROI = (benefit - optimization cost) / optimization cost; payback = optimization cost / saving per request.
    """
    price = config.price_per_hour
    seconds = sum(float(s.get("seconds") or 0.0) for s in stages)
    compute_cost = price * seconds / 3600.0
    base_cpm = None
    if baseline is not None:
        tp = rows[baseline].get("throughput_samples_per_s")
        base_cpm = _per_million(price, 1.0 / tp if tp else None)
    out_rows = []
    for i, r in enumerate(rows):
        tp = r.get("throughput_samples_per_s")
        p50 = r.get("latency_ms_p50")
        cpm = _per_million(price, 1.0 / tp if tp else None)
        row: dict[str, Any] = {
            "artifact": r["artifact"], "evaluated_by": r.get("evaluated_by"), "baseline": i == baseline,
            "cost_per_million": _round(cpm, 6),
            "cost_per_million_batch1": _round(_per_million(price, p50 / 1000.0 if p50 else None), 6),
            "savings_per_million": None, "savings_percent": None, "benefit": None, "roi": None,
            "payback_requests": None,
        }
        if cpm is not None and base_cpm is not None and i != baseline:
            saving = base_cpm - cpm
            benefit = saving * config.requests / 1e6
            row.update(savings_per_million=_round(saving, 6), savings_percent=_round(100.0 * saving / base_cpm, 2),
                       benefit=_round(benefit, 4),
                       roi=_round((benefit - compute_cost) / compute_cost, 3) if compute_cost > 0 else None,
                       payback_requests=int(round(compute_cost / saving * 1e6)) if saving > 0 else None)
        out_rows.append(row)
    return {
        "price_per_hour": price, "currency": config.currency, "price_source": config.source(),
        "requests": config.requests, "baseline": rows[baseline]["artifact"] if baseline is not None else None,
        "optimization_seconds": round(seconds, 2), "optimization_cost": _round(compute_cost, 6),
        "artifacts": out_rows, "settings": _settings_dict(config),
    }


def _settings_dict(config: ReportConfig) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("kind"), d.pop("version")
    return d


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def summarize(report: dict[str, Any], config: ReportConfig | None = None) -> dict[str, Any]:
    """A copy of ``report`` whose ``artifacts`` rows carry ``lineage``, ``pareto``, ``baseline`` and ``reference``, plus a
    ``cost`` section (see :func:`cost_section`).

    Args:
        report (`dict`): a run's ``report.json``.
        config (`ReportConfig`, *optional*): prices and volumes; defaults to the settings stored in the
            report's ``cost`` section, else :class:`ReportConfig`'s defaults.
    """
    report = copy.deepcopy(report)
    if config is None:
        stored = (report.get("cost") or {}).get("settings")
        config = ReportConfig.from_dict(stored) if stored else ReportConfig()
    stages = report.get("stages") or []
    # rebuilt from the stages' metrics, so a report regenerated by a newer hf_optim shows what it now reads
    rows = artifact_table(stages) if stages else (report.get("artifacts") or [])
    report["artifacts"] = rows
    metric = rows[0]["metric"] if rows else None
    front = pareto_front([(r.get("value"), r.get("latency_ms_p50")) for r in rows], higher_is_better(metric))
    baseline = _baseline_index(rows, config)
    reference = _artifact_index(rows, config.reference, "reference")
    measured = {s["name"]: (s.get("metrics") or {}).get("throughput") or {} for s in stages}
    for i, r in enumerate(rows):
        r["throughput_batch_size"] = measured.get(r.get("evaluated_by"), {}).get("batch_size")
        r["lineage"] = lineage(stages, r["artifact"])
        r["pareto"] = front[i]
        r["baseline"] = i == baseline
        r["reference"] = i == reference
    report["cost"] = cost_section(rows, stages, config, baseline)
    return report
