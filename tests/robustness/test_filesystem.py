"""Full disks, read-only folders and interrupts: one ``error:`` line, no ``report.json`` saying "complete" for a
run that did not complete, no temporary file left behind, and what was complete before is still there.

A full disk (ENOSPC) and a read-only file system (EROFS) are simulated by :func:`failing_writes`; read-only
folders by ``chmod``, which root ignores (those cases are skipped when running as root)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from .conftest import cli, failing_writes, one_error, quantized_run, report_status, snapshot

as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
LEFTOVERS = (".tmp-*", ".old-*", ".*.tmp", ".export-work-*")


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for pattern in LEFTOVERS for p in root.rglob(pattern))


@pytest.fixture(scope="module")
def run_src(sources, tmp_path_factory):
    return quantized_run(sources, tmp_path_factory.mktemp("fs"))


@pytest.fixture
def run_dir(run_src, tmp_path):
    """A complete one-stage run of the tiny BERT (stage ``q``) with its recipe ``r.yaml`` next to it."""
    root = tmp_path / "fs"
    shutil.copytree(run_src.parent, root)
    return root / "run"


def _rerun(run_dir):
    return ["run", run_dir.parent / "r.yaml", "-o", run_dir, "--force", "-q"]


def _kept(before, after):
    """What a failed run may change: its log file (it says why it stopped)."""
    return {k: v for k, v in before.items() if not k.startswith("logs")} == \
        {k: v for k, v in after.items() if not k.startswith("logs")}


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_a_run_that_cannot_write_changes_nothing(err, words, run_dir, capsys, monkeypatch):
    before = snapshot(run_dir)
    failing_writes(monkeypatch, err, under=run_dir)
    rc, _, stderr = cli(capsys, _rerun(run_dir))
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, (words, "free some space or make the directory writable"))
    # it stopped at its first write: the report still describes the complete stages that are there, unchanged
    assert _kept(before, snapshot(run_dir)) and _leftovers(run_dir) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_disk_that_fills_during_a_stage_leaves_no_complete_report(err, run_dir, capsys, monkeypatch):
    import hf_optim.runner as runner

    real = runner.get_handler

    def handler_on_a_full_disk(config):
        def handle(config, ctx):
            failing_writes(monkeypatch, err, under=run_dir)  # the disk fills once the stage has started
            return real(config)(config, ctx)
        return handle

    weights = (run_dir / "q" / "model.safetensors").read_bytes()
    monkeypatch.setattr(runner, "get_handler", handler_on_a_full_disk)
    rc, _, stderr = cli(capsys, _rerun(run_dir))
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, (os.strerror(err),))
    assert report_status(run_dir) == "running"  # never "complete": the last report it could write
    assert _leftovers(run_dir) == []
    assert (run_dir / "q" / "model.safetensors").read_bytes() == weights  # the complete stage is still there
    assert cli(capsys, ["verify", run_dir])[0] == 0


def test_an_interrupt_during_a_stage_keeps_the_complete_output(run_dir, capsys, monkeypatch):
    """SIGTERM unwinds as KeyboardInterrupt (see hf_optim.cli): the stage's temporary output is removed."""
    import hf_optim.runner as runner

    def interrupted(config):
        def handle(config, ctx):
            (ctx.output_dir / "half.bin").write_bytes(b"\0" * 100)
            raise KeyboardInterrupt("terminated by signal 15")
        return handle

    before = snapshot(run_dir / "q")
    monkeypatch.setattr(runner, "get_handler", interrupted)
    rc, _, stderr = cli(capsys, _rerun(run_dir))
    assert rc == 130 and "interrupted" in stderr
    assert report_status(run_dir) == "failed" and _leftovers(run_dir) == []
    assert snapshot(run_dir / "q") == before


