"""fp32 vs hf_optim's quantization schemes (and torch.ao's quantize_dynamic) on a fine-tuned classifier.

    python scripts/bench_quant_minilm.py --teacher runs/movie-sentiment/teacher --threads 1 \
        -o scripts/results/bench_quant_minilm.json                                 # make bench-classifier

``--allocator tuned`` (the default) applies :func:`hf_optim.tune_allocator` before anything runs, so every
variant (FP32 included) reuses its activation buffers instead of page-faulting fresh ones in every forward;
``--allocator default`` measures with glibc's defaults.

Every variant is quantized and saved by hf_optim, reloaded with plain ``from_pretrained`` and measured in
one process (:func:`hf_optim.evaluation.bench.side_by_side`): test accuracy, batch-1 p50 latency, batch-32
throughput (rounds interleaved across the variants so machine noise hits all of them alike; medians reported),
weights on disk and Linear bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import hf_optim  # noqa: F401 - from_pretrained understands hf_optim checkpoints
from hf_optim.quantize.schemes import SCHEMES as _ALL

SCHEMES = tuple(name for name in _ALL if name != "fp16")  # CPUs compute float16 slowly


def main() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_optim.data import load_task
    from hf_optim.evaluation.bench import dir_size_mb, side_by_side
    from hf_optim.evaluation.classifier import TorchClassifier
    from hf_optim.evaluation.harness import BenchRun
    from hf_optim.quantize.config import QuantizeConfig
    from hf_optim.quantize.stage import linear_weight_bytes, quantize_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--work", default="/tmp/hf_optim-quant-bench")
    ap.add_argument("-o", "--output")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--throughput-samples", type=int, default=512)
    ap.add_argument("--latency-samples", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--qat-samples", type=int, default=2000)
    ap.add_argument("--calibration-samples", type=int, default=256)
    ap.add_argument("--max-samples", type=int)
    ap.add_argument("--reuse", action="store_true", help="reuse quantized dirs already in --work")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    args = ap.parse_args()
    run = BenchRun(args, threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_optim.cpu import allocator_state, tune_allocator

    if args.allocator == "tuned":
        tune_allocator()

    teacher, work = Path(args.teacher), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    test = load_task("movie-sentiment")["test"]
    if args.max_samples:
        test = test.select(range(args.max_samples))
    texts, labels = test["text"], np.asarray(test["label"])
    tok = AutoTokenizer.from_pretrained(teacher)
    variants: dict[str, dict] = {"fp32": {"dir": teacher}}
    for scheme in args.schemes.split(","):
        out = work / scheme
        t = time.perf_counter()
        if not (args.reuse and (out / "config.json").exists()):
            cfg = QuantizeConfig(model=str(teacher), scheme=scheme, calibration_samples=args.calibration_samples,
                                 qat_max_train_samples=args.qat_samples)
            variants[scheme] = {"dir": out, "quantize": quantize_dir(teacher, out, cfg, progress=False)}
        else:
            variants[scheme] = {"dir": out}
        variants[scheme]["quantize_seconds"] = round(time.perf_counter() - t, 1)
        print(scheme, "quantized", variants[scheme].get("quantize"), flush=True)

    ao_name = "torch.ao quantize_dynamic (reference)"
    models = {name: AutoModelForSequenceClassification.from_pretrained(v["dir"]).eval() for name, v in variants.items()}
    ref = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    models[ao_name] = torch.ao.quantization.quantize_dynamic(
        ref, {torch.nn.Linear}, dtype=torch.qint8)
    clfs = {name: TorchClassifier(m, tok) for name, m in models.items()}

    rows = side_by_side(clfs, texts, labels, throughput_samples=args.throughput_samples,
                        latency_samples=args.latency_samples, rounds=args.rounds, baseline="fp32")
    ao = rows[ao_name]["throughput"]["samples_per_s"]
    for name, row in rows.items():
        v = variants.get(name, {})
        row.update({**({"size": dir_size_mb(v["dir"])} if "dir" in v else {}), **linear_weight_bytes(models[name]),
                    **({"quantize": v["quantize"]} if "quantize" in v else {}),
                    **({"quantize_seconds": v["quantize_seconds"]} if "quantize_seconds" in v else {})})
        row["throughput_vs_torch_ao"] = round(row["throughput"]["samples_per_s"] / ao, 3)
    run.write(args.output, rows, teacher=str(teacher), examples=len(texts),
              quantized_engine=torch.backends.quantized.engine, allocator=allocator_state())
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "accuracy_drop_points", "speedup",
                                              "throughput_vs_torch_ao")} for n, r in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
