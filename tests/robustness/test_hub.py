"""``hf-optim push`` edge cases: dry runs send nothing, odd file names are sent as exact files, links and hidden
files never, and a bad repository id is refused before anything (dry run included)."""

from __future__ import annotations

import pytest

from .conftest import CliCase, cli, ids, one_error, snapshot


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi without the network: records what it was asked to do."""
    from huggingface_hub import HfApi

    calls: dict = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = repo_id
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kw):
        calls["files"] = sorted(op.path_in_repo for op in operations)

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Info()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False, raising=False)
    return calls


@pytest.fixture(scope="module")
def artifact_src(sources, tmp_path_factory):
    """A finished stage output (the tiny BERT quantized by a one-stage run)."""
    from .conftest import quantized_run

    return quantized_run(sources, tmp_path_factory.mktemp("hub")) / "q"


def _artifact(lab, src):
    import shutil

    return shutil.copytree(src, lab.root / "q", symlinks=True)


BAD_IDS = ["../etc", "me/..", "me/x y", "me/" + "x" * 200, "a/b/c", "no-namespace", "", "me/.hidden", "me/x\n"]


@pytest.mark.parametrize("repo_id", BAD_IDS)
def test_a_bad_repo_id_is_refused_before_anything(repo_id, lab, artifact_src, fake_hub, capsys):
    artifact = _artifact(lab, artifact_src)
    before = snapshot(lab.root)
    rc, _, err = cli(capsys, ["push", artifact, "--repo-id", repo_id, "--dry-run"])
    assert rc == 2 and "Hub repository id" in one_error(err, ())
    assert fake_hub == {} and snapshot(lab.root) == before


CASES = [
    CliCase("unfinished-tmp-dir", lambda lab: ["push", lab.model("bert", ".tmp-abc-q-x"), "--repo-id", "me/x", "--dry-run"],
            ("unfinished or discarded stage output",)),
    CliCase("missing-dir", lambda lab: ["push", lab.root / "nope", "--repo-id", "me/x", "--dry-run"],
            ("not a directory",)),
    CliCase("a-file", lambda lab: ["push", lab.write("f.txt", "x"), "--repo-id", "me/x", "--dry-run"],
            ("not a directory",)),
]


@pytest.mark.parametrize("case", ids(CASES))
def test_what_is_not_a_finished_artifact_is_refused(case, lab, fake_hub, capsys):
    case.replay(lab, capsys)
    assert fake_hub == {}


def test_a_plain_model_dir_is_pushed_with_a_card_of_its_own(lab, fake_hub, capsys):
    """A model saved from the Python API (no stage marker) goes up with a card saying what the options state;
    nothing is written into it."""
    model = lab.model("bert")
    before = snapshot(lab.root)
    rc, out, _ = cli(capsys, ["push", model, "--repo-id", "me/x", "--dry-run"])
    listed = [line.split()[-1] for line in out.splitlines() if line.startswith("  ")]
    assert rc == 0 and "README.md" in listed and "config.json" in listed
    assert fake_hub == {} and snapshot(lab.root) == before


def test_dry_run_lists_exact_files_and_sends_nothing(lab, artifact_src, fake_hub, capsys):
    artifact = _artifact(lab, artifact_src)
    secret = lab.write("secret.txt", "token")
    (artifact / "*").write_text("a file named star")
    (artifact / "notes[v2].txt").write_text("notes")
    (artifact / "link.txt").symlink_to(secret)
    (artifact / "linked-dir").symlink_to(lab.root)
    (artifact / ".env").write_text("HF_TOKEN=x")
    before = snapshot(lab.root)
    rc, out, _ = cli(capsys, ["push", artifact, "--repo-id", "me/x", "--dry-run"])
    assert rc == 0 and fake_hub == {} and snapshot(lab.root) == before
    listed = [line.split()[-1] for line in out.splitlines() if line.startswith("  ")]
    assert "*" in listed and "notes[v2].txt" in listed and "README.md" in listed
    assert not {"link.txt", ".env", "secret.txt"} & set(listed) and not any("linked-dir" in n for n in listed)
    rc, out, _ = cli(capsys, ["push", artifact, "--repo-id", "me/x"])
    assert rc == 0 and fake_hub["files"] == sorted(listed)


def test_offline_push_says_how_to_fix_it_and_changes_nothing(lab, artifact_src, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    artifact = _artifact(lab, artifact_src)
    before = snapshot(lab.root)
    rc, _, err = cli(capsys, ["push", artifact, "--repo-id", "me/x"])
    assert rc == 2 and "HF_HUB_OFFLINE" in one_error(err, ())
    assert snapshot(lab.root) == before
