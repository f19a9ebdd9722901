"""Process settings for fast CPU inference.

:func:`tune_allocator`: a forward pass of a transformer allocates and frees many activation buffers of a few MB
(MiniLM at batch 32: 10 MB for each FFN activation). glibc serves blocks above its mmap threshold with fresh
``mmap`` pages and gives them back on ``free``, so every such buffer pays page faults on first touch, in every
forward. Raising the mmap and trim thresholds keeps those blocks in the heap for reuse. On the 2-core
development machine (MiniLM-L6 fine-tuned, batch 32, one thread) this took the FP32 forward from 448 to 415 ms
and the dynamic-INT8 one from 189 to 157 ms (``scripts/bench_quant_minilm.py --allocator tuned|default``).

The cost is memory: up to ``trim_threshold`` bytes of freed heap stay mapped to the process. The setting is
process-wide, so it is opt-in for library users; ``hf-optim`` (the CLI) and the benchmark scripts apply it
(``HF_OPTIM_ALLOCATOR=default`` turns it off). Only glibc (Linux) is tuned; elsewhere it is a no-op.

:func:`cpu_info`: the CPU model, its cores and the instruction sets the int8/bf16 kernels depend on, recorded with
every benchmark (speed ratios differ between, e.g., AVX2-only and AVX-512 VNNI machines).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from functools import lru_cache

__all__ = ["tune_allocator", "allocator_state", "cpu_info", "cpu_flags"]

logger = logging.getLogger("hf_optim")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_state: dict[str, object] = {"tuned": False}


def _libc():
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20, top_pad: int = 64 << 20) -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS (glibc ``mallopt``).

    Args:
        mmap_threshold (`int`, *optional*, defaults to 32 MiB): blocks below this come from the heap (glibc's
            largest allowed value on 64-bit).
        trim_threshold (`int`, *optional*, defaults to 256 MiB): free heap kept before it is returned to the OS.
        top_pad (`int`, *optional*, defaults to 64 MiB): extra heap requested on each growth.

    Returns:
        `bool`: whether the settings were applied (False where the C library is not glibc, or when the
        ``HF_OPTIM_ALLOCATOR`` environment variable is ``default``).
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold), ("top_pad", top_pad)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise ValueError(f"{name} = {value!r}: expected a byte count in [0, 2 GiB)")
    if mmap_threshold > 32 << 20:
        raise ValueError(f"mmap_threshold = {mmap_threshold}: glibc accepts at most 32 MiB on 64-bit systems")
    if os.environ.get("HF_OPTIM_ALLOCATOR", "").lower() == "default":
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    applied = {}
    for name, param, value in (("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold),
                               ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold), ("top_pad", _M_TOP_PAD, top_pad)):
        if libc.mallopt(param, value) == 1:
            applied[name] = value
    ok = len(applied) == 3
    _state.update(tuned=ok, **applied)  # what is in effect, even if only part of it was accepted
    if ok:
        logger.debug("glibc allocator tuned: mmap threshold %d, trim threshold %d", mmap_threshold, trim_threshold)
    return ok


def allocator_state() -> dict[str, object]:
    """``{"tuned": bool, ...the values set}``: what :func:`tune_allocator` applied in this process."""
    return dict(_state)


# Instruction sets that change which kernels run and how fast: AVX2 (baseline int8 path), AVX-512, VNNI (int8 dot
# products in 32 bits), AMX (tile int8/bf16 matmuls).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16")


@lru_cache(maxsize=1)
def _cpuinfo_first_processor() -> dict[str, str]:
    """``key: value`` pairs of the first processor block of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(1 << 16)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    return frozenset(_cpuinfo_first_processor().get("flags", "").split())


def cpu_info() -> dict[str, object]:
    """``{"model", "machine", "logical_cores", "available_cores", "flags": {flag: bool}}`` of this machine.

    ``available_cores`` is what this process may run on (its affinity mask), which on a container can be less
    than ``logical_cores``; ``flags`` lists :data:`KERNEL_FLAGS`, each present or not.
    """
    info = _cpuinfo_first_processor()
    flags = cpu_flags()
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count()
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "machine": platform.machine(), "logical_cores": os.cpu_count(), "available_cores": available,
            "flags": {flag: flag in flags for flag in KERNEL_FLAGS}}
