"""DistillationTrainer on tiny models: the loss, the frozen teacher, caching, logging, token-level tasks."""

import pytest
import torch
import torch.nn.functional as F

from hf_optim.distill import DistillConfig, DistillationTrainer
from hf_optim.finetune import training_arguments
from hf_optim.testing import tiny_bert, tiny_llama


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _seq_data(n=16, seq=6, vocab=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _ListDataset([{"input_ids": torch.randint(5, vocab, (seq,), generator=g),
                          "attention_mask": torch.ones(seq, dtype=torch.long),
                          "labels": torch.tensor(i % 2)} for i in range(n)])


def _sharp(model, factor=50.0):
    """Tiny random models output near-uniform logits; scale the head so the losses are far from 0."""
    head = model.get_output_embeddings() if hasattr(model, "lm_head") else model.classifier
    with torch.no_grad():
        head.weight.mul_(factor)
    return model


def _args(tmp_path, **kw):
    base = dict(per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-3, logging_steps=2,
                seed=0, disable_tqdm=True, save_strategy="no")
    base.update(kw)
    return training_arguments(str(tmp_path / "out"), **base)


def _trainer(tmp_path, student, teacher, config=None, data=None, **kw):
    return DistillationTrainer(model=student, teacher_model=teacher, distill_config=config,
                               args=_args(tmp_path, **kw), train_dataset=data if data is not None else _seq_data())


@pytest.mark.parametrize("alpha,temperature", [(1.0, 2.0), (0.5, 4.0), (0.0, 1.0)])
def test_compute_loss_is_alpha_mix_of_hand_kl_and_hard_loss(tmp_path, alpha, temperature):
    student, teacher = _sharp(tiny_bert(seed=1)), _sharp(tiny_bert(seed=2))
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=alpha, temperature=temperature))
    batch = {"input_ids": torch.randint(5, 60, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1])}
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s = student(**batch)
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    kl = F.kl_div(F.log_softmax(s.logits / temperature, -1), F.softmax(t / temperature, -1),
                  reduction="batchmean") * temperature ** 2
    ce = F.cross_entropy(s.logits, batch["labels"])
    assert loss.item() == pytest.approx((alpha * kl + (1 - alpha) * ce).item(), rel=1e-5)


def test_teacher_frozen_unchanged_on_device_and_not_in_checkpoint(tmp_path):
    student, teacher = tiny_bert(seed=1), tiny_bert(seed=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=0.5), save_strategy="steps", save_steps=4,
                       max_steps=4)
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert not trainer.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert next(trainer.teacher.parameters()).device == trainer.args.device
    from safetensors.torch import load_file

    ckpt = tmp_path / "out" / "checkpoint-4"
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) <= set(student.state_dict()) and len(saved) > 0
    assert not any("teacher" in p.name for p in ckpt.rglob("*"))


def test_logged_metrics_show_each_loss(tmp_path):
    student, teacher = tiny_bert(seed=1), tiny_bert(seed=2)
    cfg = DistillConfig(alpha=0.5, hidden_weight=1.0, attention_weight=0.5)
    trainer = _trainer(tmp_path, student, teacher, cfg)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs
    for h in logs:
        assert {"soft_loss", "hard_loss", "hidden_loss", "attention_loss"} <= set(h)
        total = 0.5 * h["soft_loss"] + 0.5 * h["hard_loss"] + h["hidden_loss"] + 0.5 * h["attention_loss"]
        assert h["loss"] == pytest.approx(total, rel=1e-3)


def test_projection_is_trained_when_widths_differ(tmp_path):
    student = tiny_bert(seed=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    teacher = tiny_bert(seed=2)
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=1.0, hidden_weight=1.0))
    assert trainer.distill_projection.weight.shape == (32, 16)
    w0 = trainer.distill_projection.weight.detach().clone()
    trainer.train()
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.distill_projection.weight) in opt_params
    assert not torch.equal(w0, trainer.distill_projection.weight)
    assert not any("distill_projection" in k for k in trainer.model.state_dict())


