"""Upload models to the Hugging Face Hub with their model cards: ``hf-optim push`` (a run's stage output,
:func:`push_artifact`) and :func:`push_to_hub` (any model hf_optim touched, from the Python API)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import HfOptimError
from .report.card import (CARD_NAME, MARKER, CardConfig, build_model_card, card_is_generated, check_artifact,
                          write_model_card)

__all__ = ["push_artifact", "push_to_hub", "upload_files", "sanitized_json", "check_repo_id", "PushResult",
           "CardConfig"]

logger = logging.getLogger("hf_optim")
# JSON files larger than this (tokenizer.json, weight indexes) hold no local paths: uploaded as they are.
_SANITIZE_MAX_BYTES = 1 << 20


@dataclasses.dataclass
class PushResult:
    """What a push uploaded (or, with ``dry_run``, would upload).

    Attributes:
        repo_id: the target repository. files: ``[(relative path, bytes)]`` in upload order.
        dry_run: nothing was sent. card_written: the model card was generated for this push.
        url: the commit URL (`None` for a dry run).
    """

    repo_id: str
    files: list[tuple[str, int]]
    dry_run: bool
    card_written: bool
    url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def upload_files(path: Path) -> list[tuple[str, int]]:
    """The files a push uploads from ``path``: every regular file inside it, hidden names (``.lock``, temp files)
    and symbolic links (which may point anywhere) excluded. The push sends exactly these files, by name: never
    glob patterns, so a file named ``*`` or ``notes[v2].txt`` is one file like any other."""
    root = path.resolve()
    out = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if any(p.startswith(".") for p in rel.parts) or any(q.is_symlink() for q in [f, *f.parents][:len(rel.parts)]):
            continue
        if f.is_file() and f.resolve().is_relative_to(root):
            out.append((rel.as_posix(), f.stat().st_size))
    return out


def check_repo_id(repo_id) -> str:
    """Return ``repo_id`` when it is a valid Hub model id (``USER/NAME``), else raise :class:`HfOptimError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    # whitespace never belongs in an id; huggingface_hub's check lets a trailing newline through
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")) or \
            any(c.isspace() for c in repo_id):
        raise HfOptimError(f"--repo-id {str(repo_id)[:100]!r} is not a Hub repository id; use USER/NAME or ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HfOptimError(f"--repo-id {repo_id[:100]!r} is not a valid Hub repository id: "
                           f"{str(e).splitlines()[0][:200]}") from None
    return repo_id


def push_artifact(path: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
                  card: bool = True, token: str | None = None, base_model: str | None = None,
                  commit_message: str | None = None) -> PushResult:
    """Upload the artifact directory ``path`` to the Hub model repository ``repo_id``.

    Args:
        path (`str` or `Path`): a finished stage's model directory (it has ``hf_optim_stage.json`` and
            ``config.json``; ``.tmp-*`` directories and evaluate outputs are refused).
        repo_id (`str`): ``user/name`` or ``org/name``; created when missing.
        private (`bool`, *optional*, defaults to `False`): create the repository private.
        dry_run (`bool`, *optional*, defaults to `False`): only list what would be uploaded; writes nothing.
        card (`bool`, *optional*, defaults to `True`): write the model card (``README.md``) into ``path`` first
            when it has none, or only the one a portable export wrote, unchanged (rewritten for ``repo_id``).
        token (`str`, *optional*): Hub token; defaults to ``HF_TOKEN`` / the saved login.
        base_model (`str`, *optional*): ``base_model`` for the card (see :func:`~hf_optim.report.build_model_card`).
        commit_message (`str`, *optional*): defaults to "Upload <artifact> with hf-optim".

    The JSON records inside the directory (``hf_optim_export.json``, the stage marker ...) are uploaded with the
    local absolute paths they hold made relative (see :func:`sanitized_json`); the files on disk stay as they are.
    """
    path = Path(path)
    check_repo_id(repo_id)  # before anything else, dry run included
    check_artifact(path)
    need_card = card and (not (path / CARD_NAME).is_file() or card_is_generated(path))
    if dry_run:
        sources = _sources(path, [(n, s) for n, s in upload_files(path) if not (need_card and n == CARD_NAME)])
        if need_card:
            sources = sorted(sources + [(CARD_NAME, build_model_card(path, repo_id=repo_id,
                                                                     base_model=base_model).encode("utf-8"))])
        return PushResult(repo_id=repo_id, files=_sizes(sources), dry_run=True, card_written=False)

    def prepare() -> list[tuple[str, str | bytes]]:
        if need_card:  # only once the Hub answered: a push that cannot start leaves the directory as it was
            write_model_card(path, repo_id=repo_id, base_model=base_model)
        return _sources(path, upload_files(path))

    sources, url = _commit(repo_id, prepare, private, token, commit_message or f"Upload {path.name} with hf-optim")
    logger.info("pushed %s -> %s", path, url)
    return PushResult(repo_id=repo_id, files=_sizes(sources), dry_run=False, card_written=need_card, url=url)


def push_to_hub(model_or_dir, repo_id: str, *, dry_run: bool = False, card: CardConfig | None = None,
                tokenizer=None, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> PushResult:
    """Upload a model hf_optim touched, with a model card and Hub metadata, to the Hub repository ``repo_id``.

    Works for models made with the Python API (``DistillationTrainer``, ``PruningCallback``,
    ``quantize_model_`` ...) as well as for a run's stage outputs; nothing is written into the model's directory.

    Args:
        model_or_dir (`PreTrainedModel`, `str` or `Path`): a model in memory (saved with ``save_pretrained`` into a
            temporary directory first) or a saved model directory.
        repo_id (`str`): ``user/name`` or ``org/name``; created when missing.
        dry_run (`bool`, *optional*, defaults to `False`): only list what would be uploaded.
        card (`CardConfig`, *optional*): what the card states (base model, what was done, license, datasets, a
            metric). When given, the generated card replaces a ``README.md`` the directory holds; without it, such
            a ``README.md`` is uploaded as it is (except the card a GGUF / compressed-tensors export wrote, unchanged:
            it is written again for ``repo_id``), and a run's stage output gets the card of its run.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): saved next to an in-memory model.
        private (`bool`, *optional*, defaults to `False`): create the repository private.
        token (`str`, *optional*): Hub token; defaults to ``HF_TOKEN`` / the saved login.
        commit_message (`str`, *optional*): defaults to "Upload <name> with hf-optim".

    Returns:
        `PushResult`: the files uploaded (or, for a dry run, that would be), in upload order.
    """
    check_repo_id(repo_id)
    with _model_dir(model_or_dir, tokenizer) as path:
        files = upload_files(path)
        replace = card is not None or card_is_generated(path)
        has_readme = any(name == CARD_NAME for name, _ in files) and not replace
        sources = _sources(path, [(n, s) for n, s in files if not (replace and n == CARD_NAME)])
        card_written = card is not None or not has_readme
        if card_written:
            run = card is None and (path / MARKER).is_file()
            text = build_model_card(path, repo_id=repo_id, card=None if run else card or CardConfig())
            sources = sorted(sources + [(CARD_NAME, text.encode("utf-8"))])
        files = _sizes(sources)  # while a temporary directory still exists
        if dry_run:
            return PushResult(repo_id=repo_id, files=files, dry_run=True, card_written=False)
        name = path.name if isinstance(model_or_dir, (str, os.PathLike)) else repo_id.split("/")[-1]
        _, url = _commit(repo_id, lambda: sources, private, token, commit_message or f"Upload {name} with hf-optim")
    logger.info("pushed %s -> %s", name, url)
    return PushResult(repo_id=repo_id, files=files, dry_run=False, card_written=card_written, url=url)


@contextlib.contextmanager
def _model_dir(model_or_dir, tokenizer) -> Iterator[Path]:
    if isinstance(model_or_dir, (str, os.PathLike)):
        yield Path(model_or_dir)
        return
    if not hasattr(model_or_dir, "save_pretrained"):
        raise HfOptimError(f"push_to_hub takes a model with save_pretrained or a directory, not "
                           f"{type(model_or_dir).__name__}")
    with tempfile.TemporaryDirectory(prefix="hf-optim-push-") as tmp:  # the system temp dir, never the CWD
        model_or_dir.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        yield Path(tmp)


def _commit(repo_id: str, prepare: Callable[[], list[tuple[str, str | bytes]]], private: bool,
            token: str | None, message: str) -> tuple[list[tuple[str, str | bytes]], str]:
    """Create the repository, then upload exactly the ``(path in repo, file path or bytes)`` that ``prepare``
    returns (called once the Hub answered) in one commit; Hub errors become one :class:`HfOptimError`."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        sources = prepare()
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=source) for name, source in sources]
        info = api.create_commit(repo_id=repo_id, operations=operations, repo_type="model", commit_message=message)
    except OfflineModeIsEnabled:
        raise HfOptimError("HF_HUB_OFFLINE is set: unset it to push (or use --dry-run)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN, with write access)" if status in (401, 403) else ""
        raise HfOptimError(f"upload to {repo_id} failed: {str(e).splitlines()[0]}{hint}") from None
    return sources, getattr(info, "commit_url", None) or str(info)


def _sources(path: Path, files: list[tuple[str, int]]) -> list[tuple[str, str | bytes]]:
    """What to upload for each listed file: its path, or a sanitized copy of a JSON record holding local paths."""
    out: list[tuple[str, str | bytes]] = []
    for name, size in files:
        clean = sanitized_json(path / name, path.resolve().parent) \
            if name.endswith(".json") and size <= _SANITIZE_MAX_BYTES else None
        out.append((name, clean if clean is not None else str(path / name)))
    return out


def _sizes(sources: list[tuple[str, str | bytes]]) -> list[tuple[str, int]]:
    return [(name, len(src) if isinstance(src, bytes) else os.path.getsize(src)) for name, src in sources]


def sanitized_json(file: Path, base: Path) -> bytes | None:
    """``file``'s JSON with every absolute local path made relative to ``base`` (a run directory), or reduced to
    its last part when outside it, and the home directory written ``~``; `None` when nothing changes (or the file
    is not JSON), so the file itself is uploaded."""
    try:
        raw = file.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    base_text, home = str(base), str(Path.home())

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if not isinstance(value, str) or os.sep not in value:
            return value
        if os.path.isabs(value) and "\n" not in value:
            p = Path(value)
            return p.relative_to(base).as_posix() if p.is_relative_to(base) and p != base else p.name
        if base_text in value:  # a path inside a message
            value = value.replace(base_text + os.sep, "").replace(base_text, ".")
        return value.replace(home, "~") if len(home) > 1 else value

    cleaned = clean(data)
    if cleaned == data:
        return None
    return json.dumps(cleaned, indent=2).encode("utf-8")
