"""Recipe runs under ``torchrun`` / ``accelerate launch``: which process does what, and how they stay in step.

Every process of a launch runs the recipe runner (:func:`hf_optim.runner.run`). Rank 0 holds the run lock, decides
which stages run, writes every artifact and the report. Stages that train (:func:`stage_trains`) run on every rank,
because ``Trainer`` spreads the batches over the processes and averages the gradients (DDP); the other ranks write
their copy of the output into a throw-away directory. Every other stage (evaluate, quantize, export ...) runs on
rank 0 alone while the others wait. After each stage all ranks exchange their outcome, so a failure on any rank
stops every rank with the same error instead of leaving the others waiting.

The processes must see the run directory at the same path (one machine, or a shared file system). A single
process (no ``WORLD_SIZE`` above 1 in the environment) takes none of these steps.

    torchrun --nproc-per-node 2 -m hf_optim.cli run recipes/movie-sentiment.yaml -o runs/ms
    accelerate launch --num_processes 2 -m hf_optim.cli run recipes/movie-sentiment.yaml -o runs/ms
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Callable, TypeVar

from .errors import HfOptimError, StageError

__all__ = ["RunGroup", "stage_trains", "world_size", "is_main_process"]

T = TypeVar("T")
# A rank waits at a barrier for as long as rank 0 needs for a stage it runs alone (a GPTQ pass can take an hour);
# a crashed rank ends the launch anyway (torchrun stops the others).
_WAIT = _dt.timedelta(hours=48)


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` set by torchrun / accelerate; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true without a launcher)."""
    return world_size() == 1 or int(os.environ.get("RANK", "0")) == 0


def stage_trains(config: Any) -> bool:
    """Whether a stage trains with ``Trainer`` and therefore runs on every rank.

    A config says so itself with a ``trains`` attribute (a bool, or a method taking no arguments); otherwise the
    stages with the shared training fields (``finetune``, ``distill``, ``prune``) and quantization-aware
    ``quantize`` train.
    """
    flag = getattr(config, "trains", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    from .training import TrainingFields

    if isinstance(config, TrainingFields):
        return True
    return getattr(config, "kind", None) == "quantize" and getattr(config, "scheme", None) == "int8_qat"


class RunGroup:
    """The processes of one launch, as the runner sees them (a no-op for a single process).

    Attributes:
        rank (`int`): this process's rank. size (`int`): the number of processes. is_main (`bool`): rank 0.
    """

    def __init__(self) -> None:
        self.size = world_size()
        self.rank = int(os.environ.get("RANK", "0")) if self.size > 1 else 0
        self.is_main = self.rank == 0
        self._group = None
        if self.size > 1:
            import torch.distributed as dist
            from accelerate import PartialState

            # the default process group is made as Trainer would make it (backend, device), so the training
            # stages find it ready; the runner's own messages go over a CPU (gloo) group that waits long
            PartialState()
            self._group = dist.new_group(backend="gloo", timeout=_WAIT)

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self._group is None:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def main_only(self, fn: Callable[[], T] | None = None) -> T:
        """Run ``fn`` on rank 0 and hand its result to every rank (the other ranks pass no ``fn``); when it
        raises, every other rank raises an :class:`~hf_optim.errors.HfOptimError` naming the error."""
        if self._group is None:
            return fn()
        if not self.is_main:
            status, value = self.broadcast()
            if status == "error":
                raise HfOptimError(f"rank 0 stopped: {value}")
            return value
        try:
            value = fn()
        except BaseException as e:
            self.broadcast(("error", f"{type(e).__name__}: {e}"))
            raise
        self.broadcast(("ok", value))
        return value

    def follow(self, recipe: Any, train: Callable[[Any, str], None]) -> dict[str, Any]:
        """The runner's loop on a rank other than 0: ``train(stage, run_id)`` for each stage that rank 0 runs and
        that trains; a barrier after each stage rank 0 runs. Returns rank 0's report."""
        run_id, fingerprint = self.main_only()
        if fingerprint != recipe.fingerprint():
            raise HfOptimError(f"rank {self.rank} read another recipe than rank 0; every process must run the same one")
        for stage in recipe.stages:
            if self.main_only() is not None:  # complete: rank 0 skips it
                continue
            error = None
            if stage_trains(stage.config):
                try:
                    train(stage, run_id)
                except BaseException as e:
                    error = e
            self.agree(stage.name, error)
            if error is not None:
                raise error
        return self.broadcast()

    def agree(self, stage: str, error: BaseException | None = None) -> None:
        """A barrier after a stage: every rank reports its outcome; when any rank failed, each rank that did not
        raises a :class:`~hf_optim.errors.StageError` naming the rank (the failed ranks re-raise their own)."""
        if self._group is None:
            return
        import torch.distributed as dist

        outcomes: list[Any] = [None] * self.size
        dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}",
                               group=self._group)
        failed = [(r, msg) for r, msg in enumerate(outcomes) if msg is not None]
        if failed and error is None:
            rank, msg = failed[0]
            raise StageError(f"stage {stage!r} failed on rank {rank} of {self.size}: {msg}")

    def close(self) -> None:
        """Release the runner's process group (the default one stays for whatever the program does next)."""
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self._group)
            self._group = None
