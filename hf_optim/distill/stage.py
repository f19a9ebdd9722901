"""Handlers of the ``student`` and ``distill`` recipe stages."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..data.tasks import TaskSpec
from ..registry import register
from .config import DistillConfig, StudentConfig

logger = logging.getLogger("hf_optim")


def load_pretrained(path: Path, **kwargs: Any):
    """Load a model directory with the class named in its ``config.json`` (``architectures[0]``)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ValueError(f"{path}: config.json names no known architecture ({arch!r}); cannot tell which model "
                         "class (…ForSequenceClassification, …ForCausalLM) to build")
    return cls.from_pretrained(path, **kwargs)


@register(StudentConfig)
def run_student(config: StudentConfig, ctx) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from .student import make_student

    teacher = load_pretrained(ctx.inputs["model"])
    student = make_student(teacher, num_layers=config.num_layers, layers=config.layers,
                           hidden_size=config.hidden_size, num_heads=config.num_heads,
                           intermediate_size=config.intermediate_size)
    student.save_pretrained(ctx.output_dir)
    AutoTokenizer.from_pretrained(ctx.inputs["model"]).save_pretrained(ctx.output_dir)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    return {"teacher_params": n_t, "student_params": n_s, "param_ratio": round(n_s / n_t, 4)}


@register(DistillConfig)
def run_distill(config: DistillConfig, ctx) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer, DataCollatorWithPadding, set_seed

    from ..data import load_task
    from ..evaluation.metrics import compute_metric
    from ..finetune import tokenize_splits, training_arguments
    from .trainer import DistillationTrainer

    spec = TaskSpec.coerce(config.task)
    set_seed(ctx.seed)
    data = load_task(spec)
    if config.max_train_samples:
        data["train"] = data["train"].select(range(min(config.max_train_samples, len(data["train"]))))
    if config.max_eval_samples:
        data["validation"] = data["validation"].select(range(min(config.max_eval_samples, len(data["validation"]))))
    extra = {"attn_implementation": "eager"} if config.attention_weight > 0 else {}
    student = load_pretrained(ctx.inputs["model"], **extra)
    teacher = load_pretrained(ctx.inputs["teacher"], **extra)
    tokenizer = AutoTokenizer.from_pretrained(ctx.inputs["model"])
    encoded = tokenize_splits(data, tokenizer, config.max_length)
    steps = int(np.ceil(len(encoded["train"]) / config.batch_size) * config.epochs)
    scratch = tempfile.mkdtemp(prefix="trainer-", dir=ctx.output_dir.parent)
    try:
        args = training_arguments(
            scratch, per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=64,
            learning_rate=config.learning_rate, num_train_epochs=config.epochs, weight_decay=config.weight_decay,
            warmup_steps=int(config.warmup_ratio * steps), logging_steps=max(1, steps // 20), seed=ctx.seed,
            disable_tqdm=not ctx.progress,
        )
        trainer = DistillationTrainer(model=student, teacher_model=teacher, distill_config=config, args=args,
                                      train_dataset=encoded["train"], processing_class=tokenizer,
                                      data_collator=DataCollatorWithPadding(tokenizer),
                                      callbacks=[ctx.log_callback()])
        result = trainer.train()
        pred = trainer.predict(encoded["validation"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    value = compute_metric(spec.metric, pred.predictions.argmax(-1), pred.label_ids)
    trainer.model.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
    logged = [h for h in trainer.state.log_history if "soft_loss" in h or "hard_loss" in h]
    last = logged[-1] if logged else {}
    return {
        "train_loss": float(result.training_loss),
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
        "train_examples": len(encoded["train"]),
        "steps": int(result.global_step),
        "teacher_forward_calls": trainer.teacher_forward_calls,
        **{f"final_{k}": float(v) for k, v in last.items() if k.endswith("_loss") and k != "loss"},
        f"validation_{spec.metric}": value,
    }
