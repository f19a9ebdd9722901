"""PruningCallback inside a real Trainer on a tiny BERT: masks, N:M, schedules, resume, gradient importance."""

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer

from hf_optim.finetune import training_arguments
from hf_optim.prune import PruningCallback
from hf_optim.prune.structure import find_unit_groups, prune_structured_, pruned_units
from hf_optim.testing import tiny_bert, tiny_bert_tokenizer

WORDS = "the movie was good bad great awful fun dull and but not very".split()


def _dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = tiny_bert_tokenizer()
    texts, labels = [], []
    for _ in range(n):
        idx = torch.randint(len(WORDS), (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        words = [WORDS[i] for i in idx]
        texts.append(" ".join(words))
        labels.append(int("good" in words or "great" in words))
    ds = Dataset.from_dict({"text": texts, "label": labels})
    return tok, ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])


def _train(tmp_path, callback, max_steps=12, model=None, resume=None, save_steps=None, lr=5e-3):
    tok, ds = _dataset()
    model = model if model is not None else tiny_bert(seed=1)
    extra = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}
    args = training_arguments(str(tmp_path / "trainer"), per_device_train_batch_size=8, max_steps=max_steps,
                              learning_rate=lr, logging_steps=2, seed=0, disable_tqdm=True,
                              save_safetensors=True, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n
            and "pooler" not in n}


def test_unstructured_masks_survive_optimizer_steps(tmp_path):
    cb = PruningCallback(granularity="unstructured", sparsity=0.5, schedule="oneshot", start_step=0)
    trainer = _train(tmp_path, cb)
    for name, lin in _linears(trainer.model).items():
        zeros = int((lin.weight == 0).sum())
        # exactly half of every targeted layer, still zero after 12 optimizer steps at a high learning rate
        assert zeros == lin.weight.numel() // 2, name
        assert torch.equal(lin.weight != 0, cb.pruner.masks[name].to(lin.weight.device))
    assert cb.pruner.stats()["sparsity"] == pytest.approx(0.5)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["sparsity"] == pytest.approx(0.5) for h in logged)


def test_nm_pattern_holds_exactly(tmp_path):
    cb = PruningCallback(granularity="nm", n=2, m=4, start_step=3)
    trainer = _train(tmp_path, cb)
    for name, lin in _linears(trainer.model).items():
        w = lin.weight.detach()
        nonzero = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert int(nonzero.max()) <= 2 and int((nonzero == 2).sum()) == nonzero.numel(), name
    assert [h["step"] for h in cb.history] == [3]


def test_nm_rejects_layers_not_divisible_by_m(tmp_path):
    cb = PruningCallback(granularity="nm", n=2, m=5)
    with pytest.raises(ValueError, match="not a multiple of m=5"):
        _train(tmp_path, cb, max_steps=1)


def test_cubic_schedule_drives_the_masks(tmp_path):
    cb = PruningCallback(granularity="unstructured", sparsity=0.6, schedule="cubic", start_step=2, end_step=10,
                         frequency=2)
    _train(tmp_path, cb, max_steps=12)
    assert [h["step"] for h in cb.history] == [2, 4, 6, 8, 10]
    for h in cb.history:
        expected = 0.6 - 0.6 * (1 - (h["step"] - 2) / 8) ** 3
        assert h["sparsity"] == pytest.approx(expected, abs=0.01)
    sparsities = [h["sparsity"] for h in cb.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.6, abs=0.005)


def test_targets_override_sparsity_per_module_type(tmp_path):
    cb = PruningCallback(granularity="unstructured", sparsity=0.2, targets={r"intermediate\.dense": 0.75},
                         schedule="oneshot", start_step=0)
    trainer = _train(tmp_path, cb, max_steps=2)
    for name, lin in _linears(trainer.model).items():
        expected = 0.75 if "intermediate" in name else 0.2
        assert float((lin.weight == 0).float().mean()) == pytest.approx(expected, abs=1 / lin.weight.numel()), name


def test_global_ranking_differs_per_layer_but_hits_the_total(tmp_path):
    cb = PruningCallback(granularity="unstructured", sparsity=0.5, ranking="global", schedule="oneshot",
                         start_step=0)
    trainer = _train(tmp_path, cb, max_steps=1)
    lins = _linears(trainer.model)
    zeros = sum(int((m.weight == 0).sum()) for m in lins.values())
    total = sum(m.weight.numel() for m in lins.values())
    assert zeros / total == pytest.approx(0.5, abs=0.001)
    per_layer = {round(float((m.weight == 0).float().mean()), 3) for m in lins.values()}
    assert len(per_layer) > 1


