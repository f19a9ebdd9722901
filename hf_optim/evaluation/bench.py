"""Latency, throughput, size and peak memory of a text classifier, measured on real inputs.

Numbers are medians/percentiles of repeated runs on this machine; compare artifacts only when measured
side by side in one run (the machine may be shared and noisy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .harness import interleaved

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".pt", ".gguf")


def dir_size_mb(path: str | Path) -> dict[str, float]:
    """``{"weights_mb": ..., "total_mb": ...}`` of a model directory (weights = tensor files only)."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    total = sum(p.stat().st_size for p in files)
    weights = sum(p.stat().st_size for p in files if p.name.endswith(WEIGHT_SUFFIXES))
    return {"weights_mb": round(weights / 2**20, 3), "total_mb": round(total / 2**20, 3)}


def latency_ms(predict: Callable[[Sequence[str]], object], texts: Sequence[str], warmup: int = 5) -> dict:
    """Batch-1 latency over ``texts`` (one call per text): p50, p95 and mean in milliseconds."""
    for t in texts[:warmup]:
        predict([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        predict([t])
        times.append((time.perf_counter() - start) * 1e3)
    arr = np.asarray(times)
    return {"batch_size": 1, "n": len(arr), "p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3), "mean": round(float(arr.mean()), 3)}


def throughput(predict: Callable[[Sequence[str]], object], texts: Sequence[str], batch_size: int = 32,
               repeats: int = 3) -> dict:
    """Samples per second at ``batch_size`` over ``texts``; the median of ``repeats`` passes."""
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    predict(batches[0])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            predict(b)
        rates.append(len(texts) / (time.perf_counter() - start))
    return {"batch_size": batch_size, "n": len(texts), "samples_per_s": round(float(np.median(rates)), 2)}


def peak_memory_mb(model_dir: str | Path, texts: Sequence[str], batch_size: int = 32, max_length: int = 128,
                   timeout: float = 600) -> dict:
    """Peak resident memory of loading the model and running one batch, in a fresh process.

    A separate process is the only honest way on CPU: in-process allocators keep freed memory, so an
    artifact measured after another would look smaller. Reports the peak RSS and the increase over the
    interpreter with torch/transformers imported (the model's own cost).
    """
    payload = {"model": str(Path(model_dir).resolve()), "texts": list(texts[:batch_size]), "max_length": max_length}
    return run_probe("hf_optim.evaluation.memprobe", payload, timeout)


def run_probe(module: str, payload: dict, timeout: float = 600) -> dict:
    """Run ``python -P -m module`` with ``payload`` as JSON on stdin; its last stdout line is the JSON result
    (``{"error": ...}`` with the last stderr line when it fails). ``-P``: the working directory is not put on
    ``sys.path``, so a ``json.py`` lying where the user runs hf_optim is never imported."""
    proc = subprocess.run([sys.executable, "-P", "-m", module], input=json.dumps(payload), text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def side_by_side(predictors: dict[str, Callable[[Sequence[str]], np.ndarray]], texts: Sequence[str],
                 labels: Sequence[int], batch_size: int = 32, throughput_samples: int = 512,
                 latency_samples: int = 100, rounds: int = 5, baseline: str | None = None) -> dict[str, dict]:
    """Accuracy, batch-1 latency and batch-``batch_size`` throughput of several predictors on the same data.

    Throughput rounds are interleaved across the predictors (:func:`~hf_optim.evaluation.harness.interleaved`:
    noise from other processes hits all of them alike) and the median is reported, with ``speedup`` relative to ``baseline`` (default: the first).
    """
    labels = np.asarray(labels)
    order = np.argsort([len(t) for t in texts], kind="stable")
    rows: dict[str, dict] = {}
    for name, predict in predictors.items():
        preds = np.empty(len(texts), dtype=np.int64)
        for i in range(0, len(texts), 64):
            idx = order[i:i + 64]
            preds[idx] = np.asarray(predict([texts[j] for j in idx])).argmax(-1)
        rows[name] = {"accuracy": float((preds == labels).mean()),
                      "latency_ms": latency_ms(predict, list(texts[:latency_samples]))}
    batches = [list(texts[i:i + batch_size]) for i in range(0, min(throughput_samples, len(texts)), batch_size)]
    n = sum(len(b) for b in batches)

    def rate(predict):
        def one_pass() -> float:
            start = time.perf_counter()
            for b in batches:
                predict(b)
            return n / (time.perf_counter() - start)
        return one_pass

    rates = interleaved({name: rate(predict) for name, predict in predictors.items()}, rounds)
    base_name = baseline or next(iter(predictors))
    base_rate, base_acc = float(np.median(rates[base_name])), rows[base_name]["accuracy"]
    for name, r in rows.items():
        med = float(np.median(rates[name]))
        r["throughput"] = {"batch_size": batch_size, "samples_per_s": round(med, 2),
                           "rounds": [round(x, 2) for x in rates[name]]}
        r["speedup"] = round(med / base_rate, 3)
        r["accuracy_drop_points"] = round(100 * (base_acc - r["accuracy"]), 2)
    return rows
