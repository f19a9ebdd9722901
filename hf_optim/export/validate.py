"""Validation of exported and compiled models on the task metric (not a raw tensor tolerance).

Every candidate is compared with its source model on the same validation examples: the metric of both, the
drop (source - candidate), the prediction agreement and the largest logit difference. A drop above the budget
fails the stage, which then writes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import StageError

__all__ = ["ValidationData", "load_validation", "predict_all", "compare", "check_budget", "causal_lm_perplexity",
           "latency_vs_source"]


@dataclasses.dataclass
class ValidationData:
    texts: list
    pairs: list | None
    labels: np.ndarray
    metric: str
    task: str
    split: str
    label_names: list = dataclasses.field(default_factory=list)

    def check_model(self, model_dir) -> None:
        """Raise when the classifier in ``model_dir`` was trained on another label set than this task's."""
        from ..data.tasks import check_model_labels

        check_model_labels(model_dir, self.label_names, self.task)


def load_validation(task, max_samples: int | None = None, split: str = "validation") -> ValidationData:
    """``max_samples`` examples of ``split`` (all when unset): a sample stratified by label and drawn with the
    task's seed, so every candidate is checked on the same rows and on every class in the split's proportion."""
    from ..data import load_task
    from ..data.sampling import stratified_subset
    from ..data.tasks import TaskSpec

    spec = TaskSpec.coerce(task)
    ds = stratified_subset(load_task(spec)[split], max_samples, spec.seed)
    pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
    return ValidationData(list(ds["text"]), pairs, np.asarray(ds["label"]), spec.metric, spec.name, split,
                          list(ds.features["label"].names))


def predict_all(predict_logits: Callable, data: ValidationData, batch_size: int = 64, progress: bool = False,
                desc: str = "validate") -> np.ndarray:
    """Logits for every example, in order (batches sorted by length to pad less); NaN or infinite logits raise;
    ``progress``: a bar ``desc``."""
    from ..console import progress as progress_bar
    from ..evaluation.metrics import check_finite

    order = np.argsort([len(t) for t in data.texts], kind="stable")
    out = None
    for i in progress_bar(range(0, len(order), batch_size), desc=desc, enabled=progress, unit="batch"):
        idx = order[i:i + batch_size]
        logits = np.asarray(predict_logits([data.texts[j] for j in idx],
                                           [data.pairs[j] for j in idx] if data.pairs else None), dtype=np.float32)
        check_finite(logits, "the model")
        if out is None:
            out = np.empty((len(order), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    return out


def compare(source_logits: np.ndarray, logits: np.ndarray, data: ValidationData) -> dict[str, Any]:
    """Metric of source and candidate, their drop, prediction agreement and max-abs logit difference."""
    from ..data.sampling import class_counts
    from ..evaluation.metrics import compute_metric

    src = compute_metric(data.metric, source_logits.argmax(-1), data.labels)
    cand = compute_metric(data.metric, logits.argmax(-1), data.labels)
    return {
        "task": data.task, "split": data.split, "examples": len(data.labels),
        "class_counts": class_counts(data.labels, data.label_names or None), "metric": data.metric,
        "source": round(float(src), 6), "candidate": round(float(cand), 6), "drop": round(float(src - cand), 6),
        "agreement": round(float((source_logits.argmax(-1) == logits.argmax(-1)).mean()), 6),
        "max_logit_diff": round(float(np.abs(source_logits - logits).max()), 6),
    }


def latency_vs_source(source: Callable, candidate: Callable, data: ValidationData, n: int = 50) -> dict[str, Any]:
    """Batch-1 latency of source and candidate on the first ``n`` validation texts, alternating calls (so a
    busy machine slows both alike): p50 of each in ms and the speedup. Indicative; the ``evaluate`` stage and
    ``scripts/`` benchmarks measure properly."""
    import time

    texts = data.texts[:n]
    pairs = data.pairs[:n] if data.pairs else [None] * len(texts)
    times: dict[str, list[float]] = {"source": [], "candidate": []}
    for fn in (source, candidate):  # warm-up
        fn(texts[:1], [pairs[0]] if pairs[0] is not None else None)
    for text, pair in zip(texts, pairs):
        for name, fn in (("source", source), ("candidate", candidate)):
            start = time.perf_counter()
            fn([text], [pair] if pair is not None else None)
            times[name].append((time.perf_counter() - start) * 1e3)
    src, cand = float(np.median(times["source"])), float(np.median(times["candidate"]))
    return {"batch_size": 1, "n": len(texts), "source_p50_ms": round(src, 3), "candidate_p50_ms": round(cand, 3),
            "speedup": round(src / cand, 3) if cand > 0 else None}


def check_budget(result: dict, budget: float, what: str) -> None:
    """Raise :class:`StageError` when ``result["drop"]`` exceeds ``budget``."""
    if result["drop"] > budget + 1e-9:
        raise StageError(
            f"{what}: validation {result['metric']} dropped {result['drop']:.4f} ({result['source']:.4f} -> "
            f"{result['candidate']:.4f} on {result['examples']} {result['task']}/{result['split']} examples), more "
            f"than max_metric_drop={budget}; nothing was written. Raise max_metric_drop or choose a milder setting "
            "(quantization: dynamic/none, optimization: O1).")


def causal_lm_perplexity(logits_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], encodings: Sequence[dict]) -> float:
    """Perplexity over tokenized texts; ``logits_fn(input_ids, attention_mask) -> [1, seq, vocab]``."""
    nll, count = 0.0, 0
    for enc in encodings:
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = np.asarray(logits_fn(ids, mask), dtype=np.float64)[0, :-1]
        target = ids[0, 1:]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(target)), target].sum())
        count += len(target)
    return math.exp(nll / max(count, 1))


def run_staged(build: Callable, config: Any, ctx: Any) -> dict:
    """Run an export-like stage: ``build(model_dir, out_dir, config, progress=...)`` (``export_model``,
    ``compile_model``) writes into a child of the runner's output directory (which exists and is empty), whose
    files then move up. Returns the build's record."""
    import shutil

    staging = ctx.output_dir / ".staging" / ctx.name  # named as the stage: a portable export's card names it
    staging.parent.mkdir()
    record = build(ctx.inputs["model"], staging, config, progress=ctx.progress)
    for p in staging.iterdir():
        shutil.move(str(p), ctx.output_dir / p.name)
    staging.rmdir()
    staging.parent.rmdir()
    return record


def validation_metrics(record: dict) -> dict[str, Any]:
    """The stage metrics of a record's ``validation`` (its metric, the source's and the output's value, the drop)."""
    v = record["validation"]
    return {"validation_metric": v["metric"], f"validation_{v['metric']}": v["candidate"],
            f"source_validation_{v['metric']}": v["source"], "metric_drop": v["drop"],
            "max_logit_diff": v["max_logit_diff"]}