@pytest.mark.parametrize("importance", ["taylor", "movement"])
def test_gradient_importance_accumulates_and_prunes_structures(tmp_path, importance):
    cb = PruningCallback(granularity="structured", heads=0.5, ffn=0.5, importance=importance, start_step=4,
                         end_step=8, frequency=2, schedule="linear")
    trainer = _train(tmp_path, cb, max_steps=10)
    assert all(float(s.abs().sum()) > 0 for s in cb.pruner.scores.values())
    pruned = pruned_units(trainer.model)
    # 2 of 4 heads and 32 of 64 neurons in each of the 2 layers
    assert {k: len(v) for k, v in pruned["heads"].items()} == {0: 2, 1: 2}
    assert {k: len(v) for k, v in pruned["ffn"].items()} == {0: 32, 1: 32}
    assert cb.pruner.stats()["heads_pruned"] == 0.5 and cb.pruner.stats()["ffn_pruned"] == 0.5


def test_global_structured_ranking_keeps_a_head_per_layer(tmp_path):
    cb = PruningCallback(granularity="structured", heads=0.74, ranking="global", schedule="oneshot", start_step=0)
    trainer = _train(tmp_path, cb, max_steps=1)
    pruned = pruned_units(trainer.model)
    assert sum(len(v) for v in pruned["heads"].values()) == 5  # floor(0.74 * 8)
    assert all(len(pruned["heads"].get(layer, [])) <= 3 for layer in (0, 1))


def test_resume_from_checkpoint_continues_the_schedule(tmp_path):
    def config():
        return dict(granularity="unstructured", sparsity=0.6, schedule="linear", start_step=2, end_step=10,
                    frequency=2, importance="taylor")

    full = PruningCallback(**config())
    t_full = _train(tmp_path / "full", full, max_steps=12, save_steps=6)
    # a second run stopped after step 6 (its checkpoint) and resumed with a fresh callback
    resumed = PruningCallback(**config())
    ckpt = tmp_path / "full" / "trainer" / "checkpoint-6"
    assert (ckpt / "hf_optim_pruning.safetensors").is_file()
    t_res = _train(tmp_path / "full", resumed, max_steps=12, resume=str(ckpt), model=tiny_bert(seed=1))
    assert [h["step"] for h in resumed.history] == [8, 10]
    assert [h["sparsity"] for h in resumed.history] == [h["sparsity"] for h in full.history if h["step"] > 6]
    for name, lin in _linears(t_full.model).items():
        other = dict(t_res.model.named_modules())[name]
        assert torch.equal(lin.weight == 0, other.weight == 0), name
    state = full.state()
    assert state["args"]["config"]["sparsity"] == 0.6 and len(state["attributes"]["history"]) == 5


def test_finalize_removes_what_was_masked_with_identical_outputs(tmp_path):
    cb = PruningCallback(granularity="structured", heads=0.5, ffn=0.25, schedule="oneshot", start_step=0)
    trainer = _train(tmp_path, cb, max_steps=4)
    model = trainer.model.eval()
    ids = torch.randint(5, 60, (3, 11))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    remaining = cb.finalize(model)
    assert remaining == {"heads": {0: 2, 1: 2}, "ffn": {0: 48, 1: 48}}
    with torch.no_grad():
        physical = model(input_ids=ids).logits
    torch.testing.assert_close(physical, masked, rtol=0, atol=1e-6)
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    assert model.bert.encoder.layer[1].attention.self.query.weight.shape == (16, 32)


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="supports BERT-family"):
        find_unit_groups(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model = tiny_bert()
    with pytest.raises(ValueError, match="keep at least one"):
        prune_structured_(model, heads={0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="has 4 heads units"):
        prune_structured_(model, heads={0: [7]})
    with pytest.raises(ValueError, match="names layer"):
        prune_structured_(model, ffn={5: [0]})


def test_finalize_on_train_end_lets_save_model_write_the_small_model(tmp_path):
    import hf_optim  # noqa: F401  from_pretrained restores the pruned shapes
    from transformers import AutoModelForSequenceClassification

    cb = PruningCallback(granularity="structured", heads=0.5, ffn=0.25, schedule="oneshot", start_step=0,
                         finalize_on_train_end=True)
    assert cb.state()["args"]["finalize_on_train_end"] is True  # a resumed run keeps the setting
    trainer = _train(tmp_path, cb, max_steps=4)
    assert trainer.model.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.bert.encoder.layer[1].attention.self.query.weight.shape == (16, 32)
    assert reloaded.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    ids = torch.randint(5, 60, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits,
                                   rtol=0, atol=1e-6)


def test_finalize_on_train_end_leaves_dense_pruning_dense(tmp_path):
    cb = PruningCallback(granularity="unstructured", sparsity=0.5, schedule="oneshot", start_step=0, finalize_on_train_end=True)
    trainer = _train(tmp_path, cb, max_steps=2)
    assert trainer.model.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)
