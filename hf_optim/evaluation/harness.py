"""One result format and one timing loop for every benchmark in ``scripts/``.

A result file says how to run it again and what it ran on, next to what it measured::

    {"schema": 1, "created": "2026-12-04T12:00:00+00:00",
     "command": "python scripts/bench_inference.py --threads 2 -o scripts/results/bench_inference.json",
     "cwd": ".", "git_commit": "<40 hex>", "dirty": false, "dirty_files": [],
     "versions": {"python": ..., "hf_optim": ..., "torch": ..., "transformers": ..., "onnxruntime": ..., ...},
     "cpu": {"model": ..., "logical_cores": 2, "available_cores": 2, "flags": {"avx2": true, ...}},
     "threads": {"requested": 2, "torch": 2, "torch_interop": 1, "env": {"OMP_NUM_THREADS": null, ...}},
     "args": {...the parsed command line...}, "rows": {...one entry per measured variant...},
     "elapsed_s": ..., "load_average": {"start": [...], "end": [...]}, ...the script's own keys}

``command`` is the exact argv, quoted for a POSIX shell, to be run from ``cwd`` (relative to the repository
root); ``git_commit`` and ``dirty`` come from ``git`` run in the repository that holds the imported
``hf_optim`` package, not from the current directory (files under ``scripts/results/`` do not count as dirty,
so regenerating one result does not mark the next). :meth:`BenchRun.write` writes atomically (a temporary file
in the target folder, then a rename) to the path the caller chose, never to the current directory.

Timing: :func:`interleaved` calls every variant once per round, rotating the order each round, so load from
other processes on a shared machine slows every variant alike; :func:`summarize` reports the median over rounds.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

__all__ = ["SCHEMA_VERSION", "REQUIRED_FIELDS", "BenchRun", "command_line", "git_state", "package_versions",
           "thread_settings", "write_result", "check_result", "interleaved", "timed", "summarize"]

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("schema", "created", "command", "git_commit", "dirty", "versions", "cpu", "threads", "args",
                   "rows")
VERSION_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "onnx", "onnxruntime", "optimum", "optimum-onnx")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_OPTIM_ALLOCATOR")
RESULTS_DIR = "scripts/results"

T = TypeVar("T")


def command_line(args: Sequence[str] | None = None, script: str | None = None,
                 interpreter: str | None = "python") -> str:
    """The command that ran, as one line a POSIX shell runs again: ``python SCRIPT ARGS...``.

    Args:
        args (`Sequence[str]`, *optional*, defaults to ``sys.argv[1:]``): the script's arguments.
        script (`str`, *optional*, defaults to ``sys.argv[0]``): the script as it was named on the command line.
        interpreter (`str`, *optional*, defaults to ``"python"``): what runs ``script``; None when ``script`` is a
            command of its own (``hf-optim``).
    """
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    return shlex.join([*([interpreter] if interpreter else []), str(script or sys.argv[0]), *argv])


def _repo_root() -> Path | None:
    """The git work tree whose top level holds the imported ``hf_optim`` package (None when there is none).

    An installed copy in a virtual environment inside some other repository is not that repository's code, so
    the package must sit directly under the work tree's top level.
    """
    package_dir = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=package_dir, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = Path(out.stdout.strip()).resolve() if out.returncode == 0 and out.stdout.strip() else None
    return root if root is not None and package_dir.parent == root else None


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"git_commit", "dirty", "dirty_files"}`` of ``repo`` (default: the repository of the imported package).

    ``dirty`` is whether tracked files differ from the commit, result files under ``scripts/results/`` left out;
    all three are None outside a git work tree or without ``git``.
    """
    root = Path(repo) if repo is not None else _repo_root()
    unknown = {"git_commit": None, "dirty": None, "dirty_files": None}
    if root is None:
        return unknown

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}")
    if commit is None or status is None:
        return unknown
    files = [line[3:] for line in status.splitlines() if line.strip()]
    return {"git_commit": commit.strip(), "dirty": bool(files), "dirty_files": files[:50]}


def package_versions() -> dict[str, str]:
    """Versions of Python, hf_optim and the libraries a measurement depends on (those installed)."""
    from .. import __version__

    out = {"python": platform.python_version(), "hf_optim": __version__}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def thread_settings(requested: int | None = None) -> dict[str, Any]:
    """``{"requested", "torch", "torch_interop", "env"}``: the threads asked for and those in effect.

    torch's counts are read only when torch is already imported (a script that never used it ran without it).
    """
    out: dict[str, Any] = {"requested": requested}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_num_threads()
        out["torch_interop"] = torch.get_num_interop_threads()
    out["env"] = {name: os.environ.get(name) for name in THREAD_ENV}
    return out


def _cwd_label() -> str:
    """The current directory relative to the repository root ("." at the root), else absolute."""
    cwd, root = Path.cwd().resolve(), _repo_root()
    if root is not None:
        try:
            return cwd.relative_to(root.resolve()).as_posix() or "."
        except ValueError:
            pass
    return str(cwd)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: paths and other objects as strings, numpy scalars and arrays as numbers/lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    items = vars(args) if hasattr(args, "__dict__") and not isinstance(args, Mapping) else dict(args)
    return json.loads(json.dumps(items, default=_jsonable))


