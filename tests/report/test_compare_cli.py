"""`hf-optim compare` (A/B deltas) and the report/card/push commands' exit codes and messages."""

from __future__ import annotations

import json

import pytest

from hf_optim.cli import main
from hf_optim.report.compare import compare_runs, render_comparison
from hf_optim.report.config import ReportConfig

from .helpers import pipeline_report, write_run


def _runs(tmp_path):
    a = write_run(tmp_path / "a", pipeline_report(teacher_tp=100.0, student_tp=400.0))
    report_b = pipeline_report(teacher_tp=100.0, student_tp=500.0)
    report_b["recipe"] = "pipe-b"
    report_b["stages"] = report_b["stages"][:5]           # B has no export: its final artifact is `distill`
    report_b["artifacts"] = report_b["artifacts"][:2]
    b = write_run(tmp_path / "b", report_b)
    return a, b


def test_compare_matches_artifacts_and_computes_deltas(tmp_path):
    a, b = _runs(tmp_path)
    cmp = compare_runs(a, b, ReportConfig(price_per_hour=0.36))
    rows = {r["artifact"]: r for r in cmp["rows"]}
    assert [r["artifact"] for r in cmp["rows"]] == ["teacher", "distill", "export"]
    assert rows["export"]["in"] == "A" and rows["export"]["value"] == {"a": 0.845, "b": None, "delta": None}
    d = rows["distill"]
    assert d["throughput_samples_per_s"] == {"a": 200.0, "b": 250.0, "delta": 25.0}      # percent of A
    assert d["cost_per_million"]["a"] == pytest.approx(0.5) and d["cost_per_million"]["delta"] == pytest.approx(-20.0)
    assert rows["teacher"]["value"]["delta"] == 0.0
    f = cmp["final"]
    assert (f["a"], f["b"]) == ("export", "distill")
    assert f["value"]["delta"] == pytest.approx(-0.005)                                 # metric: absolute units
    assert f["latency_ms_p50"]["delta"] == pytest.approx(150.0)                         # 2 ms -> 5 ms
    assert [r["optimization_seconds"] for r in cmp["runs"]] == [3600.0, 3400.0]  # B: no export, no eval-export
    text = render_comparison(cmp)
    assert "| distill | AB | 0.8400 → 0.8400 (+0.0000) | 5.00 → 5.00 (+0.0 %) |" in text
    assert "| final: export vs distill | AB |" in text


def test_cli_compare_json_and_report(tmp_path, capsys):
    a, b = _runs(tmp_path)
    assert main(["compare", str(a), str(b), "--json", "--price-per-hour", "0.36"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["price_per_hour"] == 0.36 and out["final"]["b"] == "distill"
    assert main(["report", str(a), "--price-per-hour", "0.72", "--requests", "1000000", "--no-plots"]) == 0
    assert "teacher" in capsys.readouterr().out
    saved = json.loads((a / "report.json").read_text())["cost"]
    assert saved["price_per_hour"] == 0.72 and saved["price_source"] == "set on the command line"
    assert saved["artifacts"][0]["cost_per_million"] == pytest.approx(2.0)
    assert "Plots not drawn: disabled" in (a / "report.md").read_text()
    # a later `report` without options keeps the stored price
    assert main(["report", str(a), "--no-plots"]) == 0
    assert json.loads((a / "report.json").read_text())["cost"]["price_per_hour"] == 0.72


@pytest.mark.parametrize("argv,match", [
    (["report", "{tmp}/nowhere"], "is not a run directory: it has no report.json"),
    (["compare", "{tmp}/a", "{tmp}/nowhere"], "is not a run directory"),
    (["report", "{tmp}/a", "--baseline", "nope"], "not an evaluated artifact"),
    (["report", "{tmp}/a", "--price-per-hour", "0"], "price_per_hour.*must be > 0"),
    (["card", "{tmp}/a"], "no readable hf_optim_stage.json"),
    (["push", "{tmp}/a", "--repo-id", "me/x", "--dry-run"], "no readable hf_optim_stage.json"),
])
def test_cli_bad_input_is_one_error_line_exit_2(tmp_path, capsys, argv, match):
    _runs(tmp_path)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    import re
    assert re.search(match, err), err


@pytest.mark.parametrize("cmd", ["report", "card", "push", "compare"])
def test_new_commands_have_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: hf-optim {cmd}")


def test_report_refuses_a_run_in_progress(tmp_path, capsys):
    import fcntl

    a, _ = _runs(tmp_path)
    before = (a / "report.json").read_text()
    with open(a / ".lock", "w") as lock:  # what the runner holds while it runs
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["report", str(a)]) == 2
    assert "a run is using" in capsys.readouterr().err
    assert (a / "report.json").read_text() == before and not (a / "report.md").exists()
