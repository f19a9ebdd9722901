"""``hf-optim compare RUN --serving URL``: a served application's live per-variant numbers next to a run's offline
measurements.

The live numbers come from the router's ``GET /v1/stats`` (:class:`~hf_optim.serving.stats.LiveStats`): requests,
errors, latency percentiles and throughput per variant, and the fingerprint of the artifact each variant serves.
A variant is matched to the run's artifact whose directory has the same fingerprint
(:func:`~hf_optim.inference.dir_fingerprint`), so the table says which artifact is behind which arm of an A/B
test whatever paths or names it was served under.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import HfOptimError
from .config import ReportConfig
from .markdown import table
from .summary import load_report, summarize

__all__ = ["fetch_serving_stats", "run_fingerprints", "compare_live", "render_live"]

STATS_ROUTE = "/v1/stats"  # hf_optim.serving.stats.STATS_ROUTE (not imported: that module needs numpy)


def fetch_serving_stats(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The ``/v1/stats`` answer of the application at ``url`` (its base URL, route prefix included).

    Raises:
        `HfOptimError`: nothing answers at ``url``, or what answers is not an hf_optim application.
    """
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise HfOptimError(f"--serving {url!r}: expected an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
    target = base if base.endswith(STATS_ROUTE) else base + STATS_ROUTE
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise HfOptimError(f"{target} answered HTTP {e.code}: is {base} an hf-optim serve application (started "
                           "with `hf-optim serve`, a version with /v1/stats)?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HfOptimError(f"no serving application answers at {base} ({reason}); start one with "
                           "`hf-optim serve ARTIFACT ...` or pass its URL") from None
    try:
        stats = json.loads(body)
    except ValueError:
        stats = None
    if not isinstance(stats, dict) or not isinstance(stats.get("variants"), list):
        raise HfOptimError(f"{target} did not answer hf_optim serving statistics (a JSON object with `variants`)")
    return {**stats, "url": base}


def run_fingerprints(run, artifacts: list[str]) -> dict[str, str]:
    """``fingerprint -> artifact name`` of those of ``artifacts`` whose directory exists in the run directory."""
    from ..inference.cache import dir_fingerprint

    run = Path(run)
    root = run if run.is_dir() else run.parent
    out: dict[str, str] = {}
    for name in artifacts:
        if (root / name).exists():
            out.setdefault(dir_fingerprint(root / name), name)
    return out


def compare_live(run, stats: dict[str, Any], config: ReportConfig | None = None) -> dict[str, Any]:
    """One row per artifact of ``run`` (offline metric, latency, throughput) with the live numbers of the variant
    serving it, then one row per served variant no artifact of the run matches.

    Args:
        run (`str` or `Path`): a run directory (or its ``report.json``).
        stats (`dict`): a :func:`fetch_serving_stats` answer.
        config (`ReportConfig`, *optional*): the report settings (defaults to the run's stored ones).
    """
    report = load_report(run)
    if config is None:
        stored = (report.get("cost") or {}).get("settings")
        config = ReportConfig.from_dict(stored) if stored else ReportConfig()
    summary = summarize(report, config)
    by_fingerprint = run_fingerprints(run, [r["artifact"] for r in summary["artifacts"]])
    served: dict[str, list[dict]] = {}
    unmatched = []
    for v in stats["variants"]:
        name = by_fingerprint.get(v.get("fingerprint") or "")
        (served.setdefault(name, []) if name else unmatched).append(v)
    rows = []
    for r in summary["artifacts"]:
        offline = {k: r.get(k) for k in ("value", "latency_ms_p50", "latency_ms_p95", "throughput_samples_per_s")}
        for v in served.get(r["artifact"]) or [None]:
            rows.append({"artifact": r["artifact"], "variant": v, "offline": offline})
    rows += [{"artifact": None, "variant": v, "offline": None} for v in unmatched]
    return {"run": str(run), "recipe": summary.get("recipe"),
            "metric": summary["artifacts"][0]["metric"] if summary["artifacts"] else None,
            "serving": {k: stats.get(k) for k in ("url", "application", "task_type", "uptime_s", "window_s")},
            "rows": rows}


def _f(value, spec: str) -> str:
    return "—" if value is None else f"{value:{spec}}"


def render_live(cmp: dict[str, Any]) -> str:
    """A markdown table of :func:`compare_live`'s result: offline columns, then the live ones of the variant."""
    s = cmp["serving"]
    lines = [f"Run: {cmp['recipe']} ({cmp['run']})",
             f"Serving: {s.get('application')} at {s.get('url')}, up {_f(s.get('uptime_s'), ',.0f')} s; live "
             f"counts since the router started, latency over its recent requests (in the application), throughput "
             f"over the last {_f(s.get('window_s'), 'g')} s. Offline: the run's evaluation (batch-1 latency, "
             "batch-32 throughput).", ""]
    header = ["artifact", cmp["metric"] or "metric", "offline p50 ms", "offline p95 ms", "offline samples/s",
              "variant", "fingerprint", "requests", "errors", "live p50 ms", "live p95 ms", "live texts/s"]
    body = []
    for r in cmp["rows"]:
        off, v = r["offline"] or {}, r["variant"] or {}
        lat = v.get("latency_ms") or {}
        body.append([r["artifact"] or "(not in this run)", _f(off.get("value"), ".4f"),
                     _f(off.get("latency_ms_p50"), ".2f"), _f(off.get("latency_ms_p95"), ".2f"),
                     _f(off.get("throughput_samples_per_s"), ".1f"), v.get("name") or "not served",
                     (v.get("fingerprint") or "—")[:16], _f(v.get("requests"), ",d"),
                     "—" if not v else f"{v.get('errors', 0):,d} ({(v.get('error_rate') or 0) * 100:.1f} %)",
                     _f(lat.get("p50"), ".2f"), _f(lat.get("p95"), ".2f"), _f(v.get("texts_per_s"), ".1f")])
    return "\n".join(lines + table(header, body))
