"""Serving benchmark: the inference engine vs one-request-at-a-time vs fixed-size batching without buckets.

Real movie-sentiment test sentences are sent by ``--clients`` concurrent client threads, each waiting for its
answer before sending the next (a closed loop, like users of a web service). Every mode serves the same model
object, the same sentences and the same clients; the modes are interleaved for ``--rounds`` rounds and the
medians reported (:func:`hf_optim.evaluation.harness.interleaved`, the order rotated each round), so a noisy shared
machine affects them alike. A second stream, where ``--repeat-rate`` of the
requests repeat earlier sentences, measures the result cache (engine with cache vs engine without).

    python scripts/bench_inference.py --threads 2 -o scripts/results/bench_inference.json     # make bench-engine

Modes:
  one_at_a_time   a server that tokenizes and runs one request at a time (batch 1, no padding);
  fixed_batching  the engine with a single length bucket: batches of up to max_batch_size, padded to the
                  longest member of the batch (dynamic batching without length bucketing);
  engine          the engine with length buckets;
  engine_merged   the engine with length buckets and ``merge_padding`` (``--merge-padding``): a batch run before
                  it is full is topped up from neighbouring buckets while its padded share stays within bounds;
  engine_cache    the engine with a result cache (repeat stream only; ``engine`` on the same stream is the
                  reference).

Torch runs with ``torch.set_num_threads(--threads)`` and one inter-op thread, set before any model runs;
``TOKENIZERS_PARALLELISM=false`` keeps the tokenizer from starting its own pool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402


def run_clients(infer, texts: list[str], clients: int) -> dict:
    """Send ``texts`` from ``clients`` threads (closed loop); returns throughput, latency percentiles, outputs."""
    next_i = iter(range(len(texts)))
    lock = threading.Lock()
    latencies = np.zeros(len(texts))
    outputs: list = [None] * len(texts)
    errors: list = []

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                outputs[i] = infer(texts[i])
            except Exception as e:  # reported, never hidden
                errors.append(repr(e))
            latencies[i] = (time.perf_counter() - t0) * 1e3

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"requests_per_s": len(texts) / wall, "wall_s": wall, "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "outputs": np.stack(outputs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="builtin model name or a model directory")
    ap.add_argument("--n", type=int, default=1000, help="test sentences per pass")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a small shared machine a second thread stalls every op)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--buckets", default="16,24,32,48,64,128", help="length bucket bounds (tokens)")
    ap.add_argument("--merge-padding", type=float, default=0.3,
                    help="merge_padding of the engine_merged mode (0 leaves that mode out)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    ap.add_argument("--repeat-rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                    help="tuned: hf_optim.tune_allocator() before anything runs (every mode benefits alike)")
    ap.add_argument("-o", "--out", type=Path, help="write the JSON here (it is always printed)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_optim.cpu import allocator_state, tune_allocator
    from hf_optim.data import builtin_model, load_task
    from hf_optim.evaluation.harness import BenchRun, interleaved
    from hf_optim.inference import InferenceEngine

    run = BenchRun(args, argv, threads=args.threads)

    if args.allocator == "tuned":
        tune_allocator()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    path = builtin_model(args.model) if not Path(args.model).exists() else Path(args.model)
    torch.manual_seed(args.seed)
    # speed does not depend on whether the classification head is trained
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = list(load_task("movie-sentiment")["test"]["text"][: args.n])
    buckets = tuple(int(b) for b in args.buckets.split(","))
    max_len = buckets[-1]

    serial_lock = threading.Lock()

    def one_at_a_time(text):
        with serial_lock, torch.inference_mode():
            enc = tok(text, truncation=True, max_length=max_len, return_tensors="pt")
            return model(**enc).logits[0].numpy()

    common = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "truncation": True,
              "max_queue": 100_000}
    engines = {"fixed_batching": InferenceEngine(model, tok, length_buckets=(max_len,), **common),
               "engine": InferenceEngine(model, tok, length_buckets=buckets, **common)}
    if args.merge_padding > 0:
        engines["engine_merged"] = InferenceEngine(model, tok, length_buckets=buckets,
                                                   merge_padding=args.merge_padding, **common)
    modes = {"one_at_a_time": one_at_a_time,
             **{name: (lambda e: lambda text: e.submit(text).result())(e) for name, e in engines.items()}}

    def offline_sorted_batches() -> dict:
        """No server: all sentences known up front, sorted by length, batched. The ceiling for any batcher."""
        start = time.perf_counter()
        enc = tok(texts, truncation=True, max_length=max_len)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        with torch.inference_mode():
            for j in range(0, len(order), args.max_batch_size):
                batch = tok.pad({"input_ids": [enc[i] for i in order[j:j + args.max_batch_size]]}, return_tensors="pt")
                model(**batch)
        return {"requests_per_s": len(texts) / (time.perf_counter() - start)}

    for infer in modes.values():  # warm-up: allocator, kernels, thread pools
        run_clients(infer, texts[:64], args.clients)
    engine_stats = {}

    def serve(name):
        def one_pass() -> dict:
            if name in engines:
                engines[name].reset_stats()
            out = run_clients(modes[name], texts, args.clients)
            if name in engines:
                engine_stats[name] = engines[name].stats()
            return out
        return one_pass

    results = interleaved({name: serve(name) for name in modes}, args.rounds, warmup=0)

    ceiling = [offline_sorted_batches()["requests_per_s"] for _ in range(args.rounds)]
    ref = results["one_at_a_time"][0]["outputs"]
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "requests_per_s": round(float(np.median([r["requests_per_s"] for r in runs])), 1),
            "requests_per_s_runs": [round(r["requests_per_s"], 1) for r in runs],
            "latency_ms": {k: round(float(np.median([r["latency_ms"][k] for r in runs])), 2) for k in ("p50", "p95", "p99")},
            "max_abs_diff_vs_one_at_a_time": float(np.abs(runs[0]["outputs"] - ref).max()),
            "argmax_agreement": float((runs[0]["outputs"].argmax(1) == ref.argmax(1)).mean()),
        }
        if name in engine_stats:
            s = engine_stats[name]
            summary[name]["batches"] = {"count": s["batches"]["count"], "mean_size": s["batches"]["mean_size"]}
            summary[name]["padding_ratio"] = s["padding_ratio"]
            summary[name]["queue_wait_ms"] = s["queue_wait_ms"]
    eng = summary["engine"]["requests_per_s"]
    summary["offline_sorted_batches"] = {"requests_per_s": round(float(np.median(ceiling)), 1),
                                         "requests_per_s_runs": [round(c, 1) for c in ceiling],
                                         "note": "no clients, no waiting: every sentence known up front, sorted by "
                                                 "length, batched; the upper bound for any online batcher"}

    # the cache: the same engine settings on a stream where repeat_rate of the requests repeat earlier ones
    rng = np.random.default_rng(args.seed)
    n_rep = int(round(args.repeat_rate * args.n))
    base = texts[: args.n - n_rep]
    stream = base + [base[int(i)] for i in rng.integers(0, len(base), size=n_rep)]
    stream = [stream[int(i)] for i in rng.permutation(len(stream))]
    cached = InferenceEngine(model, tok, length_buckets=buckets, cache=True, **common)
    plain = engines["engine"]
    run_clients(lambda t: cached.submit(t).result(), texts[-32:], args.clients)  # warm-up on unrelated inputs

    def plain_pass() -> dict:
        plain.reset_stats()
        return run_clients(lambda t: plain.submit(t).result(), stream, args.clients)

    def cached_pass() -> dict:
        cached.cache.clear()  # every round starts cold: hits come only from repeats within the stream
        cached.cache.reset_stats()
        cached.reset_stats()
        return run_clients(lambda t: cached.submit(t).result(), stream, args.clients)

    cache_runs = interleaved({"engine": plain_pass, "engine_cache": cached_pass}, args.rounds, warmup=0)
    cstats = cached.stats()
    cache_summary = {
        "repeat_rate": args.repeat_rate, "distinct_inputs": len(set(stream)), "requests": len(stream),
        **{name: {"requests_per_s": round(float(np.median([r["requests_per_s"] for r in runs])), 1),
                  "latency_ms_p95": round(float(np.median([r["latency_ms"]["p95"] for r in runs])), 2)}
           for name, runs in cache_runs.items()},
        "cache_hits": cstats["requests"]["cache_hits"], "coalesced": cstats["requests"]["coalesced"],
        "hit_rate": cstats["cache"]["hit_rate"],
    }
    cache_summary["speedup"] = round(cache_summary["engine_cache"]["requests_per_s"]
                                     / cache_summary["engine"]["requests_per_s"], 3)
    for e in (*engines.values(), cached):
        e.close()

    report = run.write(
        args.out, summary,
        model=str(args.model), sentences=len(texts), clients=args.clients, rounds=args.rounds,
        engine_config={"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                       "length_buckets": list(buckets), "fixed_batching_buckets": [max_len],
                       "merge_padding": args.merge_padding},
        ratios={"engine_vs_one_at_a_time": round(eng / summary["one_at_a_time"]["requests_per_s"], 3),
                "engine_vs_fixed_batching": round(eng / summary["fixed_batching"]["requests_per_s"], 3),
                "engine_vs_offline_ceiling": round(eng / summary["offline_sorted_batches"]["requests_per_s"], 3),
                "ceiling_vs_one_at_a_time": round(summary["offline_sorted_batches"]["requests_per_s"]
                                                  / summary["one_at_a_time"]["requests_per_s"], 3),
                **({"engine_merged_vs_one_at_a_time": round(summary["engine_merged"]["requests_per_s"]
                                                            / summary["one_at_a_time"]["requests_per_s"], 3),
                    "engine_merged_vs_fixed_batching": round(summary["engine_merged"]["requests_per_s"]
                                                             / summary["fixed_batching"]["requests_per_s"], 3)}
                   if "engine_merged" in summary else {})},
        targets={"engine_vs_one_at_a_time": 3.0, "engine_vs_fixed_batching": 1.3},
        cache=cache_summary, allocator=allocator_state())
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
