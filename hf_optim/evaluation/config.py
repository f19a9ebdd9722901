"""``evaluate`` stage config (light: no torch import)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Union

from ..data.tasks import TaskSpec
from ..recipe import StageConfig


@dataclasses.dataclass
class EvalConfig(StageConfig):
    """Evaluate ``model`` on a task split and measure its speed, size and memory.

    Args:
        model (`str`): an earlier stage, ``builtin:<name>`` or a model directory.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): see :class:`TaskSpec`.
        split (`str`, *optional*, defaults to ``"test"``): ``test``, ``validation`` or ``train``.
        max_samples (`int`, *optional*): evaluate on the first N examples of the split only.
        batch_size (`int`, *optional*, defaults to 64): batch size for the metric pass.
        max_length (`int`, *optional*, defaults to 128): tokens per example.
        latency_samples (`int`, *optional*, defaults to 200): batch-1 calls timed for p50/p95 latency.
        throughput_batch_size (`int`, *optional*, defaults to 32): batch size of the throughput pass.
        throughput_samples (`int`, *optional*, defaults to 512): examples in the throughput pass.
        measure_memory (`bool`, *optional*, defaults to `True`): measure peak memory in a fresh process.
        threads (`int`, *optional*): torch intra-op threads while measuring (default: torch's choice).
    """

    kind = "evaluate"
    version = 1

    model: str
    task: Union[str, dict] = "movie-sentiment"
    split: Literal["test", "validation", "train"] = "test"
    max_samples: Optional[int] = None
    batch_size: int = 64
    max_length: int = 128
    latency_samples: int = 200
    throughput_batch_size: int = 32
    throughput_samples: int = 512
    measure_memory: bool = True
    threads: Optional[int] = None

    def validate(self) -> None:
        TaskSpec.coerce(self.task)
        for f in ("batch_size", "max_length", "throughput_batch_size"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        for f in ("latency_samples", "throughput_samples"):
            if getattr(self, f) < 0:
                self._fail(f, "must be >= 0 (0 skips the measurement)")
        if self.max_samples is not None and self.max_samples < 1:
            self._fail("max_samples", "must be >= 1 or unset")
        if self.threads is not None and self.threads < 1:
            self._fail("threads", "must be >= 1 or unset")