class BenchRun:
    """One benchmark invocation: what ran, where and how. Create it first thing; write its rows at the end.

    Args:
        args (`argparse.Namespace` or `dict`, *optional*): the parsed command line, recorded as ``args``.
        argv (`Sequence[str]`, *optional*, defaults to ``sys.argv[1:]``): the arguments, for ``command``.
        script (`str`, *optional*, defaults to ``sys.argv[0]``): the script's path as typed.
        threads (`int`, *optional*): the thread count the script was asked to use (``threads.requested``).
        interpreter (`str`, *optional*, defaults to ``"python"``): see :func:`command_line`.

    Example::

        run = BenchRun(args, threads=args.threads)
        ...
        run.write(args.output, rows, ratios=ratios)   # writes the JSON (atomically), returns the record
    """

    def __init__(self, args: Any = None, argv: Sequence[str] | None = None, script: str | None = None,
                 threads: int | None = None, interpreter: str | None = "python"):
        self.args = _args_dict(args)
        self.command = command_line(argv, script, interpreter)
        self.cwd = _cwd_label()
        self.threads = threads
        self.git = git_state()
        self.started = time.time()
        self.load_start = _loadavg()

    def record(self, rows: Mapping[str, Any] | Sequence[Any], **extra: Any) -> dict[str, Any]:
        """The result as a dict: the schema's fields, ``rows`` (one entry per measured variant, by name or in a
        list), then ``extra`` (which may not replace them)."""
        clash = sorted(set(extra) & {*REQUIRED_FIELDS, "cwd", "dirty_files", "elapsed_s", "load_average"})
        if clash:
            raise ValueError(f"extra keys {clash} would replace fields of the result schema; rename them")
        from ..cpu import cpu_info

        return {"schema": SCHEMA_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": self.command, "cwd": self.cwd, **self.git, "versions": package_versions(),
                "cpu": cpu_info(), "threads": thread_settings(self.threads), "args": self.args,
                "rows": list(rows) if isinstance(rows, (list, tuple)) else dict(rows),
                "elapsed_s": round(time.time() - self.started, 1),
                "load_average": {"start": self.load_start, "end": _loadavg()}, **extra}

    def write(self, path: str | Path | None, rows: Mapping[str, Any] | Sequence[Any], **extra: Any) -> dict[str, Any]:
        """Build :meth:`record` and, when ``path`` is given, write it there atomically; returns the record."""
        result = self.record(rows, **extra)
        if path is not None:
            write_result(path, result)
        return result


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_result(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write ``result`` as JSON to ``path``: a temporary file in the same folder, then a rename, so a reader
    never sees half a file and a crash leaves the old one. Raises ``ValueError`` when a schema field is missing.

    Returns:
        `Path`: the path written.
    """
    from ..data.sources import atomic_write_text

    problems = check_result(result)
    if problems:
        raise ValueError(f"not a benchmark result ({'; '.join(problems)}); build it with BenchRun.record")
    path = Path(path)
    atomic_write_text(path, json.dumps(result, indent=2, default=_jsonable) + "\n")
    return path


def check_result(result: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``result`` as a benchmark result (empty when nothing).

    A file converted from an older format (``"regenerated": false``) may leave what it does not know None but
    must say why in ``note``; a measured one must name its commit, versions, CPU and command.
    """
    problems = [f"missing {f!r}" for f in REQUIRED_FIELDS if f not in result]
    if problems:
        return problems
    if result["schema"] != SCHEMA_VERSION:
        problems.append(f"schema {result['schema']!r}, expected {SCHEMA_VERSION}")
    if not isinstance(result["command"], str) or not result["command"].strip():
        problems.append("command is empty")
    if not isinstance(result["rows"], (dict, list)) or not result["rows"]:
        problems.append("rows is empty")
    if result.get("regenerated") is False:
        if not result.get("note"):
            problems.append("a converted result (regenerated: false) needs a note saying how it was made")
        return problems
    commit = result["git_commit"]
    if not (isinstance(commit, str) and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
        problems.append(f"git_commit {commit!r} is not a commit hash")
    if not isinstance(result["dirty"], bool):
        problems.append(f"dirty {result['dirty']!r} is not a bool")
    versions = result["versions"] or {}
    problems += [f"versions has no {k!r}" for k in ("python", "hf_optim") if k not in versions]
    cpu = result["cpu"] or {}
    if not cpu.get("model") or not isinstance(cpu.get("logical_cores"), int) or "flags" not in cpu:
        problems.append(f"cpu {cpu!r} lacks model, logical_cores or flags")
    if not isinstance(result["threads"], dict):
        problems.append("threads is not a mapping")
    return problems


def interleaved(variants: Mapping[str, Callable[[], T]], rounds: int, warmup: int = 1,
                rotate: bool = True) -> dict[str, list[T]]:
    """Call every variant once per round and collect what each call returns, per variant.

    Args:
        variants (`Mapping[str, Callable[[], T]]`): name -> one measurement (e.g. a :func:`timed` function, or
            one that returns a dict of numbers).
        rounds (`int`): rounds; each variant is called once per round.
        warmup (`int`, *optional*, defaults to 1): untimed calls of each variant first (allocator, kernels,
            thread pools).
        rotate (`bool`, *optional*, defaults to True): start round ``r`` at variant ``r`` so no variant always
            runs first (or right after a particular other one).

    Returns:
        `dict[str, list]`: for each variant, the results of its ``rounds`` calls in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds = {rounds}: expected at least 1")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names) if rotate and names else 0
        for name in names[k:] + names[:k]:
            out[name].append(variants[name]())
    return out


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    """``fn`` as a function returning the seconds one call took (for :func:`interleaved`)."""
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def summarize(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> dict[str, Any]:
    """``{"median", "min", "max", "runs"}`` of ``values``, each multiplied by ``scale`` and rounded."""
    import statistics

    scaled = [v * scale for v in values]
    return {"median": round(statistics.median(scaled), digits), "min": round(min(scaled), digits),
            "max": round(max(scaled), digits), "runs": [round(v, digits) for v in scaled]}
