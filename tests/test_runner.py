"""Runner: stage order, atomic outputs, resume by fingerprint, crash and Ctrl-C mid-stage."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from hf_optim.errors import HfOptimError, StageError
from hf_optim.recipe import Recipe, StageConfig
from hf_optim.registry import register
from hf_optim.runner import MARKER, RUN_MARKER, run

CALLS: list[tuple[str, str]] = []


@dataclasses.dataclass
class WriteConfig(StageConfig):
    """Test stage: copies its input's value.txt (if any), appends its own text, optionally fails midway."""

    kind = "test-write"
    model: str = "none"
    text: str = "x"
    fail: str = "no"  # "no" | "error" | "interrupt" | "sigterm"

    inputs = ("model",)


@register(WriteConfig)
def _write_stage(config, ctx):
    CALLS.append((ctx.name, config.text))
    src = ctx.inputs.get("model")
    before = (src / "value.txt").read_text() if src and (src / "value.txt").is_file() else ""
    (ctx.output_dir / "value.txt").write_text(before + config.text)
    (ctx.output_dir / "half-written.bin").write_bytes(b"\0" * 10)
    (ctx.scratch_dir("work") / "scratch.bin").write_bytes(b"\0")
    if config.fail == "sigterm":
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
    if config.fail == "error":
        raise RuntimeError("simulated crash")
    if config.fail == "interrupt":
        raise KeyboardInterrupt
    return {"length": len(before + config.text)}


def _recipe(tmp_path, b_text="b", b_fail="no", c_text="c"):
    (tmp_path / "none").mkdir(exist_ok=True)
    return Recipe.from_dict({"name": "t", "stages": [
        {"name": "a", "kind": "test-write", "model": "none", "text": "a"},
        {"name": "b", "kind": "test-write", "model": "a", "text": b_text, "fail": b_fail},
        {"name": "c", "kind": "test-write", "model": "b", "text": c_text},
    ]}, base_dir=tmp_path)


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def _value(out, stage):
    return (out / stage / "value.txt").read_text()


def test_stages_run_in_order_and_pass_artifacts(tmp_path):
    out = tmp_path / "out"
    result = run(_recipe(tmp_path), out, progress=False)
    assert [c[0] for c in CALLS] == ["a", "b", "c"]
    assert _value(out, "c") == "abc"
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ran"] * 3 and report["status"] == "complete"
    assert report["stages"][2]["metrics"] == {"length": 3}
    assert report == json.loads(json.dumps(result.report, default=str))
    assert result.log_file.is_file() and "[3/3] c" in result.log_file.read_text()
    assert (out / "recipe.yaml").is_file()
    assert not list(out.glob(".tmp-*"))


def test_rerun_skips_complete_stages(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    CALLS.clear()
    result = run(_recipe(tmp_path), out, progress=False)
    assert CALLS == []
    assert [s["status"] for s in result.report["stages"]] == ["skipped"] * 3
    assert result.report["stages"][2]["metrics"] == {"length": 3}


def test_changed_stage_reruns_it_and_downstream_only(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    CALLS.clear()
    run(_recipe(tmp_path, b_text="B"), out, progress=False)
    assert [c[0] for c in CALLS] == ["b", "c"]
    assert _value(out, "c") == "aBc"
    CALLS.clear()
    run(_recipe(tmp_path, b_text="B"), out, progress=False, force=True)
    assert [c[0] for c in CALLS] == ["a", "b", "c"]


def test_crash_mid_stage_leaves_nothing_complete_and_resumes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StageError, match=r"stage 'b' \(test-write\) failed: RuntimeError: simulated crash"):
        run(_recipe(tmp_path, b_fail="error"), out, progress=False)
    assert (out / "a" / MARKER).is_file()
    assert not (out / "b").exists() and not (out / "c").exists()
    assert not list(out.glob(".tmp-*"))  # the half-written output was discarded
    partial = json.loads((out / "report.json").read_text())  # shows how far it got, marked failed
    assert partial["status"] == "failed"
    assert [(s["name"], s["status"]) for s in partial["stages"]] == [("a", "ran"), ("b", "failed")]
    assert "simulated crash" in partial["stages"][1]["error"]
    assert "failed" in (out / "report.md").read_text()  # the human-readable report of how far it got
    log = next((out / "logs").glob("run-*.log")).read_text()
    assert "Traceback" in log and "simulated crash" in log  # details go to the log file
    CALLS.clear()
    run(_recipe(tmp_path), out, progress=False)
    assert [c[0] for c in CALLS] == ["b", "c"]  # a was kept
    assert _value(out, "c") == "abc"


def test_interrupt_mid_stage_discards_partial_output(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(_recipe(tmp_path, b_text="B", b_fail="interrupt"), out, progress=False)
    # the previous complete b is still there, untouched; the new partial one is gone
    assert _value(out, "b") == "ab"
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))


