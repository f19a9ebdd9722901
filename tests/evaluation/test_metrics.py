"""Offline metrics equal scikit-learn's (the definitions `evaluate` wraps)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from hf_optim.errors import ConfigError
from hf_optim.evaluation.metrics import OFFLINE_METRICS, compute_metric


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_offline_metrics_match_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, num_classes, 300)
    pred = np.where(rng.random(300) < 0.7, ref, rng.integers(0, num_classes, 300))
    avg = "binary" if num_classes == 2 else "macro"
    expected = {
        "accuracy": skm.accuracy_score(ref, pred),
        "f1": skm.f1_score(ref, pred, average=avg),
        "precision": skm.precision_score(ref, pred, average=avg),
        "recall": skm.recall_score(ref, pred, average=avg),
        "matthews_correlation": skm.matthews_corrcoef(ref, pred),
    }
    for name, value in expected.items():
        assert compute_metric(name, pred, ref) == pytest.approx(value, abs=1e-12), name
    assert set(OFFLINE_METRICS) == set(expected)


def test_edge_cases():
    assert compute_metric("accuracy", [1, 1, 0], [1, 0, 0]) == pytest.approx(2 / 3)
    assert compute_metric("matthews_correlation", [1, 1, 1], [1, 1, 1]) == 0.0  # sklearn's convention
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        compute_metric("accuracy", [1, 0], [1, 0, 1])
    with pytest.raises(ConfigError, match="needs the Hub.*offline metrics: accuracy"):
        compute_metric("bleu", [1], [1])
