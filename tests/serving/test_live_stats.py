"""``LiveStats``, the router's ``GET /v1/stats`` numbers (no Ray instance started)."""

from __future__ import annotations

import pytest

from hf_optim.serving import stats as stats_module
from hf_optim.serving.stats import LiveStats


class Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(stats_module.time, "time", c.time)
    return c


def test_counts_errors_latency_and_throughput_per_variant(clock):
    s = LiveStats([{"name": "a", "fingerprint": "dir:a", "artifact": "/m/a", "weight": 0.9},
                   {"name": "b", "fingerprint": "dir:b", "artifact": "/m/b", "weight": 0.1}], window_s=60)
    for i in range(100):  # 100 requests of 2 texts over 100 s, latencies 1..100 ms, every 10th refused
        clock.now += 1
        s.record("a", 503 if i % 10 == 0 else 200, float(i + 1), 2)
    snap = s.snapshot()
    a, b = snap["variants"]
    assert snap["uptime_s"] == 100 and snap["window_s"] == 60
    assert (a["name"], a["fingerprint"], a["artifact"], a["weight"]) == ("a", "dir:a", "/m/a", 0.9)
    assert (a["requests"], a["errors"], a["texts"], a["status"]) == (100, 10, 180, {"200": 90, "503": 10})
    assert a["error_rate"] == 0.1 and a["latency_ms"] == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert a["requests_per_s"] == 1.0 and a["texts_per_s"] == pytest.approx(2 * 54 / 60, abs=1e-3)  # last 60 s
    assert (b["requests"], b["error_rate"], b["latency_ms"], b["requests_per_s"]) == (0, None, None, 0.0)


def test_a_full_buffer_measures_throughput_over_what_it_kept(clock):
    s = LiveStats([{"name": "a"}], window_s=60, keep=10)
    for _ in range(40):  # 4 requests a second, more than the buffer holds for 60 s
        clock.now += 0.25
        s.record("a", 200, 5.0, 1)
    (a,) = s.snapshot()["variants"]
    assert a["requests"] == 40 and a["latency_requests"] == 10
    assert a["requests_per_s"] == pytest.approx(10 / 2.25, abs=1e-3)  # 10 kept requests, the oldest 2.25 s ago
