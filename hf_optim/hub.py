"""``hf-optim push``: upload a finished artifact directory (with its model card) to the Hugging Face Hub."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .errors import HfOptimError
from .report.card import CARD_NAME, build_model_card, check_artifact, write_model_card

__all__ = ["push_artifact", "upload_files", "check_repo_id", "PushResult"]

logger = logging.getLogger("hf_optim")


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

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
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
            when it has none.
        token (`str`, *optional*): Hub token; defaults to ``HF_TOKEN`` / the saved login.
        base_model (`str`, *optional*): ``base_model`` for the card (see :func:`~hf_optim.report.build_model_card`).
        commit_message (`str`, *optional*): defaults to "Upload <artifact> with hf-optim".
    """
    path = Path(path)
    check_repo_id(repo_id)  # before anything else, dry run included
    check_artifact(path)
    need_card = card and not (path / CARD_NAME).is_file()
    files = upload_files(path)
    if dry_run:
        if need_card:
            size = len(build_model_card(path, repo_id=repo_id, base_model=base_model).encode("utf-8"))
            files = sorted(files + [(CARD_NAME, size)])
        return PushResult(repo_id=repo_id, files=files, dry_run=True, card_written=False)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if need_card:  # only once the Hub answered: a push that cannot start leaves the directory as it was
            write_model_card(path, repo_id=repo_id, base_model=base_model)
            files = upload_files(path)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path / name)) for name, _ in files]
        info = api.create_commit(repo_id=repo_id, operations=operations, repo_type="model",
                                 commit_message=commit_message or f"Upload {path.name} with hf-optim")
    except OfflineModeIsEnabled:
        raise HfOptimError("HF_HUB_OFFLINE is set: unset it to push (or use --dry-run)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN, with write access)" if status in (401, 403) else ""
        raise HfOptimError(f"upload to {repo_id} failed: {str(e).splitlines()[0]}{hint}") from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s -> %s", path, url)
    return PushResult(repo_id=repo_id, files=files, dry_run=False, card_written=need_card, url=url)
