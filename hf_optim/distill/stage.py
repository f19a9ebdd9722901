"""Handlers of the ``student`` and ``distill`` recipe stages (their rows in the stage table are in
:mod:`hf_optim.registry`)."""

from __future__ import annotations

import logging
from typing import Any

from ..data.tasks import TaskSpec
from ..training import load_pretrained
from .config import DistillConfig, StudentConfig

logger = logging.getLogger("hf_optim")


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


def run_distill(config: DistillConfig, ctx) -> dict[str, Any]:
    from transformers import AutoTokenizer, set_seed

    from ..evaluation.metrics import compute_metric
    from ..training import load_training_data, tokenize_splits, train_and_predict
    from .trainer import DistillationTrainer

    spec = TaskSpec.coerce(config.task)
    set_seed(ctx.seed)
    data = load_training_data(spec, config)
    extra = {"attn_implementation": "eager"} if config.attention_weight > 0 else {}
    student = load_pretrained(ctx.inputs["model"], **extra)
    teacher = load_pretrained(ctx.inputs["teacher"], **extra)
    tokenizer = AutoTokenizer.from_pretrained(ctx.inputs["model"])
    encoded = tokenize_splits(data, tokenizer, config.max_length)
    trainer, result, pred = train_and_predict(ctx, config, DistillationTrainer, model=student, tokenizer=tokenizer,
                                              encoded=encoded, teacher_model=teacher, distill_config=config)
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