def test_sigterm_unwinds_like_ctrl_c_and_restores_handler(tmp_path):
    import signal

    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="terminated by signal"):
        run(_recipe(tmp_path, b_fail="sigterm"), out, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert (out / "a" / MARKER).is_file() and not (out / "b").exists()
    assert not list(out.glob(".tmp-*"))  # partial output and scratch dirs removed


def test_killed_run_leftovers_are_never_taken_as_complete(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    # a SIGKILL mid-stage leaves a temp dir behind, even one that holds a marker
    run_id = json.loads((out / RUN_MARKER).read_text())["run_id"]
    stale = out / f".tmp-{run_id}-c-deadbeef"
    stale.mkdir()
    (stale / MARKER).write_text("{}")
    # and a stage dir without a marker (e.g. copied by hand) is not complete either
    os.remove(out / "c" / MARKER)
    CALLS.clear()
    run(_recipe(tmp_path), out, progress=False)
    assert [c[0] for c in CALLS] == ["c"]
    assert not stale.exists()


def test_a_folder_that_is_not_a_run_is_refused_and_left_untouched(tmp_path):
    home = tmp_path / "home"
    for name in ("a", "b", ".tmp-x", ".old-y"):  # named like stages and like the runner's own temp names
        (home / name).mkdir(parents=True)
        (home / name / "keep.txt").write_text(name)
    (home / "recipe.yaml").write_text("mine")
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    with pytest.raises(HfOptimError, match="is not empty and is not an hf_optim run"):
        run(_recipe(tmp_path), home, progress=False)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before
    assert (home / "recipe.yaml").read_text() == "mine" and not CALLS
    with pytest.raises(HfOptimError, match="is a file"):
        run(_recipe(tmp_path), home / "recipe.yaml", progress=False)


def test_only_leftovers_of_this_run_are_removed(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    foreign = out / ".tmp-someone-else"  # not named with this run's id: not ours to delete
    foreign.mkdir()
    run(_recipe(tmp_path), out, progress=False)
    assert foreign.is_dir()


def test_a_kill_between_the_two_renames_keeps_the_complete_stage(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    run_id = json.loads((out / RUN_MARKER).read_text())["run_id"]
    # the state a SIGKILL leaves after `final -> .old-*` and before `tmp -> final`
    os.replace(out / "c", out / f".old-{run_id}-c-0123abcd")
    (out / f".tmp-{run_id}-c-zzz").mkdir()
    CALLS.clear()
    run(_recipe(tmp_path), out, progress=False)
    assert CALLS == [] and _value(out, "c") == "abc"  # recovered, not re-run, nothing lost
    assert not list(out.glob(".old-*")) and not list(out.glob(".tmp-*"))


def test_runs_made_before_the_run_marker_are_adopted(tmp_path):
    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    os.remove(out / RUN_MARKER)
    CALLS.clear()
    run(_recipe(tmp_path), out, progress=False)
    assert CALLS == [] and (out / RUN_MARKER).is_file()


def test_output_dir_is_required_and_locked(tmp_path):
    with pytest.raises(HfOptimError, match="no output directory"):
        run(_recipe(tmp_path), None)
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(HfOptimError, match="another hf-optim run is using"):
            run(_recipe(tmp_path), out, progress=False)


@pytest.mark.parametrize("where", ["~", "/tmp/x", "../elsewhere", "runs/../../x", ""])
def test_a_recipe_cannot_send_its_output_outside_its_folder(tmp_path, where):
    from hf_optim.errors import RecipeError

    with pytest.raises(RecipeError, match="must be a relative path inside the recipe's folder.*--output DIR"):
        Recipe.from_dict({"name": "r", "output_dir": where, "stages": [{"name": "a", "kind": "evaluate",
                                                                      "model": "builtin:smollm2-135m",
                                                                      "task": "bbc-news"}]})



def test_changed_weights_of_a_complete_stage_are_detected_not_reused(tmp_path):
    from hf_optim.integrity import IntegrityError, verify_artifact

    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    weights = out / "b" / "half-written.bin"  # the stage's weight file, recorded with its digest
    assert "half-written.bin" in json.loads((out / "b" / MARKER).read_text())["files_sha256"]
    assert verify_artifact(out / "b") == 1
    data = bytearray(weights.read_bytes())
    data[3] ^= 1  # one flipped bit
    weights.write_bytes(bytes(data))
    CALLS.clear()
    with pytest.raises(IntegrityError, match=r"b: 1 weight file\(s\) differ.*half-written.bin \(changed\)"):
        run(_recipe(tmp_path), out, progress=False)
    assert CALLS == [] and weights.read_bytes() == bytes(data)  # nothing ran, nothing was replaced
    weights.unlink()
    with pytest.raises(IntegrityError, match=r"half-written.bin \(missing\)"):
        verify_artifact(out / "b")


def test_verify_command_checks_a_run_and_names_changed_files(tmp_path, capsys):
    from hf_optim.cli import main

    out = tmp_path / "out"
    run(_recipe(tmp_path), out, progress=False)
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.count("1 weight file(s) match") == 3
    (out / "c" / "half-written.bin").write_bytes(b"\1" * 10)
    assert main(["verify", str(out / "a"), str(out / "c")]) == 2
    captured = capsys.readouterr()
    assert "ok  " in captured.out and "half-written.bin (changed)" in captured.err
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert "holds no hf_optim stage output" in capsys.readouterr().err
