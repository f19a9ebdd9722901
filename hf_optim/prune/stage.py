"""Handler of the ``prune`` recipe stage: train with :class:`PruningCallback` (optionally distilling), then
physically remove what structured pruning masked, save, and check that the saved model reloads identically."""

from __future__ import annotations

import logging
from typing import Any

from ..data.tasks import TaskSpec
from ..errors import StageError
from .config import PruneConfig

logger = logging.getLogger("hf_optim")

DENSE_NOTE = ("unstructured/N:M sparsity keeps dense shapes: the weights are zero but every matrix multiply "
              "still runs in full, so it saves no time (and no memory) without sparse kernels; use structured "
              "pruning (heads/ffn) for speed")


def _max_logit_diff(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def check_reload(model, directory, batch) -> float:
    """Max |logit difference| between ``model`` and its saved copy in ``directory`` on ``batch``."""
    import torch

    from ..training import load_pretrained

    reloaded = load_pretrained(directory).eval()
    model.eval()
    with torch.no_grad():
        return _max_logit_diff(model(**batch).logits, reloaded(**batch).logits)


def run_prune(config: PruneConfig, ctx) -> dict[str, Any]:
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    from ..distill.config import DistillConfig
    from ..evaluation.metrics import compute_metric
    from ..training import load_pretrained, load_training_data, tokenize_splits, train_and_predict
    from .callback import PruningCallback
    from .structure import structure_summary

    spec = TaskSpec.coerce(config.task)
    set_seed(ctx.seed)
    data = load_training_data(spec, config)
    model = load_pretrained(ctx.inputs["model"])
    tokenizer = AutoTokenizer.from_pretrained(ctx.inputs["model"])
    encoded = tokenize_splits(data, tokenizer, config.max_length)
    params_before = sum(p.numel() for p in model.parameters())
    callback = PruningCallback(config)
    kwargs: dict[str, Any] = {}
    trainer_cls = Trainer
    if ctx.inputs.get("teacher"):
        from ..distill.trainer import DistillationTrainer

        trainer_cls = DistillationTrainer
        kwargs = {"teacher_model": load_pretrained(ctx.inputs["teacher"]),
                  "distill_config": DistillConfig(temperature=config.temperature, alpha=config.alpha,
                                                  cache_teacher_outputs=config.cache_teacher_outputs)}
    trainer, result, pred = train_and_predict(ctx, config, trainer_cls, model=model, tokenizer=tokenizer,
                                              encoded=encoded, callbacks=[callback], **kwargs)
    masked_value = compute_metric(spec.metric, pred.predictions.argmax(-1), pred.label_ids)
    out: dict[str, Any] = {"granularity": config.granularity, "importance": config.importance,
                           "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
                           "steps": int(result.global_step), "train_loss": float(result.training_loss),
                           **callback.pruner.stats(), "params_before": params_before}
    model = trainer.model
    sample = DataCollatorWithPadding(tokenizer)([encoded["validation"][i] for i in range(min(16, len(encoded["validation"])))])
    sample = {k: v.to(model.device) for k, v in sample.items() if k != "labels"}
    if config.granularity == "structured" and config.finalize:
        import torch

        model.eval()
        with torch.no_grad():
            before = model(**sample).logits
        callback.finalize(model)
        with torch.no_grad():
            after = model(**sample).logits
        out["finalize_max_logit_diff"] = _max_logit_diff(before, after)
        pred = trainer.predict(encoded["validation"])
        summary = structure_summary(model)
        out.update({"heads_per_layer": summary["heads"], "ffn_per_layer": summary["ffn"]})
    elif config.granularity != "structured":
        out["note"] = DENSE_NOTE
        logger.warning("[%s] %s", ctx.name, DENSE_NOTE)
    value = compute_metric(spec.metric, pred.predictions.argmax(-1), pred.label_ids)
    out.update({"params_after": sum(p.numel() for p in model.parameters()), f"validation_{spec.metric}": value,
                f"validation_{spec.metric}_masked": masked_value})
    model.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
    diff = check_reload(model, ctx.output_dir, sample)
    out["reload_max_logit_diff"] = diff
    if diff > 1e-4:
        raise StageError(f"prune: the saved model does not reload identically (max logit difference {diff:.3g}); "
                         "nothing was kept")
    return out
