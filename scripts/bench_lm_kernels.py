"""SmolLM2-135M weight-only Linears: packed CPU kernels on vs off (dequantize per call), side by side in one run.

    nice python scripts/bench_lm_kernels.py --threads 1 --rounds 3 -o scripts/results/bench_lm_kernels.json

Sections of the result:

* ``linear``: one Linear of the model's shapes (576 -> 1536 and 1536 -> 576), microseconds per call at
  ``--rows`` rows, for the packed kernel, the bfloat16 dequantize + GEMM path, the float32 dequantize path (the
  kernels off) and float32 ``F.linear`` (the float model); medians over interleaved rounds. This is what
  :data:`hf_optim.quantize.kernels.KERNEL_MAX_ROWS` is chosen from.
* ``rows`` (one per variant and kernel setting): greedy decode tokens/s (KV cache, ``--prompt`` -token prompts, ``--new-tokens`` new tokens, batch 1 and
  8) of fp32 and of each quantized variant with the kernels on and off, every variant once per round, rounds
  interleaved, medians; ``vs_fp32`` is the ratio to fp32 in the same rounds. Perplexity (kernels on and off) on
  bench_lm's slice: the first ``--tokens`` tokens of ``load_text("bbc-news")["test"]``, window 512, stride 256.
* ``profile``: where one batch-1 decode step of the int4 g32 model (kernels on) spends its time
  (``torch.profiler``), next to the time reading its int4 weights once would take at the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_optim  # noqa: E402,F401
from hf_optim.data import builtin_model  # noqa: E402
from hf_optim.evaluation.harness import BenchRun, interleaved, timed  # noqa: E402
from hf_optim.evaluation.lm import _generate, perplexity, text_token_ids  # noqa: E402
from hf_optim.quantize import QuantizeConfig, kernels  # noqa: E402
from hf_optim.quantize.apply import quantize_model_  # noqa: E402
from hf_optim.quantize.modules import Int4WeightOnlyLinear, Int8WeightOnlyLinear, WeightOnlyLinear  # noqa: E402

VARIANTS = {  # name: (what, QuantizeConfig fields)
    "int8-rtn": ("int8 weight-only, per output channel, round-to-nearest", dict(scheme="int8_weight_only")),
    "int4-rtn-g128-asym": ("int4 weight-only, group 128 (576 = 4x128 + 64), asymmetric, round-to-nearest",
                           dict(scheme="int4_weight_only", group_size=128, symmetric=False, partial_groups=True)),
    "int4-rtn-g32-sym": ("int4 weight-only, group 32, symmetric, round-to-nearest",
                         dict(scheme="int4_weight_only", group_size=32)),
}
LINEAR_MODULES = {"int4-g128-asym": (Int4WeightOnlyLinear, dict(group_size=128, symmetric=False, partial_groups=True)),
                  "int4-g32-sym": (Int4WeightOnlyLinear, dict(group_size=32)),
                  "int8": (Int8WeightOnlyLinear, {})}


def set_kernels(model, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.use_kernel = None if on else False


def linear_section(rows: list[int], rounds: int) -> dict:
    """Microseconds per call of each path, per module kind, shape and row count."""
    out = {}
    torch.manual_seed(0)
    for shape in ((576, 1536), (1536, 576)):
        lin = torch.nn.Linear(*shape)
        for kind, (cls, kw) in LINEAR_MODULES.items():
            mod = cls.from_linear(lin, **kw)
            for m in rows:
                x = torch.randn(m, shape[0])
                with torch.inference_mode():
                    packed = mod._packed(x)

                    def bf16_dequantize(mod=mod, x=x):  # linear_packed's path above KERNEL_MAX_ROWS
                        return F.linear(x.to(torch.bfloat16), mod.dequantized_weight(torch.bfloat16)).float() + mod.bias

                    paths = {"kernel": lambda mod=mod, x=x, p=packed: kernels.linear_packed(x, p, mod.bias),
                             "bf16_dequantize": bf16_dequantize,
                             "fp32_dequantize": lambda mod=mod, x=x: F.linear(x, mod.dequantized_weight(), mod.bias),
                             "fp32_linear": lambda x=x: lin(x)}
                    reps = max(1, min(5, 64 // m))
                    runs = interleaved({k: timed(_repeat(f, reps)) for k, f in paths.items()}, rounds)
                out[f"{kind} {shape[0]}->{shape[1]} rows={m}"] = {
                    **{f"{k}_us": round(statistics.median(v) / reps * 1e6, 1) for k, v in runs.items()},
                    **{f"{k}_best_us": round(min(v) / reps * 1e6, 1) for k, v in runs.items()}}
                print(f"linear {kind} {shape} rows={m}: {out[f'{kind} {shape[0]}->{shape[1]} rows={m}']}", flush=True)
    return out


def _repeat(fn, n):
    def run():
        for _ in range(n):
            fn()
    return run


def decode_section(models: dict, ids, args) -> dict:
    """Decode tokens/s per (variant, kernels) and batch, interleaved rounds."""
    out = {}
    for b in (1, 8):
        prompt = ids[0, :b * args.prompt].reshape(b, args.prompt)

        def gen(model, on, prompt=prompt):
            def run():
                set_kernels(model, on)
                return _generate(model, prompt, 1), _generate(model, prompt, args.new_tokens)
            return run

        calls = {name: gen(model, on) for name, (model, on) in models.items()}
        for name, (model, on) in models.items():  # warm-up: packing, allocator
            set_kernels(model, on)
            _generate(model, prompt, 2)
        runs = interleaved(calls, args.rounds, warmup=0)
        for name in calls:
            ttft = statistics.median(r[0] for r in runs[name])
            decode = statistics.median(r[1] for r in runs[name]) - ttft
            best = min(r[1] - r[0] for r in runs[name])
            out.setdefault(name, {})[f"batch_{b}"] = {
                "ttft_ms": round(ttft * 1e3, 1), "decode_tokens_per_s": round((args.new_tokens - 1) * b / decode, 2),
                "best_decode_tokens_per_s": round((args.new_tokens - 1) * b / best, 2)}
        base = out["fp32"][f"batch_{b}"]["decode_tokens_per_s"]
        for name in calls:
            row = out[name][f"batch_{b}"]
            row["vs_fp32"] = round(row["decode_tokens_per_s"] / base, 3)
        print({n: out[n][f"batch_{b}"] for n in calls}, flush=True)
    return out


def profile_section(model, ids, args) -> dict:
    """Self CPU time of the top ops of one batch-1 decode step, and the int4 weight bytes that step reads."""
    from torch.profiler import ProfilerActivity, profile

    set_kernels(model, True)
    prompt = ids[:, :args.prompt]
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        past = out.past_key_values
        for _ in range(3):  # warm (and the cache grows a little: the profiled step is a normal one)
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=nxt, past_key_values=past, use_cache=True)
    step_ms = (time.perf_counter() - start) * 1e3
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 3),
            "share": round(e.self_cpu_time_total / total_us, 3)} for e in events[:12]]
    packed_bytes = sum(m.weight.numel() + m.weight_scale.numel() * 2 * (1 if m.symmetric else 2)
                       for m in model.modules() if isinstance(m, WeightOnlyLinear))
    head_bytes = model.get_output_embeddings().weight.numel() * 4
    src = torch.empty(64 * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy_s = min(timed(lambda: dst.copy_(src))() for _ in range(5))
    gbps = 2 * src.numel() / copy_s / 1e9  # read + write
    return {"step_ms_under_profiler": round(step_ms, 2), "top_ops_by_self_time": top,
            "int4_weight_bytes": packed_bytes, "fp32_head_bytes": head_bytes,
            "copy_bandwidth_gb_s": round(gbps, 2),
            "weights_read_ms_at_that_bandwidth": round((packed_bytes + head_bytes) / (gbps * 1e9) * 1e3, 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4096, help="perplexity tokens (bench_lm's slice)")
    ap.add_argument("--rows", default="1,8,16,64,512", help="rows of the linear section")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: linear, decode, perplexity, profile")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "bench_lm_kernels.json"))
    args = ap.parse_args(argv)
    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {}
    if "linear" not in skip:
        result["linear"] = linear_section([int(r) for r in args.rows.split(",")], args.rounds)
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)
    models = {"fp32": (AutoModelForCausalLM.from_pretrained(src).eval(), True)}
    rows = {"fp32": {"what": "float32 (as packaged)"}}
    for name, (what, fields) in VARIANTS.items():
        model = AutoModelForCausalLM.from_pretrained(src).eval()
        quantize_model_(model, QuantizeConfig(model=str(src), task="bbc-news", **fields))
        kinds = ",".join(sorted({m.kernel for m in model.modules() if isinstance(m, WeightOnlyLinear)}))
        for on in (True, False):
            key = f"{name} kernels={'on' if on else 'off'}"
            models[key] = (model, on)
            rows[key] = {"what": what, "path": kinds if on else "dequantize"}
    if "perplexity" not in skip:
        for name, (model, on) in models.items():
            set_kernels(model, on)
            t = time.time()
            rows[name]["perplexity"] = perplexity(model, ids, 512, 256)["perplexity"]
            rows[name]["perplexity_s"] = round(time.time() - t, 1)
            print(name, rows[name], flush=True)
    if "decode" not in skip:
        for name, batches in decode_section(models, ids, args).items():
            for b, r in batches.items():
                rows[name].update({f"{b}_decode_tok_s": r["decode_tokens_per_s"], f"{b}_vs_fp32": r["vs_fp32"],
                                   f"{b}_best_tok_s": r["best_decode_tokens_per_s"], f"{b}_ttft_ms": r["ttft_ms"]})
    if "profile" not in skip:
        result["profile"] = profile_section(models["int4-rtn-g32-sym kernels=on"][0], ids, args)
        print(result["profile"], flush=True)
    out = run.write(args.output, rows, model="SmolLM2-135M-Instruct (builtin_model('smollm2-135m'))",
                    decode_setup={"prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "rounds": args.rounds,
                                  "batches": [1, 8], "greedy": True, "kv_cache": True, "threads": args.threads,
                                  "note": "median over interleaved rounds; decode = total - time to first token"},
                    perplexity_setup={"text": "load_text('bbc-news')['test']", "tokens": args.tokens,
                                      "context": 512, "stride": 256},
                    kernel_max_rows=dict(kernels.KERNEL_MAX_ROWS), **result)
    print(f"wrote {args.output}")
    return out


if __name__ == "__main__":
    main()
