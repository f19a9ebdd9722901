"""Run a recipe stage by stage: resumable, atomic stage outputs, one log file per run.

Output layout (``output_dir``)::

    recipe.yaml            the recipe as run (normalized)
    report.json            every stage's status, timing and metrics
    logs/run-<time>.log    the log of each run
    <stage>/               one artifact directory per stage, with hf_optim_stage.json (its fingerprint) and,
                           for a model, hf_optim_task.json (the task it was trained for; see task_record.py)

A stage writes into ``.tmp-<run id>-<stage>-*`` and the directory is renamed to ``<stage>`` only after the handler
returned and the marker was written, so a crash, a kill or Ctrl-C never leaves a directory that a later run
mistakes for complete. A stage whose directory exists with the same fingerprint is skipped.

Under ``torchrun`` / ``accelerate launch`` every process runs :func:`run`: rank 0 holds the lock and writes, the
stages that train run on every rank, the others on rank 0 only (see :mod:`hf_optim.distributed`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from . import __version__
from .distributed import RunGroup
from .errors import HfOptimError, StageError
from .integrity import DIGESTS, MARKER, verify_artifact, weight_digests
from .recipe import BUILTIN_PREFIX, Recipe, Stage
from .registry import get_handler
from .report.summary import artifact_table
from .task_record import record_stage_task

__all__ = ["run", "RunResult", "StageContext", "MARKER"]

logger = logging.getLogger("hf_optim")
# Tracebacks go to the run log only; the console gets one line (see cli.py).
_trace = logging.getLogger("hf_optim_trace")
_trace.propagate = False


@dataclasses.dataclass
class StageContext:
    """What a handler gets besides its config.

    Attributes:
        name: the stage's name. inputs: ``{field: Path}`` of the artifact directories it reads.
        output_dir: the (temporary) directory to write the artifact into. run_dir: the run's output dir.
        seed: the recipe's seed. progress: show progress bars.
    """

    name: str
    inputs: dict[str, Path]
    output_dir: Path
    run_dir: Path
    seed: int
    progress: bool = True
    run_id: str = "run"
    _scratch: list = dataclasses.field(default_factory=list, repr=False)

    def scratch_dir(self, label: str = "work") -> Path:
        """A temporary directory for intermediate files (e.g. Trainer's output_dir).

        It lives in the run directory under a ``.tmp-`` name, outside the artifact, and is deleted when the
        stage ends, however it ends (a killed run's leftovers are removed by the next run).
        """
        path = Path(tempfile.mkdtemp(dir=self.run_dir, prefix=f".tmp-{self.run_id}-{self.name}-{label}-"))
        self._scratch.append(path)
        return path

    def log_callback(self):
        """A ``TrainerCallback`` that copies Trainer's logs (loss, lr ...) into the run log."""
        from transformers import TrainerCallback

        stage = self.name

        class _Log(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    logger.info("[%s] step %d: %s", stage, state.global_step,
                                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()))

        return _Log()


@dataclasses.dataclass
class RunResult:
    output_dir: Path
    report: dict[str, Any]
    log_file: Path | None  # None on the ranks other than 0 of a multi-process launch (rank 0 logs)

    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name


def _resolve_inputs(recipe: Recipe, stage: Stage, out: Path) -> dict[str, Path]:
    from .data import builtin_model

    return {field: out / ref if what == "stage" else builtin_model(ref[len(BUILTIN_PREFIX):]) if what == "builtin"
            else recipe.resolve_path(ref) for field, what, ref in recipe.stage_inputs(stage)}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_json(path: Path, data: Any) -> None:
    from .data.sources import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _replace_dir(tmp: Path, final: Path, run_id: str) -> None:
    """Move ``tmp`` to ``final``; an old ``final`` is moved aside first and deleted after. A kill between the two
    renames leaves the old copy under ``.old-<run id>-*``, which the next run puts back (:func:`_clean_leftovers`)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{run_id}-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


RUN_MARKER = ".hf_optim_run.json"


def _claim_output_dir(out: Path) -> str:
    """Return the run id of ``out``, making it a run directory when it is new or empty.

    hf_optim writes only into a directory it made: a new or empty one (then marked with :data:`RUN_MARKER`) or
    one of its own runs. Anything else (a home directory, a project folder) is refused before anything is
    written, so no file of the user's is ever moved, overwritten or deleted.
    """
    if out.exists() and not out.is_dir():
        raise HfOptimError(f"output {out} is a file; choose a directory (--output DIR)")
    marker = out / RUN_MARKER
    if out.is_dir() and not marker.is_file() and any(p.name != ".lock" for p in out.iterdir()) and \
            not _legacy_run(out):
        raise HfOptimError(f"output directory {out} is not empty and is not an hf_optim run (it has no {RUN_MARKER}); "
                           "hf_optim writes only into a new or empty directory or one of its own runs: choose "
                           "another --output")
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            json.dump({"run_id": uuid.uuid4().hex[:12], "hf_optim": __version__,
                       "created": _dt.datetime.now().isoformat(timespec="seconds")}, f)
    try:
        run_id = json.loads(marker.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise HfOptimError(f"{marker} is unreadable; if {out} is your run, delete that file to adopt it again, or "
                           "choose another --output") from None
    if not isinstance(run_id, str) or not run_id.isalnum():
        raise HfOptimError(f"{marker} holds an invalid run id {str(run_id)[:40]!r}; choose another --output")
    return run_id


def _legacy_run(out: Path) -> bool:
    """A run directory written before :data:`RUN_MARKER` existed: its report.json is a run report."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"recipe", "fingerprint", "stages"} <= set(report)


def _clean_leftovers(out: Path, run_id: str) -> None:
    """Remove what a crashed or killed run of this directory left (only names with its run id): temp outputs
    are never complete; an ``.old-*`` copy whose stage directory is missing (killed between the two renames of
    :func:`_replace_dir`) is the complete previous output and is put back."""
    for stale in sorted(out.glob(f".old-{run_id}-*")):
        name = (_read_marker(stale) or {}).get("name")
        if isinstance(name, str) and name and "/" not in name and not (out / name).exists() and \
                stale.name.startswith(f".old-{run_id}-{name}-"):
            os.replace(stale, out / name)
            logger.info("recovered the complete output of stage %s from an interrupted replace", name)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in out.glob(f".tmp-{run_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _setup_log(out: Path) -> tuple[Path, logging.Handler]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"run-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.handleError = lambda record: None  # a full disk: the command's one error line says so, not a traceback per line
    for name in ("hf_optim", "hf_optim_trace", "transformers"):
        logging.getLogger(name).addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return path, handler


def run(recipe: Recipe | str | Path, output_dir: str | Path | None = None, force: bool = False,
        progress: bool = True) -> RunResult:
    """Run ``recipe`` into ``output_dir``, skipping stages that are already complete.

    Args:
        recipe (`Recipe` or path): the recipe or its YAML file.
        output_dir (`str` or `Path`, *optional*): where artifacts go; defaults to the recipe's
            ``output_dir`` (relative to the recipe file) and must be given when the recipe has none.
        force (`bool`, *optional*, defaults to `False`): re-run every stage even if complete.
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        `RunResult` with the output directory, the report (also written to ``report.json``) and the log file.
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    if output_dir is None:
        if not recipe.output_dir:
            raise HfOptimError("no output directory: pass output_dir (CLI: --output DIR) or set `output_dir` in the recipe")
        output_dir = recipe.resolve_path(recipe.output_dir)
    out = Path(output_dir).expanduser().resolve()
    for stage in recipe.stages:  # import every handler the recipe needs now, not after hours of earlier stages
        get_handler(stage.config)
    group = RunGroup()
    if not group.is_main:
        try:
            report = group.follow(recipe, lambda stage, run_id: _train_along(recipe, stage, out, run_id, group.rank))
        finally:
            group.close()
        return RunResult(output_dir=out, report=report, log_file=None)
    lock = None

    def claim():
        nonlocal lock
        run_id = _claim_output_dir(out)
        lock = open(out / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise HfOptimError(f"another hf-optim run is using {out}; wait for it or choose another --output") from None
        return run_id, recipe.fingerprint()

    try:
        run_id, _ = group.main_only(claim)
    except BaseException:
        group.close()
        raise
    log_file, handler = _setup_log(out)
    previous = _terminate_as_interrupt()
    try:
        return _run_locked(recipe, out, force, progress, log_file, run_id, group)
    finally:
        group.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for name in ("hf_optim", "hf_optim_trace", "transformers"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _terminate_as_interrupt():
    """Make SIGTERM (``kill``, a CI timeout) unwind like Ctrl-C, so the running stage cleans up after itself."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    return signal.signal(signal.SIGTERM, _raise)


def _train_along(recipe: Recipe, stage: Stage, out: Path, run_id: str, rank: int) -> None:
    """A rank other than 0 in a stage that trains: the same handler (Trainer shares the batches and averages the
    gradients), its output written to a throw-away directory (rank 0's is the artifact)."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-{run_id}-{stage.name}-rank{rank}-"))
    ctx = StageContext(name=stage.name, inputs={}, output_dir=tmp, run_dir=out, seed=recipe.seed, progress=False,
                       run_id=run_id)
    try:
        ctx.inputs = _resolve_inputs(recipe, stage, out)
        get_handler(stage.config)(stage.config, ctx)
    finally:
        for path in (*ctx._scratch, tmp):
            shutil.rmtree(path, ignore_errors=True)


def _run_locked(recipe: Recipe, out: Path, force: bool, progress: bool, log_file: Path, run_id: str,
                group: RunGroup) -> RunResult:
    _clean_leftovers(out, run_id)
    fingerprints = recipe.stage_fingerprints()
    report: dict[str, Any] = {
        "recipe": recipe.name, "description": recipe.description, "fingerprint": recipe.fingerprint(),
        "hf_optim": __version__, "started": _dt.datetime.now().isoformat(timespec="seconds"), "stages": [],
    }
    # at once: a run that cannot write (a full disk, a read-only folder) stops here, and a report.json left from
    # an earlier complete run never stands for this one
    _write_report(out, report, status="running")
    from .data.sources import atomic_write_text

    # after the report: a report saying "complete" never sits next to a new recipe, and never half a recipe
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    verified: set[Path] = set()  # stage outputs whose weights were checked (or written) in this run: hashed once
    logger.info("run %s (%d stages) -> %s", recipe.name, len(recipe.stages), out)
    total = len(recipe.stages)
    for i, stage in enumerate(recipe.stages, 1):
        fp = fingerprints[stage.name]
        final = out / stage.name

        def complete():  # the stage's marker when its output is complete and may be reused (then it is skipped)
            marker = _read_marker(final)
            if force or not marker or marker.get("fingerprint") != fp:
                return None
            verify_artifact(final)  # a complete output whose weights changed is not reused
            verified.add(final)
            return marker

        marker = group.main_only(complete)
        if marker is not None:
            logger.info("[%d/%d] %s (%s): complete, skipped", i, total, stage.name, stage.config.kind)
            report["stages"].append({**{k: v for k, v in marker.items() if k != DIGESTS}, "status": "skipped"})
            continue
        logger.info("[%d/%d] %s (%s): running", i, total, stage.name, stage.config.kind)
        error = None
        try:
            entry = _run_stage(recipe, stage, fp, out, progress, run_id, verified)
        except BaseException as e:
            error = e
        try:
            group.agree(stage.name, error)
        except StageError as e:  # another rank failed
            error = e
        if error is not None:
            # the report shows how far the run got; it is not a completion marker (hf_optim_stage.json is)
            report["stages"].append({"name": stage.name, "kind": stage.config.kind, "fingerprint": fp,
                                     "status": "failed", "error": f"{type(error).__name__}: {error}"})
            _write_report(out, report, status="failed")
            if isinstance(error, Exception):  # report.md shows what completed (not on Ctrl-C: stop promptly)
                _write_run_report(out, report, recipe)
            raise error
        logger.info("[%d/%d] %s: done in %.1f s", i, total, stage.name, entry["seconds"])
        report["stages"].append({**entry, "status": "ran"})
        _write_report(out, report, status="running")
    _write_report(out, report, status="complete")
    report = _write_run_report(out, report, recipe)
    group.broadcast(report)
    return RunResult(output_dir=out, report=report, log_file=log_file)


def _write_run_report(out: Path, report: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """report.md, plots and the cost section (hf_optim.report); if that fails the completed run still stands."""
    try:
        from .report.config import ReportConfig
        from .report.writer import write_report

        return write_report(out, report, ReportConfig.from_dict(recipe.report, strict=True))
    except Exception as e:  # noqa: BLE001
        logger.error("report.md not written: %s: %s (rerun `hf-optim report %s`)", type(e).__name__, e, out)
        _trace.error("report failed", exc_info=True)
        return report


def _write_report(out: Path, report: dict[str, Any], status: str) -> None:
    report["status"] = status
    report["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
    report["artifacts"] = artifact_table(report["stages"])
    _atomic_json(out / "report.json", report)


def _run_stage(recipe: Recipe, stage: Stage, fp: str, out: Path, progress: bool, run_id: str,
               verified: set[Path]) -> dict[str, Any]:
    inputs = _resolve_inputs(recipe, stage, out)  # may raise (e.g. a missing data package): nothing made yet
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-{run_id}-{stage.name}-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    ctx = StageContext(name=stage.name, inputs=inputs, output_dir=tmp, run_dir=out, seed=recipe.seed,
                       progress=progress, run_id=run_id)
    start = time.perf_counter()
    try:
        for field, path in ctx.inputs.items():
            if not path.exists():
                raise StageError(f"stage {stage.name!r}: input {field} = {path} does not exist")
            if path not in verified:  # an hf_optim output read back: its weights are what was written
                verify_artifact(path)
                verified.add(path)
        metrics = get_handler(stage.config)(stage.config, ctx) or {}
        record_stage_task(stage.config, ctx.inputs, tmp)  # the model's task, read back by `hf-optim eval` ...
        entry = {"name": stage.name, "kind": stage.config.kind, "fingerprint": fp,
                 "config": stage.config.to_dict(), "seconds": round(time.perf_counter() - start, 2),
                 "metrics": metrics, "finished": _dt.datetime.now().isoformat(timespec="seconds")}
        for path in ctx._scratch:
            shutil.rmtree(path, ignore_errors=True)
        # written last: its presence means "complete"; the digests let every later read detect changed weights
        _atomic_json(tmp / MARKER, {**entry, DIGESTS: weight_digests(tmp)})
        _replace_dir(tmp, out / stage.name, run_id)
        verified.add(out / stage.name)  # written by this run just now: hashed once, when the marker was written
        return entry
    except BaseException as e:
        for path in ctx._scratch:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, HfOptimError)):
            logger.error("stage %s stopped: %s", stage.name, e)
            raise
        logger.error("stage %s failed: %s: %s", stage.name, type(e).__name__, e)
        _trace.error("stage %s failed", stage.name, exc_info=True)
        raise StageError(f"stage {stage.name!r} ({stage.config.kind}) failed: {type(e).__name__}: {e} "
                         f"(nothing was written; details in the log)") from e
