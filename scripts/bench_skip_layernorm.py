"""Fused vs split ``SkipLayerNormalization`` in the exported MiniLM-L6 graph: which form the export setting
``split_skip_layernorm`` should default to.

Exports the packaged MiniLM-L6 (a 2-way classification head built from its config, untrained: speed only) once,
optimizes it at O2 twice through :func:`hf_optim.export.graph.optimize_onnx` (``split="off"``: the graph ORT's
optimizer fused; ``split="on"``: the residual + LayerNorm split back), and quantizes each with dynamic INT8 (the
export default). The four graphs run in ONNX Runtime sessions made as exported models are loaded
(:func:`~hf_optim.export.runtime.make_session`), on real sentences, in interleaved rounds (the order rotated each
round, so a busy machine slows every graph alike): per round, ``--latency-calls`` batch-1 calls (mean per call)
and ``--batch-calls`` calls of one batch of 32 (median); each number is the median over rounds. It also runs
``auto``'s probe (:func:`~hf_optim.export.graph.skip_layernorm_timings`) to compare its decision with the model's.

    python scripts/bench_skip_layernorm.py -o scripts/results/bench_skip_layernorm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def _build_graphs(src: Path, work: Path, backend: str) -> tuple[dict[str, Path], dict]:
    from hf_optim.export.graph import op_counts, optimize_onnx
    from hf_optim.export.onnx import export_onnx
    from hf_optim.export.ort_quant import quantize_dynamic_onnx

    onnx_path = export_onnx(src, work / "export", "sequence-classification", backend)
    graphs, ops = {}, {}
    for split in ("off", "on"):
        form = "fused" if split == "off" else "split"
        fp32, record = optimize_onnx(onnx_path, onnx_path.parent / f"o2_{form}.onnx", "O2", backend, split)
        assert record["decision"] == split, record
        graphs[f"fp32_{form}"] = fp32
        graphs[f"int8_{form}"] = quantize_dynamic_onnx(fp32, fp32.parent / f"o2_{form}_int8.onnx", backend)
    for name, path in graphs.items():
        counts = op_counts(path)
        ops[name] = {k: counts.get(k, 0) for k in ("SkipLayerNormalization", "Sum", "LayerNormalization", "BiasGelu",
                                                   "Gelu", "Attention", "QAttention", "MatMulInteger")}
    return graphs, ops


def _feeds(tok, texts: list[str], input_names: list[str], max_length: int) -> dict:
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    feeds = {n: enc[n].astype(np.int64) for n in input_names if n in enc}
    if "token_type_ids" in input_names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians are reported)")
    p.add_argument("--latency-calls", type=int, default=24, help="batch-1 calls per graph per round")
    p.add_argument("--batch-calls", type=int, default=3, help="batch-32 calls per graph per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--backend", default="auto", choices=["auto", "optimum", "torch"])
    p.add_argument("-o", "--output", help="write the JSON here too")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from hf_optim.data import load_task
    from hf_optim.export.graph import skip_layernorm_timings
    from hf_optim.export.onnx import resolve_backend
    from hf_optim.evaluation.harness import BenchRun, interleaved
    from hf_optim.export.runtime import make_session

    from bench_export import _untrained_classifier  # scripts/ is on the path when this file runs

    run = BenchRun(args, argv=argv, threads=args.threads)
    backend = resolve_backend(args.backend)
    output = Path(args.output).resolve() if args.output else None
    work = Path(tempfile.mkdtemp(prefix="bench-sln-"))
    cwd = os.getcwd()
    os.chdir(work)  # Optimum writes scratch files to the CWD in places: keep them in the scratch dir
    try:
        src = _untrained_classifier(work)
        graphs, ops = _build_graphs(src, work, backend)
        tok = AutoTokenizer.from_pretrained(src)
        test = load_task("movie-sentiment")["test"].shuffle(seed=0)
        texts = list(test["text"][:max(args.latency_calls, args.batch_size)])
        sessions = {n: make_session(path, args.threads) for n, path in graphs.items()}
        names = list(sessions)
        input_names = [i.name for i in sessions[names[0]].get_inputs()]
        single = [_feeds(tok, [t], input_names, 128) for t in texts[:args.latency_calls]]
        batch = _feeds(tok, texts[:args.batch_size], input_names, 128)
        # the same logits from both forms: the split is a rewrite, not an approximation
        diffs = {q: float(np.abs(sessions[f"{q}_fused"].run(None, batch)[0] -
                                 sessions[f"{q}_split"].run(None, batch)[0]).max()) for q in ("fp32", "int8")}
        def one_round(sess):
            def measure():
                start = time.perf_counter()
                for feeds in single:
                    sess.run(None, feeds)
                batch1 = (time.perf_counter() - start) * 1e3 / len(single)
                calls = []
                for _ in range(args.batch_calls):
                    start = time.perf_counter()
                    sess.run(None, batch)
                    calls.append((time.perf_counter() - start) * 1e3)
                return {"batch1": batch1, "batch32": float(np.median(calls))}
            return measure

        # every graph once per round, the order rotated (a busy machine slows every graph alike)
        results = interleaved({n: one_round(sessions[n]) for n in names}, rounds=args.rounds)
        per_round = {n: {k: [r[k] for r in results[n]] for k in ("batch1", "batch32")} for n in names}
        rows = []
        for name in names:
            quant, form = name.split("_")
            rows.append({"graph": name, "quantization": "none" if quant == "fp32" else "dynamic", "form": form,
                         "batch1_ms": round(float(np.median(per_round[name]["batch1"])), 3),
                         "batch32_ms": round(float(np.median(per_round[name]["batch32"])), 2),
                         "ops": ops[name]})
        # split / fused within each round (both ran under the same load), median over rounds; < 1: split faster
        ratios = {f"{q}_{b}": round(float(np.median(np.divide(per_round[f"{q}_split"][b],
                                                              per_round[f"{q}_fused"][b]))), 3)
                  for q in ("fp32", "int8") for b in ("batch1", "batch32")}
        # what auto's probe decides here, as the export runs it (ORT's default threads) and at --threads;
        # its rule: split when the split form is at least 20 % faster
        probes = {"default_threads": skip_layernorm_timings(384),
                  "threads": skip_layernorm_timings(384, threads=args.threads)}
        extra = {
            "backend": backend,
            "model": "minilm-l6 (packaged), untrained 2-way head from config; O2; max_length 128",
            "data": f"movie-sentiment test sentences (shuffled, seed 0): {len(single)} batch-1 calls per round "
                    f"(mean), {args.batch_calls} calls of one batch of {args.batch_size} "
                    f"({batch['input_ids'].shape[1]} tokens) per round (median); medians over {args.rounds} "
                    "interleaved rounds",
            "split_over_fused_paired_median": ratios, "max_logit_diff_split_vs_fused": diffs,
            "auto_probe": {k: {**v, "decision": "on" if v["split"] < 0.8 * v["fused"] else "off"}
                           for k, v in probes.items()},
            "auto_probe_shape": [8, 64, 384],
        }
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    result = run.write(output, rows, **extra)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    sys.exit(main())
