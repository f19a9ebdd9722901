"""`hf-optim card` and `hf-optim push` on a model directory saved from the Python API (no stage marker): the
options state what the card says (network replaced)."""

from __future__ import annotations

import pytest

from hf_optim.cli import main

CARD = ["--method", "distill", "--method", "quantize", "--license", "mit", "--dataset", "stanfordnlp/imdb",
        "--language", "en", "--metric", "accuracy=0.875", "--task", "stanfordnlp/imdb",
        "--base-model", "google-bert/bert-base-uncased"]


def _card_yaml(text: str) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


def test_card_of_a_saved_model_states_the_options(tiny_bert_dir, capsys):
    assert main(["card", str(tiny_bert_dir), "--stdout", "--repo-id", "me/tiny", *CARD]) == 0
    text = capsys.readouterr().out
    meta = _card_yaml(text)
    assert meta["license"] == "mit" and meta["base_model"] == "google-bert/bert-base-uncased"
    assert meta["datasets"] == ["stanfordnlp/imdb"] and meta["language"] == ["en"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.875
    assert "distill → quantize" in text and not (tiny_bert_dir / "README.md").exists()
    assert main(["card", str(tiny_bert_dir), *CARD]) == 0
    assert _card_yaml((tiny_bert_dir / "README.md").read_text())["license"] == "mit"


def test_push_of_a_saved_model_uploads_it_with_that_card(tiny_bert_dir, fake_hub, capsys):
    assert main(["push", str(tiny_bert_dir), "--repo-id", "me/tiny", "--dry-run", *CARD]) == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert "README.md" in listed and "config.json" in listed and fake_hub == {}
    assert main(["push", str(tiny_bert_dir), "--repo-id", "me/tiny", *CARD]) == 0
    sent = fake_hub["create_commit"]["contents"]
    assert sorted(sent) == sorted(listed) and _card_yaml(sent["README.md"].decode())["license"] == "mit"
    assert not (tiny_bert_dir / "README.md").exists()  # nothing written into the model's directory


@pytest.mark.parametrize("option, message", [(["--metric", "accuracy"], "NAME=VALUE"),
                                             (["--metric", "=0.5"], "needs a name"),
                                             (["--method", "distil"], "--method")])
def test_bad_card_options_are_one_error_line(option, message, tiny_bert_dir, fake_hub, capsys):
    assert main(["push", str(tiny_bert_dir), "--repo-id", "me/tiny", *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0] and fake_hub == {}
