"""The Prometheus series a served application exports, through Ray's metrics API (``ray.serve.metrics``).

Ray prefixes every name with ``ray_`` and adds ``_total`` to counters; Ray Serve adds the ``application``,
``deployment`` and ``replica`` tags. Scrape each Ray node's metrics port (``ray start --metrics-export-port``;
``hf-optim serve`` prints it). The table below is what docs/serving.md lists.
"""

from __future__ import annotations

from typing import Any

__all__ = ["METRICS", "LATENCY_BOUNDARIES_MS", "BATCH_SIZE_BOUNDARIES", "make_metrics", "exported_name"]

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]

# name: (type, tags, where it is recorded, description)
METRICS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "hf_optim_serve_requests": ("counter", ("variant", "route", "status"), "router",
                                "HTTP requests answered, by variant, route and status code"),
    "hf_optim_serve_errors": ("counter", ("variant", "route", "reason"), "router",
                              "requests answered with an error (reason: invalid, too_long, overloaded, "
                              "replica_lost, timeout, internal)"),
    "hf_optim_serve_texts": ("counter", ("variant", "route"), "router", "texts classified or prompts generated"),
    "hf_optim_serve_retries": ("counter", ("variant",), "router", "requests sent again because their replica died"),
    "hf_optim_serve_latency_ms": ("histogram", ("variant", "route"), "router",
                                  "request latency in the application (router to answer), milliseconds"),
    "hf_optim_serve_batch_size": ("histogram", ("variant",), "replica", "rows per model call of the engine"),
    "hf_optim_serve_padding_ratio": ("gauge", ("variant",), "replica",
                                     "padded share of the positions the model ran (since the replica started)"),
    "hf_optim_serve_queue_depth": ("gauge", ("variant",), "replica", "requests waiting in the replica's engine"),
    "hf_optim_serve_cache_hit_rate": ("gauge", ("variant",), "replica",
                                      "result-cache hit rate of the replica's engine (0 without a cache)"),
}


def exported_name(name: str) -> str:
    """The series name Prometheus sees (``ray_`` prefix; counters end in ``_total``, histograms in ``_bucket``)."""
    kind = METRICS[name][0]
    return f"ray_{name}" + {"counter": "_total", "histogram": "_bucket", "gauge": ""}[kind]


def make_metrics(where: str) -> dict[str, Any]:
    """The ``ray.serve.metrics`` objects recorded in ``where`` (``"router"`` or ``"replica"``)."""
    from ray.serve import metrics

    out: dict[str, Any] = {}
    for name, (kind, tags, place, description) in METRICS.items():
        if place != where:
            continue
        if kind == "counter":
            out[name] = metrics.Counter(name, description=description, tag_keys=tags)
        elif kind == "gauge":
            out[name] = metrics.Gauge(name, description=description, tag_keys=tags)
        else:
            bounds = LATENCY_BOUNDARIES_MS if name.endswith("_ms") else BATCH_SIZE_BOUNDARIES
            out[name] = metrics.Histogram(name, description=description, boundaries=bounds, tag_keys=tags)
    return out
