"""fp32 vs hf_optim's quantization schemes (and torch.ao's quantize_dynamic) on a fine-tuned classifier.

    nice -n 10 python scripts/bench_quant_minilm.py --teacher runs/movie-sentiment/teacher --threads 1 \
        -o scripts/results/bench_quant_minilm.json

``--allocator tuned`` (the default) applies :func:`hf_optim.tune_allocator` before anything runs, so every
variant (FP32 included) reuses its activation buffers instead of page-faulting fresh ones in every forward;
``--allocator default`` measures with glibc's defaults.

Every variant is quantized and saved by hf_optim, reloaded with plain ``from_pretrained`` and measured in
one process: test accuracy, batch-1 p50 latency, batch-32 throughput (rounds interleaved across the
variants so machine noise hits all of them alike; medians reported), weights on disk and Linear bytes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import hf_optim  # noqa: F401 - from_pretrained understands hf_optim checkpoints

SCHEMES = ("int8_dynamic", "int8_static", "int8_qat", "int8_weight_only", "int4_weight_only", "bf16")


def main() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_optim.data import load_task
    from hf_optim.evaluation.bench import dir_size_mb, latency_ms
    from hf_optim.evaluation.classifier import TorchClassifier
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

    models = {name: AutoModelForSequenceClassification.from_pretrained(v["dir"]).eval() for name, v in variants.items()}
    ref = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    models["torch.ao quantize_dynamic (reference)"] = torch.ao.quantization.quantize_dynamic(
        ref, {torch.nn.Linear}, dtype=torch.qint8)
    clfs = {name: TorchClassifier(m, tok) for name, m in models.items()}

    rows = {}
    order = np.argsort([len(t) for t in texts], kind="stable")
    for name, clf in clfs.items():
        preds = np.empty(len(texts), dtype=np.int64)
        for i in range(0, len(texts), 64):
            idx = order[i:i + 64]
            preds[idx] = clf([texts[j] for j in idx]).argmax(-1)
        v = variants.get(name, {})
        rows[name] = {"accuracy": float((preds == labels).mean()),
                      "latency_ms": latency_ms(clf, texts[:args.latency_samples]),
                      **({"size": dir_size_mb(v["dir"])} if "dir" in v else {}),
                      **linear_weight_bytes(models[name]),
                      **({"quantize": v["quantize"]} if "quantize" in v else {})}
        print(name, rows[name]["accuracy"], rows[name]["latency_ms"]["p50"], flush=True)

    batches = [texts[i:i + 32] for i in range(0, args.throughput_samples, 32)]
    rates: dict[str, list[float]] = {n: [] for n in clfs}
    for clf in clfs.values():
        clf(batches[0])  # warm-up
    for _ in range(args.rounds):  # interleaved: noise from other processes spreads over every variant
        for name, clf in clfs.items():
            t = time.perf_counter()
            for b in batches:
                clf(b)
            rates[name].append(sum(len(b) for b in batches) / (time.perf_counter() - t))
    base = statistics.median(rates["fp32"])
    ao = statistics.median(rates["torch.ao quantize_dynamic (reference)"])
    for name in clfs:
        med = statistics.median(rates[name])
        rows[name]["throughput_b32"] = {"samples_per_s": round(med, 2), "rounds": [round(r, 2) for r in rates[name]]}
        rows[name]["speedup_vs_fp32"] = round(med / base, 3)
        rows[name]["throughput_vs_torch_ao"] = round(med / ao, 3)
        rows[name]["accuracy_drop_points"] = round(100 * (rows["fp32"]["accuracy"] - rows[name]["accuracy"]), 2)
    report = {"command": "python scripts/bench_quant_minilm.py " + " ".join(sys.argv[1:]),
              "teacher": str(teacher), "examples": len(texts),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "engine": torch.backends.quantized.engine,
                          "allocator": allocator_state()},
              "rows": rows}
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "accuracy_drop_points", "speedup_vs_fp32",
                                              "throughput_vs_torch_ao")} for n, r in rows.items()}, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