def test_a_new_run_on_a_full_disk_leaves_no_report_and_no_temp_file(sources, tmp_path, capsys, monkeypatch):
    shutil.copytree(sources.get("bert"), tmp_path / "bert")
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "r", "stages": [
        {"name": "q", "kind": "quantize", "model": "bert", "scheme": "int8_dynamic"}]}))
    out = tmp_path / "out"
    failing_writes(monkeypatch, errno.ENOSPC, under=out)
    rc, _, stderr = cli(capsys, ["run", tmp_path / "r.yaml", "-o", out, "-q"])
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, ("No space left on device",))
    assert report_status(out) is None and _leftovers(out) == []


def test_eval_output_on_a_full_disk_keeps_the_old_file(sources, lab, capsys, monkeypatch):
    from .test_data import FAST

    target = lab.write("results/m.json", "old results")
    model, data = lab.model("bert"), lab.csv()
    failing_writes(monkeypatch, errno.ENOSPC, under=target.parent)
    rc, _, stderr = cli(capsys, ["eval", model, "--dataset", data, "-o", target, *FAST])
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, ("No space left on device",))
    assert target.read_text() == "old results" and _leftovers(target.parent) == []


def test_report_on_a_full_disk_keeps_the_old_report(run_dir, capsys, monkeypatch):
    before = (run_dir / "report.json").read_bytes()
    failing_writes(monkeypatch, errno.ENOSPC, under=run_dir)
    rc, _, stderr = cli(capsys, ["report", run_dir, "--no-plots"])
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, ("No space left on device",))
    assert (run_dir / "report.json").read_bytes() == before and _leftovers(run_dir) == []


def test_export_on_a_full_disk_leaves_no_scratch_and_no_output(sources, lab, capsys, monkeypatch):
    model = lab.model("bert")
    out = lab.root / "exports" / "onnx"
    out.parent.mkdir()
    failing_writes(monkeypatch, errno.ENOSPC, under=out.parent)
    rc, _, stderr = cli(capsys, ["export", model, "-o", out, "--backend", "torch", "--optimization", "none",
                                 "--quantization", "none", "--task", "movie-sentiment", "--validation-samples", "8", "-q"])
    monkeypatch.undo()
    assert rc == 2 and one_error(stderr, ("No space left on device",))
    assert list(out.parent.iterdir()) == []


def test_an_interrupted_export_leaves_no_scratch_and_no_output(sources, lab, capsys, monkeypatch):
    import hf_optim.export.stage as export_stage

    def interrupted(*a, **kw):
        raise KeyboardInterrupt("terminated by signal 15")

    monkeypatch.setattr(export_stage, "_assemble", interrupted)  # the last step before the output appears
    out = lab.root / "exports" / "onnx"
    rc, _, stderr = cli(capsys, ["export", lab.model("bert"), "-o", out, "--backend", "torch", "--optimization", "none",
                                 "--quantization", "none", "--task", "movie-sentiment", "--validation-samples", "8", "-q"])
    assert rc == 130 and list(out.parent.iterdir()) == []


@as_root
def test_a_read_only_run_folder_is_one_clear_error(run_dir, capsys):
    before = snapshot(run_dir)
    os.chmod(run_dir, 0o555)
    try:
        rc, _, stderr = cli(capsys, _rerun(run_dir))
    finally:
        os.chmod(run_dir, 0o755)
    assert rc == 2 and one_error(stderr, ("Permission denied",))
    assert _kept(before, snapshot(run_dir)) and _leftovers(run_dir) == []


@as_root
def test_a_read_only_parent_is_one_clear_error(sources, tmp_path, capsys):
    shutil.copytree(sources.get("bert"), tmp_path / "bert")
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "r", "stages": [
        {"name": "q", "kind": "quantize", "model": "bert", "scheme": "int8_dynamic"}]}))
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    try:
        rc, _, stderr = cli(capsys, ["run", tmp_path / "r.yaml", "-o", parent / "out", "-q"])
    finally:
        os.chmod(parent, 0o755)
    assert rc == 2 and one_error(stderr, ("Permission denied",)) and list(parent.iterdir()) == []
