"""Model cards parse with huggingface_hub; `push` uploads exactly a folder from_pretrained loads (network replaced)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hf_optim.errors import HfOptimError
from hf_optim.hub import push_artifact, upload_files
from hf_optim.report.card import build_model_card, check_artifact, write_model_card
from hf_optim.report.summary import artifact_table
from hf_optim.runner import MARKER

from .helpers import eval_stage, stage


def _run_with(tmp_path, artifact_writer, kind="quantize", **config):
    """A run dir: teacher (finetune) -> <kind> stage `q` (written by artifact_writer) -> eval-q."""
    run = tmp_path / "run"
    stages = [stage("teacher", "finetune", 100.0, model="builtin:minilm-l6", task="movie-sentiment", epochs=2.0),
              eval_stage("eval-teacher", "teacher", 0.85, 10.0, 100.0, 80.0),
              stage("q", kind, 5.0, model="teacher", **config),
              eval_stage("eval-q", "q", 0.84, 4.0, 300.0, 20.0)]
    artifact = run / "q"
    artifact_writer(artifact)
    (artifact / MARKER).write_text(json.dumps({k: v for k, v in stages[2].items() if k != "status"}))
    (artifact / ".lock").write_text("")  # hidden files are never uploaded
    (run / "report.json").write_text(json.dumps({"recipe": "pipe", "stages": stages, "status": "complete",
                                                 "artifacts": artifact_table(stages)}))
    return artifact


def _quantized_bert(path):
    import hf_optim  # noqa: F401  registers the checkpoint format
    from hf_optim.quantize import QuantizeConfig
    from hf_optim.quantize.apply import quantize_model_
    from hf_optim.testing import save_tiny_bert, tiny_bert

    save_tiny_bert(path)  # tokenizer + fp32 weights, overwritten below
    model = tiny_bert()
    quantize_model_(model, QuantizeConfig(model="tiny-bert", scheme="int8_dynamic"))
    model.save_pretrained(path)


def _onnx_dir(path):
    from hf_optim.testing import save_tiny_bert

    save_tiny_bert(path)
    (path / "model.safetensors").unlink()
    (path / "model.onnx").write_bytes(b"\x08\x07")


def test_card_metadata_parses_and_carries_the_measured_results(tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    path = write_model_card(artifact, repo_id="me/pipe-int8")
    card = ModelCard.load(path)
    meta = metadata_load(path)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # trained (finetune) then quantized: the weights no longer are a quantization of the base model's
    assert meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]  # the embedded MiniLM's card
    assert "datasets" not in meta  # movie-sentiment is a built-in corpus, not a Hub dataset
    # the Hub's Transformers snippet would fail on the hf_optim format: the card carries the loader itself
    assert meta["library_name"] == "hf-optim" and meta["pipeline_tag"] == "text-classification"
    assert {"hf-optim", "quantization", "int8"} <= set(meta["tags"])
    # model-index holds the task metric only; speed is a table in the body
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": 0.84}
    assert {r.dataset_name for r in card.data.eval_results} == {"movie-sentiment"}
    assert meta["model-index"][0]["name"] == "pipe-int8"
    text = card.text
    assert text.lstrip().splitlines()[2].startswith("> **Loading needs hf-optim.**")
    assert "| latency p50 ms (batch 1) | 4.00 | 10.00 |" in text and "| size MB | 20.0 | 80.0 |" in text
    from hf_optim import __version__

    assert f"hf-optim {__version__}" in text
    assert "import hf_optim" in text and 'AutoModelForSequenceClassification.from_pretrained("me/pipe-int8")' in text
    assert "`builtin:minilm-l6` → **teacher** (finetune: epochs=2.0) → **q** (quantize: scheme=int8_dynamic)" in text
    assert "| accuracy | 0.8400 | 0.8500 |" in text  # the artifact next to the baseline
    assert "## Limitations" in text


def test_onnx_card_loads_with_ort_classes(tmp_path):
    from huggingface_hub.repocard import metadata_load

    artifact = _run_with(tmp_path, _onnx_dir, kind="export", optimization="O2", quantization="dynamic")
    path = write_model_card(artifact)
    text = path.read_text()
    assert "from optimum.onnxruntime import ORTModelForSequenceClassification" in text and "import hf_optim" not in text
    meta = metadata_load(path)
    assert meta["library_name"] == "optimum" and {"onnx", "onnxruntime"} <= set(meta["tags"])
    assert {"quantization", "int8"} <= set(meta["tags"])  # export's quantization: dynamic
    assert str(artifact) not in text and "Loading needs hf-optim" not in text


def test_card_without_a_run_report_claims_no_results(tmp_path):
    from huggingface_hub import ModelCard

    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    (artifact.parent / "report.json").unlink()
    card = ModelCard(build_model_card(artifact, base_model="org/base"))
    assert card.data.base_model == "org/base" and card.data.eval_results is None
    assert "Not evaluated" in card.text


def test_incomplete_directories_are_refused(tmp_path):
    from hf_optim.testing import save_tiny_bert

    with pytest.raises(HfOptimError, match="not a directory"):
        check_artifact(tmp_path / "missing")
    tmp_dir = save_tiny_bert(tmp_path / ".tmp-export-abc")
    with pytest.raises(HfOptimError, match="unfinished or discarded stage output"):
        push_artifact(tmp_dir, "me/x", dry_run=True)
    plain = save_tiny_bert(tmp_path / "plain")
    with pytest.raises(HfOptimError, match="no readable hf_optim_stage.json"):
        push_artifact(plain, "me/x", dry_run=True)
    ev = tmp_path / "eval-q"
    ev.mkdir()
    (ev / MARKER).write_text(json.dumps({"kind": "evaluate", "config": {"model": "q"}}))
    with pytest.raises(HfOptimError, match="evaluate stage's metrics.*the stage 'q'"):
        push_artifact(ev, "me/x", dry_run=True)


def test_dry_run_lists_files_and_writes_nothing(tmp_path, fake_hub):
    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    before = sorted(p.name for p in artifact.iterdir())
    result = push_artifact(artifact, "me/pipe-int8", dry_run=True)
    assert fake_hub == {} and sorted(p.name for p in artifact.iterdir()) == before
    names = [n for n, _ in result.files]
    assert "README.md" in names and "model.safetensors" in names and ".lock" not in names
    sizes = dict(result.files)
    assert sizes["model.safetensors"] == (artifact / "model.safetensors").stat().st_size
    assert sizes["README.md"] == len(build_model_card(artifact, repo_id="me/pipe-int8").encode())


def test_push_uploads_exactly_a_folder_from_pretrained_restores(tmp_path, fake_hub):
    import torch
    from transformers import AutoModelForSequenceClassification

    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    result = push_artifact(artifact, "me/pipe-int8", private=True)
    assert fake_hub["create_repo"] == {"repo_id": "me/pipe-int8", "private": True, "exist_ok": True,
                                       "repo_type": "model"}
    up = fake_hub["create_commit"]
    assert up["repo_id"] == "me/pipe-int8" and result.url.endswith("/commit/abc") and result.card_written
    # one upload operation per listed file, from inside the artifact
    sent = list(up["files"])
    assert all(Path(src) == artifact / name for name, src in up["files"].items())
    assert sorted(sent) == sorted(n for n, _ in result.files) == sorted(n for n, _ in upload_files(artifact))
    assert "README.md" in sent and ".lock" not in sent
    hub_copy = tmp_path / "downloaded"
    hub_copy.mkdir()
    for name in sent:
        shutil.copy(artifact / name, hub_copy / name)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    original = AutoModelForSequenceClassification.from_pretrained(artifact).eval()
    restored = AutoModelForSequenceClassification.from_pretrained(hub_copy).eval()
    assert type(restored.bert.encoder.layer[0].attention.self.query) is type(
        original.bert.encoder.layer[0].attention.self.query)
    with torch.no_grad():
        assert torch.equal(original(input_ids=ids).logits, restored(input_ids=ids).logits)


def test_push_sends_exact_files_never_patterns_links_or_hidden_files(tmp_path, fake_hub):
    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (artifact / "*").write_text("a file named star")          # as a pattern it matched hidden files too
    (artifact / "notes[v2].txt").write_text("notes")           # as a pattern it matched nothing
    (artifact / "link.txt").symlink_to(secret)                 # points outside the artifact
    (artifact / "linked-dir").symlink_to(tmp_path)
    (artifact / ".env").write_text("HF_TOKEN=x")
    listed = [n for n, _ in push_artifact(artifact, "me/x", dry_run=True).files]
    assert "*" in listed and "notes[v2].txt" in listed
    assert not {"link.txt", ".env"} & set(listed) and not any(n.startswith("linked-dir") for n in listed)
    result = push_artifact(artifact, "me/x")
    assert sorted(fake_hub["create_commit"]["files"]) == sorted(n for n, _ in result.files) == sorted(listed)


@pytest.mark.parametrize("repo_id", ["../etc", "me/..", "me/x y", "me/" + "x" * 200, "a/b/c", "no-namespace"])
def test_bad_repo_ids_are_refused_before_anything_even_in_a_dry_run(tmp_path, fake_hub, repo_id):
    with pytest.raises(HfOptimError, match="Hub repository id"):
        push_artifact(tmp_path / "missing", repo_id, dry_run=True)
    assert fake_hub == {}


def test_push_errors_are_one_clear_message(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")
    with pytest.raises(HfOptimError, match="not a Hub repository id"):
        push_artifact(artifact, "no-namespace")

    try:  # huggingface_hub >= 1 speaks httpx, older releases requests
        import httpx

        response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    except ImportError:
        import requests

        response = requests.Response()
        response.status_code = 401

    def denied(self, *a, **kw):
        raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)

    monkeypatch.setattr(HfApi, "create_repo", denied)
    with pytest.raises(HfOptimError, match="upload to me/x failed: 401.*hf auth login"):
        push_artifact(artifact, "me/x")
    assert not (artifact / "README.md").exists()  # a push that could not start changed nothing


def test_push_in_offline_mode_says_how_to_fix_it_and_changes_nothing(tmp_path):
    artifact = _run_with(tmp_path, _quantized_bert, scheme="int8_dynamic")  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(HfOptimError, match="HF_HUB_OFFLINE is set: unset it to push"):
        push_artifact(artifact, "me/x")
    assert not (artifact / "README.md").exists()
