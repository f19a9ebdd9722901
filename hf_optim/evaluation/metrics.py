"""Task metrics through ``evaluate``, with an offline implementation of the common ones.

``evaluate.load("accuracy")`` fetches the metric script from the Hub, so it fails offline (and stalls
~20 s before failing without ``HF_HUB_OFFLINE=1``). The metrics below give the same numbers as
``evaluate``/scikit-learn and are used whenever the Hub is unavailable or ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError

logger = logging.getLogger("hf_optim")


def _confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.union1d(pred, ref)
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(m, (np.searchsorted(labels, ref), np.searchsorted(labels, pred)), 1)
    return m, labels


def accuracy(pred, ref) -> float:
    return float(np.mean(pred == ref)) if len(ref) else float("nan")


def _prf(pred, ref):
    m, _ = _confusion(pred, ref)
    tp = np.diag(m).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(m.sum(0) > 0, tp / m.sum(0), 0.0)
        recall = np.where(m.sum(1) > 0, tp / m.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1, m


def _binary_or_macro(values: np.ndarray, labels_in_use: int) -> float:
    # evaluate's f1/precision/recall default to average="binary" (positive class 1) for two classes
    return float(values[1]) if labels_in_use == 2 and len(values) == 2 else float(values.mean())


def f1(pred, ref) -> float:
    p, r, f, m = _prf(pred, ref)
    return _binary_or_macro(f, len(m))


def precision(pred, ref) -> float:
    p, r, f, m = _prf(pred, ref)
    return _binary_or_macro(p, len(m))


def recall(pred, ref) -> float:
    p, r, f, m = _prf(pred, ref)
    return _binary_or_macro(r, len(m))


def matthews_correlation(pred, ref) -> float:
    m, _ = _confusion(pred, ref)
    t, p, c, s = m.sum(1), m.sum(0), np.trace(m), m.sum()
    denom = np.sqrt(float(s * s - p @ p)) * np.sqrt(float(s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


OFFLINE_METRICS: dict[str, Callable] = {
    "accuracy": accuracy, "f1": f1, "precision": precision, "recall": recall,
    "matthews_correlation": matthews_correlation,
}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def compute_metric(name: str, predictions, references) -> float:
    """Compute metric ``name`` over integer predictions and references.

    Uses ``evaluate.load(name)`` when the Hub is reachable and falls back to the offline implementation of
    accuracy, f1, precision, recall and matthews_correlation otherwise (same definitions and defaults).
    """
    pred = np.asarray(predictions).reshape(-1)
    ref = np.asarray(references).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"{len(pred)} predictions for {len(ref)} references")
    if name not in OFFLINE_METRICS and _hub_offline():
        raise ConfigError(f"metric {name!r} needs the Hub (HF_HUB_OFFLINE=1 is set); offline metrics: "
                          f"{', '.join(OFFLINE_METRICS)}")
    if not _hub_offline():
        try:
            import evaluate

            out = evaluate.load(name).compute(predictions=pred.tolist(), references=ref.tolist())
            return float(out[name])
        except Exception as e:  # noqa: BLE001 - any failure to reach/load the metric means: use the fallback
            if name not in OFFLINE_METRICS:
                raise ConfigError(f"could not load metric {name!r} with evaluate: {e}") from None
            logger.info("evaluate.load(%r) unavailable (%s); using the offline implementation", name, type(e).__name__)
    return OFFLINE_METRICS[name](pred, ref)


def check_finite(logits, what) -> None:
    """Raise :class:`DataError` on NaN or infinite logits: their argmax is a class id with no meaning."""
    logits = np.asarray(logits)
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=-1).sum())
        raise DataError(f"{what} produced NaN or infinite logits for {bad} of {len(logits)} examples, so no metric "
                        "can be computed; the weights are corrupt or a quantization setting overflows (try a "
                        "milder one)")
