"""Structured pruning: the pruned model vs the unpruned model it started from, side by side in one process.

    python scripts/bench_prune.py --base runs/movie-sentiment/distill --pruned runs/movie-sentiment/prune \
        --threads 1 -o scripts/results/bench_prune.json                            # make bench-classifier

Both load with plain ``AutoModelForSequenceClassification.from_pretrained`` (the pruned one through hf_optim's
``quantization_config``). Reported: test accuracy (1,000 movie-sentiment sentences), batch-1 latency, batch-32
throughput (interleaved rounds, medians), parameters, weights on disk, per-layer heads and FFN neurons.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import hf_optim  # noqa: F401 - from_pretrained understands pruned checkpoints


def main() -> None:
    from hf_optim.data import load_task
    from hf_optim.evaluation.bench import dir_size_mb, side_by_side
    from hf_optim.evaluation.classifier import load_classifier
    from hf_optim.evaluation.harness import BenchRun
    from hf_optim.prune.structure import structure_summary

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the unpruned model directory")
    ap.add_argument("--pruned", required=True, help="the pruned model directory")
    ap.add_argument("-o", "--output")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--throughput-samples", type=int, default=512)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); on a shared "
                                                "machine 1 thread avoids spin-waiting against other processes")
    args = ap.parse_args()
    run = BenchRun(args, threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)

    test = load_task("movie-sentiment")["test"]
    dirs = {"unpruned": Path(args.base), "pruned": Path(args.pruned)}
    clfs = {name: load_classifier(d) for name, d in dirs.items()}
    rows = side_by_side(clfs, test["text"], test["label"], rounds=args.rounds,
                        throughput_samples=args.throughput_samples, baseline="unpruned")
    for name, d in dirs.items():
        rows[name].update({"dir": str(d), "size": dir_size_mb(d), **structure_summary(clfs[name].model)})
    run.write(args.output, rows, task="movie-sentiment", split="test", examples=len(test),
              throughput_ratio=rows["pruned"]["speedup"], accuracy_drop_points=rows["pruned"]["accuracy_drop_points"])
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "speedup", "params", "heads", "ffn")} for n, r in rows.items()},
                     indent=1))


if __name__ == "__main__":
    main()
