"""Run code in a fresh interpreter that cannot import hf_optim: what a reader without hf_optim has."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

# appended to the code: the proof that nothing on the way imported hf_optim
_CHECK = "\nimport sys as _sys\nassert 'hf_optim' not in _sys.modules, 'hf_optim was imported'\n"


def run_without_hf_optim(code: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` with ``args`` in ``python -I -S`` (``PYTHONNOUSERSITE=1``) whose ``sys.path`` is the standard
    library and site-packages only: no ``.pth`` files, so the editable hf_optim install is invisible, and no
    worktree or checkout of it. Fails the test when it exits non-zero or has imported hf_optim."""
    paths = [p for p in sys.path if p.startswith(sysconfig.get_paths()["stdlib"])] + site.getsitepackages()
    paths = [p for p in paths if "wt-" not in p and not p.rstrip("/").endswith("work/main")]
    head = (f"import sys; sys.path[:] = {paths!r}\n"
            "import importlib.util\nassert importlib.util.find_spec('hf_optim') is None, 'hf_optim is importable'\n")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", head + code + _CHECK, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
