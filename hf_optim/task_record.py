"""The task a model directory was trained for, recorded next to its weights in ``hf_optim_task.json``.

A stage that fits a model to a task's labels (``finetune``, ``distill``, ``prune``: configs with
``sets_task = True``) records that task in its output; a stage that derives a model from another (``quantize``,
``export``, ``compile``, ``student``) carries its input's record over. The runner does both after each stage
(:func:`record_stage_task`), so every artifact of a run knows its task, and ``hf-optim eval``, ``export`` and
``plan`` default to it instead of assuming a built-in one.

The file holds the task as the recipe gave it: a built-in name (``"bbc-topic"``) or the mapping of a user's
dataset (``{"dataset": "/abs/path/data.csv", "text_column": ..., ...}``, see :class:`~hf_optim.data.TaskSpec`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from .integrity import MARKER as _MARKER  # the runner's completion marker

__all__ = ["TASK_RECORD", "record_task", "recorded_task", "inherit_task", "record_stage_task"]

TASK_RECORD = "hf_optim_task.json"
_FORMAT = 1

Task = Union[str, dict]


def record_task(directory: str | Path, task: Task) -> Path:
    """Write ``task`` (a built-in name or a task mapping) as the task of the model in ``directory``."""
    from .data.tasks import TaskSpec

    TaskSpec.coerce(task)  # raises for an invalid task: nothing is recorded
    path = Path(directory) / TASK_RECORD
    path.write_text(json.dumps({"format": _FORMAT, "task": task}, indent=2))
    return path


def recorded_task(directory: str | Path) -> Task | None:
    """The task the model in ``directory`` was trained for, or ``None`` when nothing records it.

    Reads ``hf_optim_task.json``; for a directory written before that file existed, the completion marker
    of a stage that trains on a task (its ``config.task``).
    """
    directory = Path(directory)
    try:
        return json.loads((directory / TASK_RECORD).read_text())["task"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        marker = json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    from .recipe import stage_kinds

    cls = stage_kinds().get(marker.get("kind")) if isinstance(marker, dict) else None
    return (marker.get("config") or {}).get("task") if cls is not None and cls.sets_task else None


def inherit_task(source: str | Path, directory: str | Path) -> Task | None:
    """Record in ``directory`` (a model derived from ``source``) the task ``source`` records, if any."""
    task = recorded_task(source)
    if task is not None:
        record_task(directory, task)
    return task


def record_stage_task(config: Any, inputs: dict[str, Path], output_dir: Path) -> Task | None:
    """Record the task of a stage's output model: the stage's own task when it trains on one (``sets_task``),
    else its input model's recorded task. Outputs that hold no model (``evaluate``) get nothing."""
    if not (output_dir / "config.json").is_file():
        return None
    if getattr(config, "sets_task", False):
        record_task(output_dir, config.task)
        return config.task
    return inherit_task(inputs["model"], output_dir) if "model" in inputs else None
