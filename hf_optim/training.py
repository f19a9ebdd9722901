"""Training helpers shared by every stage that trains (``finetune``, ``distill``, ``prune``, quantization-aware
``quantize``): the training fields of their configs, the task's data, tokenization, ``TrainingArguments`` that fit
the installed transformers release, one ``Trainer`` run, and loading a model directory with its own class.

Light at import (no torch): configs import :class:`TrainingFields` from here; torch and transformers load inside
the functions.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from .data.tasks import TaskSpec
from .recipe import StageConfig

__all__ = ["TrainingFields", "validate_training_fields", "training_arguments", "quiet_printer", "tokenize_splits",
           "load_training_data", "train_and_predict", "check_only_head_reinitialised", "load_pretrained"]

logger = logging.getLogger("hf_optim")


@dataclasses.dataclass(kw_only=True)
class TrainingFields:
    """Training settings shared by every stage that trains (``finetune``, ``distill``, ``prune``); see
    :class:`~hf_optim.finetune.FinetuneConfig` for their meaning. Keyword-only; stages may override a default."""

    epochs: float = 2.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


@dataclasses.dataclass
class TeacherTrainingConfig(StageConfig, TrainingFields):
    """Base of the stages that train ``model`` on ``task``, with or without a ``teacher`` (``distill``, ``prune``):
    their input fields, and the output records ``task`` (``hf_optim_task.json``)."""

    sets_task = True
    inputs: ClassVar[tuple[str, ...]] = ("model", "teacher")

    model: Optional[str] = None
    teacher: Optional[str] = None
    task: Union[str, dict] = "movie-sentiment"


def validate_training_fields(config) -> None:
    """Checks shared by every stage that trains (``finetune``, ``distill``): epochs, learning_rate,
    batch_size, max_length, warmup_ratio and the sample limits."""
    if config.epochs <= 0:
        config._fail("epochs", "must be > 0")
    if not 0 < config.learning_rate < 1:
        config._fail("learning_rate", "must be in (0, 1), e.g. 5e-5")
    for f in ("batch_size", "max_length"):
        if getattr(config, f) < 1:
            config._fail(f, "must be >= 1")
    if not 0 <= config.warmup_ratio < 1:
        config._fail("warmup_ratio", "must be in [0, 1)")
    for f in ("max_train_samples", "max_eval_samples"):
        if getattr(config, f) is not None and getattr(config, f) < 1:
            config._fail(f, "must be >= 1 or unset")


def training_arguments(output_dir: str, **kwargs: Any):
    """``TrainingArguments`` built from the arguments this transformers release accepts.

    Arguments removed in transformers 5 (``warmup_ratio``, ``overwrite_output_dir`` ...) are never passed;
    anything else unknown is dropped with a debug log so one script runs on 4.57 and 5.x.
    """
    import torch
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    base = {"report_to": [], "save_strategy": "no", "eval_strategy": "no", "dataloader_num_workers": 0,
            "use_cpu": not torch.cuda.is_available()}
    base.update(kwargs)
    dropped = sorted(set(base) - known)
    if dropped:
        logger.debug("TrainingArguments: this transformers release has no %s", dropped)
    return TrainingArguments(output_dir=output_dir, **{k: v for k, v in base.items() if k in known})


def quiet_printer(trainer, progress: bool):
    """Without its progress bar (``disable_tqdm``) Trainer prints every log dict to stdout; drop that printer.
    The run log still gets the losses (``StageContext.log_callback``)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def tokenize_splits(dataset, tokenizer, max_length: int):
    """Tokenize every split of a task ``DatasetDict`` (``text`` [+ ``text_pair``] -> input ids)."""

    def enc(batch):
        pair = batch.get("text_pair")
        return tokenizer(batch["text"], pair, truncation=True, max_length=max_length)

    keep = {"label"}
    return dataset.map(enc, batched=True, remove_columns=[c for c in dataset["train"].column_names if c not in keep],
                       desc="tokenize")


def load_training_data(spec: TaskSpec, config):
    """The task's splits, with ``config.max_train_samples`` / ``max_eval_samples`` applied (stratified samples
    drawn with the task's seed)."""
    from .data import load_task
    from .data.sampling import stratified_subset

    data = load_task(spec)
    for split, limit in (("train", config.max_train_samples), ("validation", config.max_eval_samples)):
        if limit:
            data[split] = stratified_subset(data[split], limit, spec.seed)
    return data


def train_and_predict(ctx, config, trainer_cls, model, tokenizer, encoded, callbacks=(), **trainer_kwargs):
    """Train ``model`` on ``encoded["train"]`` and predict ``encoded["validation"]``.

    Shared by the ``finetune``, ``distill`` and ``prune`` stages: ``config`` supplies epochs, learning_rate,
    batch_size, weight_decay and warmup_ratio; Trainer's output_dir is a scratch dir the runner removes.
    ``callbacks`` run before the run-log callback (so what they add to the logs is logged).
    Returns ``(trainer, train_result, validation_predictions)``.
    """
    import numpy as np
    from transformers import DataCollatorWithPadding

    steps = int(np.ceil(len(encoded["train"]) / config.batch_size) * config.epochs)
    args = training_arguments(
        str(ctx.scratch_dir("trainer")), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=64, learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        weight_decay=config.weight_decay, warmup_steps=int(config.warmup_ratio * steps),
        logging_steps=max(1, steps // 20), seed=ctx.seed, disable_tqdm=not ctx.progress,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=encoded["train"], processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[*callbacks, ctx.log_callback()],
                          **trainer_kwargs)
    result = quiet_printer(trainer, ctx.progress).train()
    return trainer, result, trainer.predict(encoded["validation"])


def check_only_head_reinitialised(model, loading_info: dict, src) -> None:
    """Raise :class:`~hf_optim.errors.DataError` when weights outside the task head had a size mismatch with the
    checkpoint (and were therefore initialised at random)."""
    from .errors import DataError

    prefix = getattr(model, "base_model_prefix", "") + "."
    bad = []
    for item in loading_info.get("mismatched_keys") or ():
        key = item[0] if isinstance(item, (tuple, list)) else str(item)
        if key.startswith(prefix):
            bad.append(key)
    if bad:
        raise DataError(f"{src}: {len(bad)} weight(s) of the model body do not fit this architecture's shapes "
                        f"({', '.join(sorted(bad)[:3])}{', ...' if len(bad) > 3 else ''}) and would be initialised at "
                        "random; if it is a pruned or quantized hf_optim checkpoint, keep its config.json "
                        "(quantization_config) and `import hf_optim` before loading it")


def load_pretrained(path: Path, **kwargs: Any):
    """Load a model directory with the class named in its ``config.json`` (``architectures[0]``).

    Args:
        path (`Path`): a model directory that ``from_pretrained`` loads.
        **kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation``).
    """
    import transformers

    from .artifacts import checkpoint_architectures

    arch = (checkpoint_architectures(path) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ValueError(f"{path}: config.json names no known architecture ({arch!r}); cannot tell which model "
                         "class (…ForSequenceClassification, …ForCausalLM) to build")
    return cls.from_pretrained(path, **kwargs)
