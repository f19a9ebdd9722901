"""side_by_side: accuracy and interleaved throughput of several predictors on the same texts."""

import time

import numpy as np

from hf_optim.evaluation.bench import side_by_side


def test_side_by_side_accuracy_and_relative_speed():
    texts = [f"text {i}" for i in range(64)]
    labels = [i % 2 for i in range(64)]

    def right(batch):
        return np.asarray([[0.0, 1.0] if int(t.split()[1]) % 2 else [1.0, 0.0] for t in batch])

    def slow_wrong(batch):
        time.sleep(0.002 * len(batch))
        return np.asarray([[1.0, 0.0]] * len(batch))

    rows = side_by_side({"base": slow_wrong, "fast": right}, texts, labels, batch_size=16, throughput_samples=64,
                        latency_samples=4, rounds=3)
    assert rows["base"]["accuracy"] == 0.5 and rows["fast"]["accuracy"] == 1.0
    assert rows["fast"]["accuracy_drop_points"] == -50.0 and rows["base"]["speedup"] == 1.0
    assert rows["fast"]["speedup"] > 2 and len(rows["fast"]["throughput"]["rounds"]) == 3
    assert rows["fast"]["latency_ms"]["n"] == 4
