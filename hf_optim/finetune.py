"""``finetune`` stage: a plain ``Trainer`` run of a model on a classification task (its row in the stage table is
in :mod:`hf_optim.registry`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from .data.tasks import TaskSpec
from .recipe import StageConfig
# re-exported: code written before hf_optim.training existed imports the shared helpers from here
from .training import (TrainingFields, check_only_head_reinitialised, load_training_data, quiet_printer,  # noqa: F401
                       tokenize_splits, train_and_predict, training_arguments, validate_training_fields)

__all__ = ["FinetuneConfig", "run_finetune"]


@dataclasses.dataclass
class FinetuneConfig(StageConfig, TrainingFields):
    """Fine-tune ``model`` on ``task`` with ``transformers.Trainer``.

    Args:
        model (`str`): ``builtin:<name>``, an earlier stage, or a model directory.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): see :class:`TaskSpec`.
        epochs (`float`, *optional*, defaults to 2.0): training epochs.
        learning_rate (`float`, *optional*, defaults to 1e-4): peak AdamW learning rate (linear decay).
        batch_size (`int`, *optional*, defaults to 32): training batch size.
        max_length (`int`, *optional*, defaults to 128): tokens per example (longer ones are truncated).
        weight_decay (`float`, *optional*, defaults to 0.01): AdamW weight decay.
        warmup_ratio (`float`, *optional*, defaults to 0.06): fraction of steps with linear warm-up.
        max_train_samples (`int`, *optional*): train on N examples only (quick runs): a sample stratified by label,
            drawn with the task's seed.
        max_eval_samples (`int`, *optional*): evaluate on N validation examples (stratified, the task's seed).
    """

    kind = "finetune"
    produces = "sequence-classification"
    sets_task = True  # the output records `task` (hf_optim_task.json)
    version = 1

    model: str
    task: Union[str, dict] = "movie-sentiment"

    def validate(self) -> None:
        TaskSpec.coerce(self.task)
        validate_training_fields(self)


def run_finetune(config: FinetuneConfig, ctx) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    from .evaluation.metrics import compute_metric

    spec = TaskSpec.coerce(config.task)
    set_seed(ctx.seed)
    data = load_training_data(spec, config)
    names = data["train"].features["label"].names
    src = ctx.inputs["model"]
    tokenizer = AutoTokenizer.from_pretrained(src)
    # ignore_mismatched_sizes lets a checkpoint with another label count get a new head; nothing else may be
    # re-initialised (a pruned checkpoint whose per-layer shapes were lost would silently train from random)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True, output_loading_info=True,
    )
    check_only_head_reinitialised(model, info, src)
    encoded = tokenize_splits(data, tokenizer, config.max_length)
    trainer, result, pred = train_and_predict(ctx, config, Trainer, model=model, tokenizer=tokenizer, encoded=encoded)
    value = compute_metric(spec.metric, pred.predictions.argmax(-1), pred.label_ids)
    trainer.model.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
    return {
        "train_loss": float(result.training_loss),
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
        "train_examples": len(encoded["train"]),
        "steps": int(result.global_step),
        f"validation_{spec.metric}": value,
    }
