"""A run's artifacts side by side in one process: accuracy, batch-1 latency, batch-32 throughput, size.

    python scripts/bench_run.py runs/movie-sentiment --artifacts teacher,export-teacher,export \\
        --baseline teacher --reference export-teacher --threads 1 -o scripts/results/bench_run_movie_sentiment.json
                                                                                   # make bench-classifier

The evaluate stages of a run measure one artifact after another; on a shared machine their ratios drift with
the load. This script loads every named artifact (PyTorch, hf_optim-quantized/pruned or ONNX Runtime
directories) and interleaves the throughput rounds across them, so the ratios (vs ``--baseline`` and
``--reference``) hold even when the machine is busy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hf_optim  # noqa: F401 - from_pretrained understands hf_optim checkpoints


def main() -> None:
    import torch

    from hf_optim.data import load_task
    from hf_optim.evaluation.bench import dir_size_mb, side_by_side
    from hf_optim.evaluation.classifier import load_classifier
    from hf_optim.evaluation.harness import BenchRun

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--artifacts", required=True, help="comma-separated stage names")
    ap.add_argument("--baseline", help="speedups relative to this artifact (default: the first)")
    ap.add_argument("--reference", help="also report throughput relative to this artifact")
    ap.add_argument("--task", default="movie-sentiment")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    run_record = BenchRun(args, threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = Path(args.run_dir)
    names = args.artifacts.split(",")
    missing = [n for n in names if not (run / n / "hf_optim_stage.json").is_file()]
    if missing:
        raise SystemExit(f"not complete artifacts of {run}: {', '.join(missing)}")
    test = load_task(args.task)["test"]
    clfs = {n: load_classifier(run / n) for n in names}
    if args.threads:
        from hf_optim.export.runtime import OrtClassifier, make_session

        for clf in clfs.values():
            if isinstance(clf, OrtClassifier):
                clf.session = make_session(clf.path, args.threads)
    rows = side_by_side(clfs, test["text"], test["label"], rounds=args.rounds, baseline=args.baseline)
    ref, base = args.reference, args.baseline or names[0]
    for n in names:
        rows[n]["size"] = dir_size_mb(run / n)
        if ref:
            rows[n]["throughput_vs_reference"] = round(
                rows[n]["throughput"]["samples_per_s"] / rows[ref]["throughput"]["samples_per_s"], 3)
            rows[n]["accuracy_vs_reference_points"] = round(100 * (rows[n]["accuracy"] - rows[ref]["accuracy"]), 2)
        rows[n]["size_ratio_vs_baseline"] = round(rows[n]["size"]["weights_mb"] / rows[base]["size"]["weights_mb"], 4)
    run_record.write(args.output, rows, run=str(run), task=args.task, split="test", examples=len(test),
                     baseline=base, reference=ref)
    for n, r in rows.items():
        print(f"{n:16s} acc {r['accuracy']:.3f}  b32 {r['throughput']['samples_per_s']:8.1f}/s  x{r['speedup']:.2f}"
              + (f"  vs ref x{r['throughput_vs_reference']:.2f}" if ref else "")
              + f"  {r['size']['weights_mb']:.1f} MB")


if __name__ == "__main__":
    main()
