"""tune_allocator: glibc mallopt settings, opt-out and argument checks."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from hf_optim.cpu import allocator_state, tune_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _run(code: str, **env) -> str:
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env}, check=True)
    return out.stdout.strip()


@pytest.mark.multiprocess
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_applies_in_a_fresh_process_and_can_be_turned_off():
    code = "from hf_optim.cpu import tune_allocator, allocator_state as s; print(tune_allocator(), s()['tuned'])"
    assert _run(code) == "True True"
    assert _run(code, HF_OPTIM_ALLOCATOR="default") == "False False"


@pytest.mark.multiprocess
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_buffers_come_from_the_heap_after_tuning():
    # glibc's mallinfo2().hblks counts blocks served by mmap: an 8 MiB block is one by default, not once tuned
    code = ("import ctypes, ctypes.util; from hf_optim.cpu import tune_allocator; tune_allocator(); "
            "libc = ctypes.CDLL(ctypes.util.find_library('c')); libc.malloc.restype = ctypes.c_void_p; "
            "M = type('M', (ctypes.Structure,), {'_fields_': [(n, ctypes.c_size_t) for n in "
            "('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', "
            "'keepcost')]}); libc.mallinfo2.restype = M; n = libc.mallinfo2().hblks; a = libc.malloc(8 << 20); "
            "print(libc.mallinfo2().hblks - n)")
    assert _run(code) == "0"
    assert _run(code, HF_OPTIM_ALLOCATOR="default") == "1"


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 64 << 20}, {"trim_threshold": -1}, {"top_pad": 1.5}])
def test_bad_values_raise(kwargs):
    with pytest.raises(ValueError):
        tune_allocator(**kwargs)


def test_state_is_a_copy():
    state = allocator_state()
    state["tuned"] = "x"
    assert allocator_state()["tuned"] in (True, False)


def test_cpu_info_names_the_cpu_and_the_kernel_flags():
    from hf_optim.cpu import KERNEL_FLAGS, cpu_flags, cpu_info

    info = cpu_info()
    assert info["model"] and info["logical_cores"] >= 1 and 1 <= info["available_cores"] <= info["logical_cores"]
    assert list(info["flags"]) == list(KERNEL_FLAGS)
    assert {f for f, on in info["flags"].items() if on} == cpu_flags() & set(KERNEL_FLAGS)
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "sse2" in cpu_flags()  # every x86-64 CPU has it: the flags were read
        assert not info["flags"]["avx512_vnni"] or info["flags"]["avx512f"]
