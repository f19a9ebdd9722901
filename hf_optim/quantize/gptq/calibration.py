"""What GPTQ's calibration costs and what it computes once: threads, phase timers and the float model's targets.

* :func:`calibration_threads`: the intra-op threads the calibration runs on. torch's own count (all physical
  cores, unless the caller chose with ``OMP_NUM_THREADS`` or ``torch.set_num_threads``) is never overridden,
  except by ``HF_OPTIM_CALIBRATION_THREADS`` (a count, or ``all``), which sets the calibration's threads alone:
  ``OMP_NUM_THREADS=1 HF_OPTIM_CALIBRATION_THREADS=all hf-optim run ...`` measures speed on one thread and
  calibrates on every core.
* :class:`PhaseTimer`: wall seconds per phase (GPTQ, layer tuning, end-to-end tuning), reported by the stage.
* :class:`TeacherLogits`: the float model's logits on each calibration batch, computed once for the end-to-end
  tuning (which reads every batch ~3 times: the loss before, the steps, the loss after) and kept in memory up to
  :attr:`CalibrationCache.memory_bytes`, then in a temporary directory up to :attr:`CalibrationCache.disk_bytes`
  (deleted when the tuning ends); a batch past both is recomputed at every use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import tempfile
import time
from typing import Callable, Iterator

import torch

__all__ = ["CalibrationCache", "CACHE", "calibration_threads", "PhaseTimer", "TeacherLogits", "peak_rss_mb"]

THREADS_ENV = "HF_OPTIM_CALIBRATION_THREADS"


@dataclasses.dataclass
class CalibrationCache:
    """What the tuning passes compute once and reuse (process-wide settings, not part of a stage's config: they
    change the time a calibration takes, never its result).

    Args:
        enabled (`bool`, *optional*, defaults to `True`): reuse the float model's logits across the end-to-end
            tuning's passes and the grid dequantized once per loss pass over all batches; `False` recomputes
            both at every use (the behaviour before the cache; benchmarks compare the two).
        memory_bytes (`int`, *optional*, defaults to 1 GiB): teacher logits held in memory (float32, batch x
            tokens x vocabulary each: 4 x 256 x 49,152 is 192 MiB).
        disk_bytes (`int`, *optional*, defaults to 16 GiB): then written to a temporary directory
            (``TMPDIR``), while the disk keeps twice as much free.
    """

    enabled: bool = True
    memory_bytes: int = 1 << 30
    disk_bytes: int = 16 << 30


CACHE = CalibrationCache()


def _requested_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip().lower()
    if not value:
        return None
    if value == "all":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a thread count or 'all'") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected at least 1 thread")
    return n


@contextlib.contextmanager
def calibration_threads() -> Iterator[int]:
    """The threads the calibration runs on (see the module's docstring), restored afterwards."""
    requested, before = _requested_threads(), torch.get_num_threads()
    if requested is not None and requested != before:
        torch.set_num_threads(requested)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if os.uname().sysname == "Darwin" else 1 << 10), 1)


class PhaseTimer:
    """Wall seconds per named phase; ``with timer("gptq"): ...`` adds the block's time to ``gptq``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self._start


class TeacherLogits:
    """``teacher(i)``: the float model's logits on calibration batch ``i`` (``compute(i)``), computed at the first
    use and kept within the budgets of ``settings`` (see :class:`CalibrationCache`). Use as a context manager: the
    temporary directory is removed at exit."""

    def __init__(self, compute: Callable[[int], torch.Tensor], settings: CalibrationCache | None = None):
        self.compute, self.settings = compute, settings or CACHE
        self.memory: dict[int, torch.Tensor] = {}
        self.disk: dict[int, str] = {}
        self.memory_bytes = self.disk_bytes = self.computed = 0
        self._dir: str | None = None

    def __enter__(self) -> "TeacherLogits":
        return self

    def __exit__(self, *exc) -> None:
        self.memory.clear()
        self.disk.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __call__(self, i: int) -> torch.Tensor:
        if i in self.memory:
            return self.memory[i]
        if i in self.disk:
            from safetensors.torch import load_file

            return load_file(self.disk[i])["logits"]
        with torch.no_grad():
            logits = self.compute(i)
        self.computed += 1
        if self.settings.enabled:
            self._keep(i, logits)
        return logits

    def _keep(self, i: int, logits: torch.Tensor) -> None:
        size = logits.numel() * logits.element_size()
        if self.memory_bytes + size <= self.settings.memory_bytes:
            self.memory[i] = logits
            self.memory_bytes += size
            return
        if self.disk_bytes + size > self.settings.disk_bytes:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="hf-optim-teacher-")
        if shutil.disk_usage(self._dir).free < 2 * size:
            return
        from safetensors.torch import save_file

        path = os.path.join(self._dir, f"{i}.safetensors")
        save_file({"logits": logits.contiguous()}, path)
        self.disk[i] = path
        self.disk_bytes += size

    def stats(self) -> dict[str, int]:
        """Batches computed, and the MiB held in memory and on disk."""
        return {"teacher_batches_computed": self.computed, "teacher_cache_memory_mb": self.memory_bytes >> 20,
                "teacher_cache_disk_mb": self.disk_bytes >> 20}
