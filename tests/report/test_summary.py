"""Report derivations: Pareto front, lineage, cost per million requests, savings, ROI and payback."""

from __future__ import annotations

import json

import pytest

from hf_optim.errors import HfOptimError
from hf_optim.report.config import DEFAULT_PRICE_PER_HOUR, ReportConfig
from hf_optim.report.summary import lineage, lineage_text, pareto_front, summarize

from .helpers import pipeline_report


def test_pareto_front_higher_and_lower_is_better():
    pts = [(0.85, 10.0), (0.86, 3.0), (0.84, 2.0), (0.86, 3.0), (0.80, 5.0), (None, 1.0)]
    assert pareto_front(pts) == [False, True, True, True, False, False]
    # perplexity: lower is better -> (0.80, 5.0) now beats (0.85, 10.0) and (0.86, 3.0) does not dominate it
    assert pareto_front(pts, higher_better=False) == [False, False, True, False, True, False]


def test_cost_roi_and_payback_are_computed_from_measured_numbers():
    config = ReportConfig(price_per_hour=0.36, requests=1_000_000)
    s = summarize(pipeline_report(teacher_tp=100.0, student_tp=400.0, seconds=3000.0), config)
    cost = s["cost"]
    assert cost["baseline"] == "teacher"
    assert cost["optimization_seconds"] == 3600.0           # 3000 s of training + three 200 s evaluations
    assert cost["optimization_cost"] == pytest.approx(0.36)
    teacher, distill, export = cost["artifacts"]
    assert teacher["cost_per_million"] == pytest.approx(1.0)        # 0.36 / (100/s * 3600 s) * 1e6
    assert teacher["cost_per_million_batch1"] == pytest.approx(1.0)  # 0.36 * 10 ms / 3600 s * 1e6
    assert teacher["roi"] is None and teacher["savings_per_million"] is None
    assert distill["cost_per_million"] == pytest.approx(0.5)
    assert export["cost_per_million"] == pytest.approx(0.25)
    assert export["savings_per_million"] == pytest.approx(0.75)
    assert export["savings_percent"] == pytest.approx(75.0)
    assert export["benefit"] == pytest.approx(0.75)                  # 0.75 per million x 1 million requests
    assert export["roi"] == pytest.approx((0.75 - 0.36) / 0.36, abs=1e-3)
    assert export["payback_requests"] == 480_000                     # 0.36 / 0.75e-6
    assert distill["payback_requests"] == 720_000


def test_an_artifact_slower_than_the_baseline_never_pays_back():
    s = summarize(pipeline_report(teacher_tp=500.0, student_tp=400.0), ReportConfig(price_per_hour=1.0))
    export = s["cost"]["artifacts"][2]
    assert export["savings_per_million"] < 0 and export["payback_requests"] is None and export["roi"] < -1


def test_baseline_by_name_and_unknown_baseline():
    s = summarize(pipeline_report(), ReportConfig(baseline="distill"))
    assert [r["baseline"] for r in s["artifacts"]] == [False, True, False]
    assert s["cost"]["artifacts"][0]["savings_per_million"] < 0  # the teacher costs more than the distilled one
    with pytest.raises(HfOptimError, match="not an evaluated artifact.*teacher, distill, export"):
        summarize(pipeline_report(), ReportConfig(baseline="nope"))


def test_lineage_follows_inputs_upstream_first():
    report = pipeline_report()
    steps = lineage(report["stages"], "export")
    assert [s["stage"] for s in steps] == ["teacher", "student", "distill", "export"]
    assert steps[2]["inputs"] == {"model": "student", "teacher": "teacher"}
    assert steps[0]["inputs"] == {"model": "builtin:minilm-l6"}
    assert steps[3]["settings"]["backend"] == "optimum"  # `auto` shows what the stage resolved it to
    assert steps[3]["settings"]["optimization"] == "O2"
    text = lineage_text(steps, markdown=False)
    assert text.startswith("builtin:minilm-l6 → teacher (finetune: epochs=2.0) → student (student: num_layers=3)")
    assert "distill (distill: teacher=teacher, temperature=2.0, alpha=0.5)" in text
    assert lineage(report["stages"], "not-a-stage") == []


def test_summary_rows_and_stored_settings_round_trip():
    s = summarize(pipeline_report(), ReportConfig(price_per_hour=0.5, requests=7))
    assert [r["pareto"] for r in s["artifacts"]] == [True, False, True]  # distill: worse and slower than export
    again = summarize(json.loads(json.dumps(s)))  # no config: the stored settings are used
    assert again["cost"] == s["cost"] and again["artifacts"] == s["artifacts"]
    assert summarize(pipeline_report())["cost"]["price_per_hour"] == DEFAULT_PRICE_PER_HOUR


@pytest.mark.parametrize("changes,field", [({"price_per_hour": 0}, "price_per_hour"), ({"requests": 0}, "requests"),
                                           ({"currency": " "}, "currency")])
def test_report_config_rejects_bad_values(changes, field):
    with pytest.raises(ValueError) as e:
        ReportConfig(**changes)
    assert e.value.field == field


def test_price_source_defaults_and_overrides():
    assert "c7i.large" in ReportConfig().source()
    assert ReportConfig(price_per_hour=1.0).source() == "user-supplied"
    assert ReportConfig(price_per_hour=1.0, price_source="my bill").source() == "my bill"