def test_cache_makes_second_epoch_skip_the_teacher_and_gives_the_same_loss(tmp_path):
    student, teacher = tiny_bert(seed=1), _sharp(tiny_bert(seed=2))
    data = _seq_data(n=16)
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=1.0, cache_teacher_outputs=True),
                       data=data, num_train_epochs=3)
    trainer.train()
    assert trainer.teacher_forward_calls == 4  # 16 examples / batch 4: epoch 1 only
    # a cached batch gives exactly the live loss (rows keyed by content, padding ignored)
    batch = {"input_ids": torch.stack([data[i]["input_ids"] for i in (3, 0)]),
             "attention_mask": torch.ones(2, 6, dtype=torch.long), "labels": torch.tensor([1, 0])}
    student.eval()
    cached = trainer.compute_loss(student, batch)
    assert trainer.teacher_forward_calls == 4
    trainer._cache = None
    live = trainer.compute_loss(student, batch)
    assert cached.item() == pytest.approx(live.item(), rel=1e-4)  # batch-size rounding only


def test_causal_lm_ignores_padding_and_minus_100(tmp_path):
    student, teacher = _sharp(tiny_llama(seed=1), 10.0), _sharp(tiny_llama(seed=2), 10.0)
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=1.0, temperature=1.0, kl_chunk_size=3))
    ids = torch.randint(1, 100, (2, 6))
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = ids.masked_fill(am == 0, -100)
    labels[1, 2] = -100
    batch = {"input_ids": ids, "attention_mask": am, "labels": labels}
    student.eval()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=am).logits
        t = teacher(input_ids=ids, attention_mask=am).logits
    keep = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (1, 3), (1, 4)]  # next token real and labelled
    expected = sum(F.kl_div(F.log_softmax(s[b, i], -1), F.softmax(t[b, i], -1), reduction="sum")
                   for b, i in keep) / len(keep)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_token_classification_ignores_minus_100(tmp_path):
    from transformers import BertForTokenClassification

    from hf_optim.testing import tiny_bert_config

    torch.manual_seed(1)
    student = BertForTokenClassification(tiny_bert_config(num_labels=3)).eval()
    torch.manual_seed(2)
    teacher = _sharp(BertForTokenClassification(tiny_bert_config(num_labels=3)).eval())
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=1.0, temperature=2.0))
    ids = torch.randint(5, 60, (1, 5))
    labels = torch.tensor([[-100, 1, 2, -100, 0]])
    loss = trainer.compute_loss(student, {"input_ids": ids, "labels": labels})
    with torch.no_grad():
        s, t = student(input_ids=ids).logits[0], teacher(input_ids=ids).logits[0]
    expected = F.kl_div(F.log_softmax(s[[1, 2, 4]] / 2, -1), F.softmax(t[[1, 2, 4]] / 2, -1),
                        reduction="batchmean") * 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_can_be_a_directory(tmp_path, tiny_bert_dir):
    trainer = _trainer(tmp_path, tiny_bert(), str(tiny_bert_dir))
    assert type(trainer.teacher).__name__ == "BertForSequenceClassification" and not trainer.teacher.training


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="teacher_model"):
        DistillationTrainer(model=tiny_bert(), args=_args(tmp_path))
    trainer = _trainer(tmp_path, tiny_bert(), tiny_bert(seed=3), DistillConfig(alpha=0.5))
    with pytest.raises(ValueError, match="no `labels`"):
        trainer.compute_loss(trainer.model, {"input_ids": torch.randint(5, 60, (2, 4))})
    trainer = _trainer(tmp_path, tiny_bert(), tiny_bert(seed=3, num_labels=3), DistillConfig(alpha=1.0))
    with pytest.raises(ValueError, match="label set"):
        trainer.compute_loss(trainer.model, {"input_ids": torch.randint(5, 60, (2, 4))})


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_evaluate_reports_the_task_loss_a_plain_trainer_reports(tmp_path, alpha):
    from transformers import Trainer

    student, teacher = _sharp(tiny_bert(seed=1)), _sharp(tiny_bert(seed=2))
    data = _seq_data(n=10)  # batches of 4, 4 and 2: the mean weighs each example once
    trainer = _trainer(tmp_path, student, teacher, DistillConfig(alpha=alpha, temperature=2.0),
                       per_device_eval_batch_size=4)
    metrics = trainer.evaluate(eval_dataset=data)
    plain = Trainer(model=student, args=_args(tmp_path, per_device_eval_batch_size=4)).evaluate(eval_dataset=data)
    assert metrics["eval_task_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)
    assert metrics["eval_loss"] != pytest.approx(plain["eval_loss"], rel=1e-3)  # still the distillation loss
    logged = [h for h in trainer.state.log_history if "eval_loss" in h][-1]
    assert logged["eval_task_loss"] == metrics["eval_task_loss"]
    assert "test_task_loss" in trainer.evaluate(eval_dataset=data, metric_key_prefix="test")
