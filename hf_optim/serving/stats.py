"""``LiveStats``: the per-variant numbers the router answers on ``GET /v1/stats`` (no Ray needed).

The Prometheus series (:mod:`hf_optim.serving.metrics`) are what a monitoring system scrapes; this is the same
traffic summed up in the router for a quick look without one: ``hf-optim compare RUN --serving URL`` reads it
next to a run's offline measurements. Counts are since the router started; latency percentiles are over the most
recent requests, throughput over the last ``window_s`` seconds.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

__all__ = ["LiveStats", "STATS_ROUTE"]

STATS_ROUTE = "/v1/stats"


class LiveStats:
    """Per-variant request counts, recent latencies and throughput of one router.

    Args:
        variants (`list[dict]`): each variant's ``name``, ``fingerprint``, ``artifact`` and ``weight``.
        window_s (`float`, *optional*, defaults to 60): the span throughput is measured over.
        keep (`int`, *optional*, defaults to 10000): recent requests kept per variant for latency percentiles.
    """

    def __init__(self, variants: list[dict[str, Any]], window_s: float = 60.0, keep: int = 10_000):
        self.window_s = window_s
        self.started = time.time()
        self.variants = {v["name"]: {k: v.get(k) for k in ("fingerprint", "artifact", "weight")} for v in variants}
        self._totals = {name: {"requests": 0, "errors": 0, "texts": 0, "status": collections.Counter()}
                        for name in self.variants}
        # (finished at, latency ms, texts answered) of the latest requests
        self._recent = {name: collections.deque(maxlen=keep) for name in self.variants}
        self._lock = threading.Lock()

    def record(self, variant: str, status: int, latency_ms: float, texts: int) -> None:
        """One answered request (``texts`` counts only when it succeeded)."""
        now = time.time()
        with self._lock:
            t = self._totals[variant]
            t["requests"] += 1
            t["status"][str(status)] += 1
            if status >= 400:
                t["errors"] += 1
            else:
                t["texts"] += texts
            self._recent[variant].append((now, latency_ms, texts if status < 400 else 0))

    def snapshot(self) -> dict[str, Any]:
        """The ``GET /v1/stats`` answer: per variant, totals, error rate, latency p50/p95/p99 and throughput."""
        now = time.time()
        out = []
        with self._lock:
            for name, info in self.variants.items():
                t, recent = self._totals[name], list(self._recent[name])
                lat = np.asarray([r[1] for r in recent]) if recent else None
                since = max(now - self.window_s, self.started)
                window = [r for r in recent if r[0] > since]
                if window and len(recent) == self._recent[name].maxlen and recent[0][0] > since:
                    since = recent[0][0]  # the kept requests cover less than the window
                span = max(now - since, 1e-9)
                out.append({"name": name, **info, "requests": t["requests"], "errors": t["errors"],
                            "texts": t["texts"], "status": dict(t["status"]),
                            "error_rate": round(t["errors"] / t["requests"], 6) if t["requests"] else None,
                            "latency_ms": None if lat is None else
                            {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 95, 99)},
                            "latency_requests": len(recent),
                            "requests_per_s": round(len(window) / span, 3),
                            "texts_per_s": round(sum(r[2] for r in window) / span, 3)})
        return {"uptime_s": round(now - self.started, 3), "window_s": self.window_s, "variants": out}
