"""The robustness catalogue's shared parts: a lab that builds tiny models, data and recipes in ``tmp_path``, the
CLI replayed in-process, the "one clear error" check, and snapshots for "nothing was changed" checks.

Every case of the catalogue (``docs/robustness.md``) is one entry of a table in this folder's test modules.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from hf_optim.cli import main

ROWS = "".join(f"good fun film {i},pos\nbad dull plot {i},neg\n" for i in range(12))


@pytest.fixture(scope="session")
def sources(tmp_path_factory):
    """Models built once per session (copied into each case's folder before it is touched)."""
    return _Sources(tmp_path_factory.mktemp("robustness-sources"))


class _Sources:
    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self._built:
            self._built[name] = getattr(self, f"_build_{name.replace('-', '_')}")(self.root / name)
        return self._built[name]

    @staticmethod
    def _build_bert(path: Path) -> Path:
        from hf_optim.testing import save_tiny_bert

        return save_tiny_bert(path)

    @staticmethod
    def _build_llama(path: Path) -> Path:
        from hf_optim.testing import save_tiny_llama

        return save_tiny_llama(path)

    def _build_onnx(self, path: Path) -> Path:
        """The tiny BERT exported by ``hf-optim export`` (torch backend, no optimization or quantization)."""
        argv = ["export", str(self.get("bert")), "-o", str(path), "--backend", "torch", "--optimization", "none",
                "--quantization", "none", "--task", "movie-sentiment", "--validation-samples", "16", "-q"]
        assert main(argv) == 0
        return path


class Lab:
    """One case's folder: copies of the tiny models, data files and recipes, all under ``root``."""

    def __init__(self, root: Path, sources: _Sources):
        self.root = root
        self._sources = sources

    def model(self, kind: str = "bert", name: str | None = None) -> Path:
        """A private copy of a tiny model (``bert``, ``llama`` or ``onnx``) that the case may tamper with."""
        dst = self.root / (name or kind)
        shutil.copytree(self._sources.get(kind), dst)
        return dst

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def csv(self, name: str = "data.csv", rows: str = ROWS, header: str = "text,label") -> Path:
        return self.write(name, f"{header}\n{rows}")

    def recipe(self, data: dict | str, name: str = "r.yaml") -> Path:
        import yaml

        return self.write(name, data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def lab(tmp_path, sources):
    root = tmp_path / "lab"
    root.mkdir()
    return Lab(root, sources)


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run ``hf-optim ARGV`` in this process: ``(exit code, stdout, stderr)``; argparse's exit counts as a code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str, words: tuple[str, ...] | list[str]) -> str:
    """The single ``error:`` line of ``err`` (no traceback, bounded length), holding every word of ``words``."""
    import re

    lines = [line for line in err.splitlines() if re.match(r"(hf-optim[\w ]*: )?error:", line)]  # argparse's too
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines[0]) < 1500, lines[0][:3000]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256 or "dir" or "-> target"}`` of everything under ``root`` (links not followed)."""
    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            state[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


@dataclass(frozen=True)
class CliCase:
    """A command that must fail clearly: ``build(lab)`` makes the inputs and returns the argv; the command exits
    with ``rc`` and prints exactly one ``error:`` line holding ``words``. With ``untouched``, nothing under the
    lab folder changed (no file written, moved or deleted)."""

    id: str
    build: Callable[[Lab], list]
    words: tuple[str, ...]
    rc: int = 2
    untouched: bool = True

    def replay(self, lab: Lab, capsys) -> str:
        argv = self.build(lab)
        before = snapshot(lab.root)
        rc, out, err = cli(capsys, argv)
        assert rc == self.rc, (rc, out[-2000:], err[-3000:])
        line = one_error(err, self.words)
        if self.untouched:
            assert snapshot(lab.root) == before
        return line


@dataclass(frozen=True)
class ApiCase:
    """A public API call that must raise ``raises`` with a message matching every regex of ``match``."""

    id: str
    call: Callable[[Lab], Callable[[], Any]]
    raises: type | tuple
    match: tuple[str, ...] = ()

    def replay(self, lab: Lab) -> BaseException:
        import re

        fn = self.call(lab)
        with pytest.raises(self.raises) as info:
            fn()
        for pattern in self.match:
            assert re.search(pattern, str(info.value)), (pattern, str(info.value)[:2000])
        assert len(str(info.value)) < 2000
        return info.value


def ids(cases) -> list:
    return [pytest.param(c, id=c.id) for c in cases]


def failing_writes(monkeypatch, err: int = errno.ENOSPC, under: Path | None = None):
    """Make every write through ``os.fdopen``/``open``/``Path.write_*`` and every ``os.replace`` under ``under``
    fail with ``OSError(err)``: a full disk (ENOSPC) or a read-only file system (EROFS) without needing one."""
    import builtins
    import io

    def hit(path) -> bool:
        try:
            return under is None or Path(os.fspath(path)).resolve().is_relative_to(under.resolve())
        except TypeError:
            return under is None
    message = os.strerror(err)

    class _Full(io.RawIOBase):
        """A writable file whose writes fail; it keeps the real one open (locks and ``fileno`` still work)."""

        def __init__(self, real):
            self.name, self._real = real.name, real

        def writable(self):
            return True

        def fileno(self):
            return self._real.fileno()

        def close(self):
            self._real.close()
            super().close()

        def write(self, b):
            raise OSError(err, message, str(self.name))

    real_open, real_fdopen, real_replace = builtins.open, os.fdopen, os.replace

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if any(m in mode for m in "wax+") and not isinstance(file, int) and hit(file):
            raw = _Full(f)
            return io.BufferedWriter(raw) if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw))
        return f

    def fake_fdopen(fd, mode="r", *a, **kw):
        f = real_fdopen(fd, mode, *a, **kw)
        if any(m in mode for m in "wax+") and hit(os.readlink(f"/proc/self/fd/{fd}")):
            raw = _Full(f)
            return io.BufferedWriter(raw) if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw))
        return f

    def fake_replace(src, dst, *a, **kw):
        if hit(dst):
            raise OSError(err, message, os.fspath(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's write_text / write_bytes
    monkeypatch.setattr(os, "fdopen", fake_fdopen)
    monkeypatch.setattr(os, "replace", fake_replace)


def report_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "report.json").read_text()).get("status")
    except OSError:
        return None


def quantized_run(sources: _Sources, root: Path) -> Path:
    """A finished one-stage run (stage ``q``: the tiny BERT, int8 dynamic) in ``root/run``."""
    import yaml

    shutil.copytree(sources.get("bert"), root / "bert")
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [
        {"name": "q", "kind": "quantize", "model": "bert", "scheme": "int8_dynamic"}]}))
    assert main(["run", str(recipe), "-o", str(root / "run"), "-q"]) == 0
    return root / "run"
