"""`hf_optim.hub.push_to_hub`: models made with the Python API get a card and are uploaded exactly (network
replaced); uploaded JSON records hold no local absolute path while the files on disk stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hf_optim.hub import push_artifact, push_to_hub, upload_files
from hf_optim.report.card_meta import CardConfig

from .test_card_hub import _onnx_dir, _run_with


def sent_files(fake_hub) -> dict[str, bytes]:
    return fake_hub["create_commit"]["contents"]


def _distilled_and_pruned(tmp_path):
    """A tiny student distilled from a tiny teacher while PruningCallback removes heads and neurons."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from hf_optim.distill import DistillConfig, DistillationTrainer
    from hf_optim.finetune import training_arguments
    from hf_optim.prune import PruningCallback
    from hf_optim.testing import tiny_bert, tiny_bert_tokenizer

    tok = tiny_bert_tokenizer()
    words = "the movie was good bad great awful fun dull".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(3 + i % 4)) for i in range(32)]
    ds = Dataset.from_dict({"text": texts, "label": [int("good" in t or "great" in t) for t in texts]})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    args = training_arguments(str(tmp_path / "trainer"), per_device_train_batch_size=8, max_steps=3,
                              learning_rate=5e-3, seed=0, disable_tqdm=True, save_strategy="no")
    trainer = DistillationTrainer(
        model=tiny_bert(seed=1), teacher_model=tiny_bert(seed=2), distill_config=DistillConfig(alpha=0.5),
        args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
        callbacks=[PruningCallback(granularity="structured", heads=0.5, ffn=0.25, schedule="oneshot", start_step=0,
                                   finalize_on_train_end=True)])
    trainer.train()
    return trainer.model.eval(), tok


def test_a_python_api_model_is_carded_and_pushed_exactly(tmp_path, fake_hub):
    import hf_optim  # noqa: F401  from_pretrained restores the pruned shapes
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    model, tok = _distilled_and_pruned(tmp_path)
    card = CardConfig(base_model="builtin:minilm-l6", methods=["distill"], task="movie-sentiment",
                      metric="accuracy", metric_value=0.81)
    dry = push_to_hub(model, "me/tiny-small", dry_run=True, tokenizer=tok, card=card)
    assert dry.dry_run and fake_hub == {}
    result = push_to_hub(model, "me/tiny-small", tokenizer=tok, card=card, private=True)
    assert fake_hub["create_repo"] == {"repo_id": "me/tiny-small", "private": True, "exist_ok": True, "repo_type": "model"}
    assert result.url.endswith("/commit/abc") and result.card_written
    # exactly what save_pretrained writes, plus the card; sizes as listed, the dry run listing the same
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    expected = sorted([n for n, _ in upload_files(tmp_path / "saved")] + ["README.md"])
    assert sorted(sent_files(fake_hub)) == [n for n, _ in result.files] == [n for n, _ in dry.files] == expected
    assert dict(result.files) == {n: len(b) for n, b in sent_files(fake_hub).items()}

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, data in sent_files(fake_hub).items():
        (downloaded / name).write_bytes(data)
    restored = AutoModelForSequenceClassification.from_pretrained(downloaded).eval()
    assert restored.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-6)

    parsed = ModelCard.load(downloaded / "README.md")
    meta = parsed.data.to_dict()
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["library_name"] == "hf-optim" and {"hf-optim", "distillation", "pruning"} <= set(meta["tags"])
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in parsed.data.eval_results] == [
        ("accuracy", 0.81, "movie-sentiment")]
    assert parsed.text.lstrip().splitlines()[2].startswith("> **Loading needs hf-optim.**")
    assert f"hf-optim {hf_optim.__version__}" in parsed.text and "distill → prune" in parsed.text
    assert str(tmp_path) not in (downloaded / "README.md").read_text()


def test_a_saved_directory_keeps_its_readme_unless_a_card_is_given(tmp_path, fake_hub):
    from hf_optim.testing import save_tiny_bert

    path = save_tiny_bert(tmp_path / "plain")
    (path / "README.md").write_text("# mine\n")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    push_to_hub(path, "me/plain")
    assert sent_files(fake_hub)["README.md"] == b"# mine\n"
    push_to_hub(path, "me/plain", card=CardConfig(base_model="org/base", methods=["finetune"],
                                                  datasets=["stanfordnlp/imdb"], license="mit"))
    from huggingface_hub import ModelCard

    meta = ModelCard(sent_files(fake_hub)["README.md"].decode()).data.to_dict()
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["stanfordnlp/imdb"] and meta["license"] == "mit"
    assert meta["library_name"] == "transformers" and "language" not in meta  # unknown for org/base offline
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # nothing written into the directory


def test_uploaded_records_hold_no_local_paths_and_disk_files_are_untouched(tmp_path, fake_hub):
    artifact = _run_with(tmp_path, _onnx_dir, kind="export", optimization="O2", quantization="dynamic")
    record = {"kind": "export", "source": str(artifact.parent / "distill"), "file_name": "model.onnx",
              "config": {"model": str(artifact.parent / "distill"), "task": "movie-sentiment"},
              "note": f"calibrated from {artifact.parent}/distill/data", "user": str(Path.home() / "data.csv")}
    (artifact / "hf_optim_export.json").write_text(json.dumps(record))
    on_disk = (artifact / "hf_optim_export.json").read_bytes()
    dry = push_artifact(artifact, "me/x", dry_run=True)
    push_artifact(artifact, "me/x")
    sent = sent_files(fake_hub)["hf_optim_export.json"]
    assert str(tmp_path).encode() not in sent and dict(dry.files)["hf_optim_export.json"] == len(sent)
    clean = json.loads(sent)
    assert clean["source"] == "distill" and clean["config"]["model"] == "distill"
    assert clean["note"] == "calibrated from distill/data" and clean["user"] == "data.csv"
    assert clean["file_name"] == "model.onnx" and clean["config"]["task"] == "movie-sentiment"
    assert (artifact / "hf_optim_export.json").read_bytes() == on_disk
    # files without local paths are sent as themselves
    assert sent_files(fake_hub)["config.json"] == (artifact / "config.json").read_bytes()
