"""What GPTQ + tuning's calibration costs on SmolLM2-135M, per phase, with and without reusing the float model's
targets, on 1 and 2 threads; and the perplexity the result reaches.

    python scripts/bench_calibration.py --threads 1,2 -o scripts/results/bench_calibration.json

The stage ``int4-gptq`` of ``recipes/smollm2-int4.yaml`` made small: int4 group 128 asymmetric with partial
groups, act-order GPTQ, ``lm_head`` int4 and input embeddings int8, on ``--samples`` chunks of ``--max-length``
BBC train tokens in batches of ``--batch-size``, ``--tune-steps`` layer tuning and ``--e2e-steps`` end-to-end
tuning steps. ``cache-off`` recomputes the float model's logits at every use and dequantizes the grid per batch
in the loss passes (:class:`hf_optim.quantize.gptq.calibration.CalibrationCache` ``enabled=False``, the
behaviour before the cache); ``cache-on`` is the default. Variants run in interleaved rounds, each from a fresh
copy of the float model; ``identical_to_cache_off``: every tensor of the quantized model equals cache-off's at the
same thread count. Perplexity as in ``bench_lm`` (:func:`hf_optim.evaluation.lm.perplexity`, the stratified
``bbc-news`` test slice, ``--tokens`` tokens, window ``--context``, stride ``--stride``) on the variant's threads.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_optim  # noqa: E402,F401
from hf_optim.data import builtin_model  # noqa: E402
from hf_optim.evaluation.harness import BenchRun, interleaved  # noqa: E402
from hf_optim.evaluation.lm import perplexity, text_token_ids  # noqa: E402
from hf_optim.quantize import QuantizeConfig  # noqa: E402
from hf_optim.quantize.gptq import calibration, gptq_quantize_  # noqa: E402
from hf_optim.quantize.stage import text_chunks  # noqa: E402

PHASES = ("seconds", "float_targets_s", "gptq_s", "layer_tuning_s", "e2e_tuning_s", "cpu_s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tune-steps", type=int, default=5)
    ap.add_argument("--e2e-steps", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "bench_calibration.json"))
    args = ap.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    run = BenchRun(args, argv, threads=max(thread_counts))
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    float_model = AutoModelForCausalLM.from_pretrained(src).eval()
    chunks = text_chunks(tok, "bbc-news", "train", args.samples, args.max_length, 42)
    batches = [{"input_ids": chunks[i:i + args.batch_size]} for i in range(0, len(chunks), args.batch_size)]
    config = QuantizeConfig(model="builtin:smollm2-135m", scheme="int4_weight_only", method="gptq", group_size=128,
                            partial_groups=True, symmetric=False, gptq_tune_steps=args.tune_steps,
                            gptq_e2e_steps=args.e2e_steps, calibration_samples=args.samples,
                            max_length=args.max_length, batch_size=args.batch_size, lm_head=True, embeddings="int8")
    models: dict[str, torch.nn.Module] = {}

    def variant(name: str, threads: int, cache: bool):
        def go() -> dict:
            model = copy.deepcopy(float_model)
            torch.set_num_threads(threads)
            calibration.CACHE.enabled = cache
            cost: dict = {}
            start, cpu = time.perf_counter(), time.process_time()
            try:
                gptq_quantize_(model, batches, config, cost=cost)
            finally:
                calibration.CACHE.enabled = True
            # CPU seconds of all the process's threads: on a shared machine less sensitive to other load than wall
            cost.update(wall_s=round(time.perf_counter() - start, 2), cpu_s=round(time.process_time() - cpu, 2))
            models[name] = model
            return cost
        return go

    variants = {f"cache-{'on' if cache else 'off'}-t{t}": variant(f"cache-{'on' if cache else 'off'}-t{t}", t, cache)
                for t in thread_counts for cache in (False, True)}
    measured = interleaved(variants, args.rounds, warmup=0)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)
    rows = {}
    for name, costs in measured.items():
        threads = int(name.rsplit("-t", 1)[1])
        torch.set_num_threads(threads)
        with torch.inference_mode():
            ppl = perplexity(models[name], ids, args.context, args.stride)
        row = {k: statistics.median(c[k] for c in costs) for k in PHASES if all(k in c for c in costs)}
        row.update(threads=threads, runs=costs, perplexity=round(ppl["perplexity"], 4),
                   peak_rss_mb=max(c["peak_rss_mb"] for c in costs))
        off = models.get(name.replace("cache-on", "cache-off"))
        if name.startswith("cache-on") and off is not None:
            a, b = models[name].state_dict(), off.state_dict()
            row["identical_to_cache_off"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        rows[name] = row
    ratios = {f"t{t}": {k: round(rows[f"cache-off-t{t}"][k] / rows[f"cache-on-t{t}"][k], 3)
                        for k in PHASES if rows[f"cache-on-t{t}"].get(k)} for t in thread_counts}
    if len(thread_counts) > 1:
        a, b = min(thread_counts), max(thread_counts)
        ratios[f"cache-on t{a}/t{b}"] = {k: round(rows[f"cache-on-t{a}"][k] / rows[f"cache-on-t{b}"][k], 3)
                                         for k in PHASES if rows[f"cache-on-t{b}"].get(k)}
    return run.write(args.output, rows, ratios=ratios, note=(
        f"{args.samples} x {args.max_length} calibration tokens, {args.tune_steps} layer / {args.e2e_steps} "
        f"end-to-end tuning steps; {args.rounds} interleaved round(s), medians; ratios are cache-off / cache-on "
        "(and 1 / 2 threads) of the median seconds"))


if __name__ == "__main__":
    main()
