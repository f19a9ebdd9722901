"""``evaluate`` stage handler and the ``evaluate_model`` Python API."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import checkpoint_kind
from ..data import BUILTIN_TEXTS
from ..data.sampling import class_counts, stratified_subset
from ..data.tasks import TaskSpec, check_model_labels, is_text_corpus
from ..errors import DataError
from .metrics import check_finite
from .config import EvalConfig

logger = logging.getLogger("hf_optim")


def _sorted_batches(n: int, lengths: list[int], batch_size: int):
    # Length-sorted batches pad less; results are put back in the original order.
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def evaluate_model(model_dir: str | Path, config: EvalConfig | None = None, progress: bool = True, **kwargs) -> dict:
    """Evaluate a classifier directory: task metric plus latency, throughput, size and peak memory.

    Args:
        model_dir (`str` or `Path`): a directory ``AutoModelForSequenceClassification.from_pretrained`` loads.
        config (`EvalConfig`, *optional*): what to measure; or pass its fields as keyword arguments.

    Returns:
        `dict`: JSON-ready metrics (see docs/reports.md).
    """
    import torch

    from ..console import progress as progress_bar
    from ..data import load_task
    from .bench import dir_size_mb, latency_ms, peak_memory_mb, throughput
    from ..artifacts import load_predictor
    from .metrics import compute_metric

    config = config or EvalConfig(model=str(model_dir), **kwargs)
    if _causal_lm(model_dir, config):
        return _evaluate_lm(model_dir, config, progress)
    spec = TaskSpec.coerce(config.task)
    if checkpoint_kind(model_dir) == "causal-lm":
        raise DataError(f"{model_dir} is a causal LM and {spec.name!r} a classification task: evaluate it on a text "
                        f"corpus ({', '.join(BUILTIN_TEXTS)}: `corpus: bbc-news`, in older recipes `task: bbc-news` / "
                        "--task bbc-news) for perplexity and "
                        "generation speed")
    split = load_task(spec)[config.split]
    names = split.features["label"].names
    check_model_labels(model_dir, names, spec.name)
    # the same stratified rows for every model evaluated on this task (the task's seed)
    split = stratified_subset(split, config.max_samples, spec.seed)
    texts = split["text"]
    pairs = split["text_pair"] if "text_pair" in split.column_names else None
    labels = np.asarray(split["label"])
    clf = load_predictor(model_dir, max_length=config.max_length)
    prev_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        preds = np.empty(len(texts), dtype=np.int64)
        for idx in progress_bar(_sorted_batches(len(texts), [len(t) for t in texts], config.batch_size),
                                desc=f"evaluate {spec.name}/{config.split}", enabled=progress, unit="batch"):
            logits = clf.predict_logits([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None)
            check_finite(logits, model_dir)
            preds[idx] = logits.argmax(-1)
        value = compute_metric(spec.metric, preds, labels)
        out: dict[str, Any] = {
            "model": str(model_dir), "task": spec.name, "split": config.split, "examples": len(texts),
            "class_counts": class_counts(labels, names),
            "metric": spec.metric, spec.metric: round(value, 6),
            "params": int(clf.num_parameters() if hasattr(clf, "num_parameters")
                          else sum(p.numel() for p in clf.model.parameters())),
            "size": dir_size_mb(model_dir),
        }
        if config.latency_samples:
            out["latency_ms"] = latency_ms(clf, texts[:config.latency_samples])
        if config.throughput_samples:
            out["throughput"] = throughput(clf, texts[:config.throughput_samples], config.throughput_batch_size)
    finally:
        torch.set_num_threads(prev_threads)
    if config.measure_memory:
        out["memory"] = peak_memory_mb(model_dir, texts, config.throughput_batch_size, config.max_length)
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": config.threads or prev_threads,
                      "torch": torch.__version__}
    return out


def _causal_lm(model_dir, config: EvalConfig) -> bool:
    # auto: a text corpus as the task means language-model evaluation, and so does a corpus for a causal LM (a
    # recipe's top-level corpus reaches its classifiers' stages too); otherwise the classifier path (which says
    # so when the model is not a classifier).
    if config.task_type != "auto":
        return config.task_type == "causal-lm"
    return is_text_corpus(config.task) or (config.corpus is not None and checkpoint_kind(model_dir) == "causal-lm")


def _evaluate_lm(model_dir, config: EvalConfig, progress: bool = False) -> dict:
    from .lm import evaluate_lm

    return evaluate_lm(model_dir, config, progress=progress)


def run_evaluate(config: EvalConfig, ctx) -> dict[str, Any]:
    metrics = evaluate_model(ctx.inputs["model"], config, progress=ctx.progress)
    metrics["model_stage"] = config.model
    (ctx.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
