"""finetune + evaluate stages through the runner on a tiny model and a learnable toy task."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from hf_optim.finetune import training_arguments
from hf_optim.recipe import Recipe
from hf_optim.runner import run


def _toy_csv(path, n=200):
    good, bad = ["good", "great", "best", "love", "fun"], ["bad", "awful", "worst", "hate", "dull"]
    rows = ["sentence,sentiment"]
    for i in range(n):
        word = (good if i % 2 else bad)[i % 5]
        rows.append(f"the film was {word} and {['the', 'a', 'so', 'very'][i % 4]} story,{'pos' if i % 2 else 'neg'}")
    path.write_text("\n".join(rows) + "\n")


def test_finetune_learns_and_saves_loadable_classifier(tmp_path, tiny_bert_dir, capsys):
    _toy_csv(tmp_path / "toy.csv")
    recipe = Recipe.from_dict({
        "name": "toy", "seed": 1,
        "task": {"name": "toy", "dataset": "toy.csv", "text_column": "sentence", "label_column": "sentiment",
                 "test_size": 40},
        "stages": [
            {"name": "ft", "kind": "finetune", "model": str(tiny_bert_dir), "epochs": 6, "learning_rate": 3e-3,
             "batch_size": 16, "warmup_ratio": 0.0},
            {"name": "ev", "kind": "evaluate", "model": "ft", "latency_samples": 5, "throughput_samples": 16,
             "measure_memory": False},
        ]}, base_dir=tmp_path)
    result = run(recipe, tmp_path / "out", progress=False)
    ft, ev = (s["metrics"] for s in result.report["stages"])
    assert ft["train_examples"] == 128 and ft["steps"] == 48  # 200 - 40 test - 32 validation
    assert ft["validation_accuracy"] >= 0.9
    assert ev["accuracy"] >= 0.9 and ev["examples"] == 40
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "ft")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    (row,) = result.report["artifacts"]
    assert row["artifact"] == "ft" and row["value"] == ev["accuracy"] and row["latency_ms_p50"] > 0
    assert row["size_mb"] == ev["size"]["weights_mb"]
    metrics = json.loads((tmp_path / "out" / "ev" / "metrics.json").read_text())
    assert metrics["accuracy"] == ev["accuracy"] and metrics["model_stage"] == "ft"
    log = result.log_file.read_text()
    assert "[ft] step" in log and "loss=" in log  # Trainer's logs reach the run log
    # the Trainer's scratch directory never ends up in the artifact
    assert not [p for p in (tmp_path / "out" / "ft").iterdir() if p.name.startswith(("trainer-", "checkpoint"))]
    assert "'loss'" not in capsys.readouterr().out  # without progress bars Trainer prints no log dicts either
    # the artifact records its task: `hf-optim eval` without --task measures the same thing the stage did
    from hf_optim.cli import main

    assert main(["eval", str(tmp_path / "out" / "ft"), "--latency-samples", "2", "--throughput-samples", "8",
                 "--no-memory", "--no-progress"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert (cli["task"], cli["examples"], cli["accuracy"]) == ("toy", 40, ev["accuracy"])


def test_training_arguments_drop_what_this_release_lacks(tmp_path):
    args = training_arguments(str(tmp_path), learning_rate=1e-3, no_such_argument_anywhere=1)
    assert args.learning_rate == 1e-3 and args.report_to == []
    with pytest.raises(AttributeError):
        args.no_such_argument_anywhere


def test_only_the_task_head_may_be_reinitialised(tmp_path):
    import json

    from transformers import AutoModelForSequenceClassification

    from hf_optim.errors import DataError
    from hf_optim.finetune import check_only_head_reinitialised
    from hf_optim.testing import save_tiny_bert

    def load(path, n):
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=n, ignore_mismatched_sizes=True,
                                                                  output_loading_info=True)

    five = save_tiny_bert(tmp_path / "five", num_labels=5)
    model, info = load(five, 2)  # another label count: a new head, the body kept
    check_only_head_reinitialised(model, info, five)
    # a pruned checkpoint that lost its per-layer shapes: the body no longer fits and would be re-initialised
    cfg = json.loads((five / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (five / "config.json").write_text(json.dumps(cfg))
    model, info = load(five, 2)
    with pytest.raises(DataError, match=r"weight\(s\) of the model body do not fit.*intermediate.*initialised at random"):
        check_only_head_reinitialised(model, info, five)
