"""Synthetic run reports with chosen numbers (the runner's report.json shape), for the report tests."""

from __future__ import annotations

import json
from pathlib import Path


def eval_stage(name: str, model: str, value: float, p50: float, throughput: float, size: float,
               seconds: float = 10.0, metric: str = "accuracy") -> dict:
    return {"name": name, "kind": "evaluate", "fingerprint": "f" + name, "status": "ran", "seconds": seconds,
            "config": {"kind": "evaluate", "version": 1, "model": model, "task": "movie-sentiment", "split": "test"},
            "metrics": {"model": f"/x/{model}", "task": "movie-sentiment", "split": "test", "examples": 100,
                        "metric": metric, metric: value, "size": {"weights_mb": size, "total_mb": size + 1},
                        "latency_ms": {"batch_size": 1, "n": 10, "p50": p50, "p95": p50 * 1.5},
                        "throughput": {"batch_size": 32, "n": 64, "samples_per_s": throughput},
                        "memory": {"model_peak_mb": size * 2},
                        "machine": {"cpu": "x86_64", "threads": 2}, "model_stage": model}}


def stage(name: str, kind: str, seconds: float, **config) -> dict:
    return {"name": name, "kind": kind, "fingerprint": "f" + name, "status": "ran", "seconds": seconds,
            "config": {"kind": kind, "version": 1, **config}, "metrics": {}}


def pipeline_report(teacher_tp: float = 100.0, student_tp: float = 400.0, seconds: float = 3000.0) -> dict:
    """teacher (finetune) -> student -> distill -> export; evaluations of teacher, distill and export.

    Stage seconds add up to ``seconds + 600`` (three 200 s evaluations).
    """
    from hf_optim.report.summary import artifact_table

    stages = [
        stage("teacher", "finetune", seconds / 2, model="builtin:minilm-l6", task="movie-sentiment", epochs=2.0),
        eval_stage("eval-teacher", "teacher", 0.85, 10.0, teacher_tp, 80.0, seconds=200),
        stage("student", "student", 0.0, model="teacher", num_layers=3),
        stage("distill", "distill", seconds / 2, model="student", teacher="teacher", temperature=2.0, alpha=0.5),
        eval_stage("eval-distill", "distill", 0.84, 5.0, student_tp / 2, 60.0, seconds=200),
        stage("export", "export", 0.0, model="distill", backend="auto", optimization="O2", quantization="dynamic"),
        eval_stage("eval-export", "export", 0.845, 2.0, student_tp, 20.0, seconds=200),
    ]
    stages[5]["metrics"] = {"backend": "optimum"}
    return {"recipe": "pipe", "description": "test run", "fingerprint": "abc", "hf_optim": "0.1.0",
            "started": "2026-01-01T00:00:00", "status": "complete", "updated": "2026-01-01T01:00:00",
            "stages": stages, "artifacts": artifact_table(stages)}


def write_run(directory: Path, report: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report))
    return directory
