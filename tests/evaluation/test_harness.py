"""The benchmark harness: one result schema, an atomic writer, interleaved rounds; and the files it wrote."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import hf_optim
from hf_optim.evaluation import harness
from hf_optim.evaluation.harness import (REQUIRED_FIELDS, BenchRun, check_result, command_line, interleaved,
                                         summarize, timed, write_result)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = sorted((ROOT / "scripts" / "results").glob("*.json"))
PACKAGE_ROOT = Path(hf_optim.__file__).resolve().parents[1]

SCRIPT = """
import argparse, sys
from hf_optim.evaluation.harness import BenchRun
ap = argparse.ArgumentParser()
ap.add_argument("--name")
ap.add_argument("--rounds", type=int)
ap.add_argument("-o", "--output")
args = ap.parse_args()
BenchRun(args, threads=1).write(args.output, {"only": {"rounds": args.rounds}})
"""


def _in_git() -> bool:
    return harness._repo_root() is not None


def test_record_has_every_field_with_sane_values():
    import torch  # the thread counts are read from torch once a script has imported it

    run = BenchRun(argparse.Namespace(threads=1, output=Path("/tmp/x.json")), argv=["--threads", "1"],
                   script="scripts/bench_x.py", threads=1)
    rec = run.record({"fp32": {"median_ms": 1.0}}, ratios={"x": 1.0})
    assert set(REQUIRED_FIELDS) <= set(rec) and rec["ratios"] == {"x": 1.0}
    assert rec["schema"] == harness.SCHEMA_VERSION and rec["created"].endswith("+00:00")
    assert rec["command"] == "python scripts/bench_x.py --threads 1"
    assert rec["args"] == {"threads": 1, "output": "/tmp/x.json"}       # JSON-safe (the Path became a string)
    assert rec["versions"]["python"].count(".") == 2 and rec["versions"]["hf_optim"] == hf_optim.__version__
    assert rec["versions"]["torch"] == torch.__version__ and "transformers" in rec["versions"]
    cpu = rec["cpu"]
    assert cpu["model"] and cpu["logical_cores"] >= 1 and 1 <= cpu["available_cores"] <= cpu["logical_cores"]
    assert {"avx2", "avx512f", "avx512_vnni", "amx_tile"} <= set(cpu["flags"])
    assert all(isinstance(v, bool) for v in cpu["flags"].values())
    assert rec["threads"]["requested"] == 1 and rec["threads"]["torch"] == torch.get_num_threads() >= 1
    assert "OMP_NUM_THREADS" in rec["threads"]["env"]
    assert rec["elapsed_s"] >= 0 and len(rec["load_average"]["start"]) == 3
    if _in_git():
        assert len(rec["git_commit"]) == 40 and int(rec["git_commit"], 16) >= 0
        assert isinstance(rec["dirty"], bool) and isinstance(rec["dirty_files"], list)
        assert not any(f.startswith("scripts/results/") for f in rec["dirty_files"])
    assert check_result(json.loads(json.dumps(rec))) == ([] if _in_git() else ["git_commit None is not a commit hash",
                                                                               "dirty None is not a bool"])
    with pytest.raises(ValueError, match="would replace fields of the result schema"):
        run.record({"a": {}}, command="something else")


def test_git_state_reads_the_package_repository_not_the_cwd(tmp_path, monkeypatch):
    if not _in_git():
        pytest.skip("hf_optim is not in a git work tree here")
    monkeypatch.chdir(tmp_path)  # not a repository
    state = harness.git_state()
    assert len(state["git_commit"]) == 40
    assert harness.git_state(tmp_path) == {"git_commit": None, "dirty": None, "dirty_files": None}


def test_a_copy_installed_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git")
    repo = tmp_path / "project"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for where, expected in ((repo / ".venv" / "lib" / "hf_optim", None), (repo / "hf_optim", repo.resolve())):
        (where / "evaluation").mkdir(parents=True)
        monkeypatch.setattr(harness, "__file__", str(where / "evaluation" / "harness.py"))
        assert harness._repo_root() == expected


@pytest.mark.parametrize("args", [[], ["--name", "it's a \"test\"; rm -rf /", "--rounds", "3"], ["-o", "a b/c.json"]])
def test_command_line_round_trips_through_the_shell(args):
    line = command_line(args, script="scripts/bench x.py")
    assert shlex.split(line) == ["python", "scripts/bench x.py", *args]
    assert command_line(None, None) == shlex.join(["python", sys.argv[0], *sys.argv[1:]])


@pytest.mark.multiprocess
def test_recorded_command_runs_again_and_records_the_same(tmp_path):
    (tmp_path / "bench_tiny.py").write_text(SCRIPT)
    out = tmp_path / "results" / "tiny result.json"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    argv = [sys.executable, "bench_tiny.py", "--name", "a 'quoted' name", "--rounds", "2", "-o", str(out)]
    subprocess.run(argv, cwd=tmp_path, env=env, check=True, timeout=120)
    first = json.loads(out.read_text())
    again = shlex.split(first["command"])
    assert again[0] == "python" and again[1:] == argv[1:]
    out.unlink()
    subprocess.run([sys.executable, *again[1:]], cwd=tmp_path, env=env, check=True, timeout=120)
    second = json.loads(out.read_text())
    assert second["command"] == first["command"] and second["args"] == first["args"]
    assert second["rows"] == {"only": {"rounds": 2}} and second["git_commit"] == first["git_commit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_tiny.py", "results"]


def test_writer_is_atomic_and_never_writes_to_the_cwd(tmp_path, monkeypatch):
    cwd, out_dir = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = BenchRun({"n": 1}, argv=[])
    target = out_dir / "deep" / "r.json"
    assert write_result(target, run.record({"a": {"x": 1}})) == target
    assert json.loads(target.read_text())["rows"] == {"a": {"x": 1}}
    assert list(cwd.iterdir()) == [] and [p.name for p in target.parent.iterdir()] == ["r.json"]

    def crash(src, dst):  # the rename never happens: the old file must stay whole, no temp file may stay behind
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        run.write(target, {"b": {"x": 2}})
    monkeypatch.undo()
    assert json.loads(target.read_text())["rows"] == {"a": {"x": 1}}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"] and list(cwd.iterdir()) == []

    with pytest.raises(ValueError, match="missing 'git_commit'"):
        write_result(out_dir / "bad.json", {"rows": {"a": 1}})
    assert not (out_dir / "bad.json").exists()
    assert run.write(None, {"a": {}})["rows"] == {"a": {}}  # no path: nothing written anywhere
    assert list(cwd.iterdir()) == []


def test_tiny_interleaved_run_gives_medians_for_each_variant():
    calls = []

    def variant(name, seconds):
        def fn():
            calls.append(name)
            return seconds
        return fn

    res = interleaved({"a": variant("a", 1.0), "b": variant("b", 2.0), "c": variant("c", 3.0)}, rounds=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]  # warm-up, then rotated
    assert res == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}
    times = interleaved({"fast": timed(lambda: sum(range(10))), "slow": timed(lambda: sum(range(200_000)))}, 5)
    med = {name: summarize(ts, scale=1e3) for name, ts in times.items()}
    assert set(med) == {"fast", "slow"} and all(len(m["runs"]) == 5 for m in med.values())
    assert med["fast"]["min"] <= med["fast"]["median"] <= med["fast"]["max"]
    assert med["fast"]["median"] < med["slow"]["median"]
    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
    with pytest.raises(ValueError, match="rounds = 0"):
        interleaved({"a": lambda: 1}, rounds=0)


def test_check_result_names_what_is_wrong():
    good = {"schema": 1, "created": "x", "command": "python s.py", "git_commit": "a" * 40, "dirty": False,
            "versions": {"python": "3.11", "hf_optim": "0"}, "cpu": {"model": "m", "logical_cores": 2, "flags": {}},
            "threads": {}, "args": {}, "rows": {"a": {}}}
    assert check_result(good) == []
    assert check_result({**good, "git_commit": None}) == ["git_commit None is not a commit hash"]
    assert check_result({**good, "rows": {}}) == ["rows is empty"]
    converted = {**good, "git_commit": None, "dirty": None, "cpu": None, "regenerated": False}
    assert check_result(converted) == ["a converted result (regenerated: false) needs a note saying how it was made"]
    assert check_result({**converted, "note": "converted from the older format"}) == []


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_result_file_carries_the_schema(path):
    result = json.loads(path.read_text())
    assert check_result(result) == [], path.name
    assert "scripts/" in result["command"] or "hf-optim" in result["command"] or "make " in result["command"]
