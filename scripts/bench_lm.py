"""SmolLM2-135M weight-only quantization: perplexity, checkpoint size and decode speed, side by side in one run.

    python scripts/bench_lm.py --threads 1 --repeats 7 -o scripts/results/bench_lm.json      # make bench-lm

The packaged SmolLM2-135M weights were dequantized from a Q4_1 GGUF (4-bit, asymmetric, groups of 32
consecutive input features, ``w = min + q * d``), so asymmetric group-32 re-quantization lands on the same grid
and is almost lossless; the other group sizes and symmetric grids show what int4 costs on a model that was not
already 4-bit.

Hidden size 576 is not a multiple of 128: group 128 runs with ``partial_groups`` (each 576-wide row holds four
groups of 128 and one of 64; the 1536-wide down projections divide evenly).

Perplexity: the first ``--tokens`` tokens of ``load_text("bbc-news")["test"]`` (documents in stored order
joined by a blank line), sliding window ``--context`` / ``--stride`` (:func:`hf_optim.evaluation.lm.perplexity`).
Decode speed: greedy ``generate`` with the KV cache, 64-token prompts from the same text, median of
``--repeats`` runs of each model, the models interleaved per round (the machine is shared;
:func:`hf_optim.evaluation.harness.interleaved`).

GPTQ variants calibrate on ``calibration_samples`` chunks of ``--calibration-length`` tokens each, the number set per
variant in ``GPTQ_VARIANTS`` (more for the slower, better variants) unless ``--calibration-samples`` sets one for all.
One command writes the whole file; ``--only`` measures a subset (into a file of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_optim  # noqa: E402,F401
from hf_optim.data import builtin_model  # noqa: E402
from hf_optim.evaluation.harness import BenchRun, interleaved  # noqa: E402
from hf_optim.evaluation.lm import _generate, perplexity, text_token_ids  # noqa: E402
from hf_optim.quantize import QuantizeConfig  # noqa: E402
from hf_optim.quantize.apply import quantize_model_  # noqa: E402
from hf_optim.quantize.gptq import gptq_quantize_  # noqa: E402
from hf_optim.quantize.stage import text_chunks  # noqa: E402

RTN_GRID = [(gs, sym) for gs in (32, 64, 128) for sym in (True, False)]


# GPTQ settings of each GPTQ variant (column order unless act_order) and its calibration chunks
# (``calibration_samples``; --calibration-samples overrides it for every variant).
GPTQ_VARIANTS = {
    "int4-gptq-g128-asym": {"gptq_act_order": False, "calibration_samples": 16},
    "int4-gptq-g128-asym-clip": {"gptq_act_order": False, "gptq_clip_search": True, "calibration_samples": 16},
    "int4-gptq-g128-asym-act": {"gptq_act_order": True, "calibration_samples": 64},
    "int4-gptq-g128-asym-act-refit": {"gptq_act_order": True, "gptq_refit": True, "calibration_samples": 64},
    "int4-gptq-g128-asym-act-refit-clip": {"gptq_act_order": True, "gptq_refit": True, "gptq_clip_search": True,
                                           "calibration_samples": 64},
    "int4-gptq-g128-asym-act-tune": {"gptq_act_order": True, "gptq_tune_steps": 40, "calibration_samples": 128},
    "int4-gptq-g128-asym-act-tune-e2e": {"gptq_act_order": True, "gptq_tune_steps": 40, "gptq_e2e_steps": 40,
                                         "calibration_samples": 128},
}


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


def weights_mb(model, out: Path) -> float:
    model.save_pretrained(out)
    return round(sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**20, 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--calibration-samples", type=int, default=None,
                    help="calibration chunks of every GPTQ variant (default: each variant's own, see GPTQ_VARIANTS)")
    ap.add_argument("--calibration-length", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--scratch", help="checkpoint folder of an earlier run to reuse (derived variants)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode-speed measurement")
    ap.add_argument("-o", "--output", help="the JSON to write (default: scripts/results/bench_lm.json; required "
                                           "with --only, so a subset never replaces the full results)")
    args = ap.parse_args(argv)
    if args.output is None:
        if args.only:
            ap.error("--only measures a subset: name its file with -o")
        args.output = str(Path(__file__).parent / "results" / "bench_lm.json")
    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="bench-lm-"))

    def _config(**fields):
        return QuantizeConfig(model=str(src), task="bbc-news", **fields)

    def build(name):
        """(model, quantization info) for a variant name."""
        model = load(src)
        info = {}
        t = time.time()
        if name == "fp32":
            pass
        elif name == "int8-rtn":
            quantize_model_(model, _config(scheme="int8_weight_only"))
        elif name.startswith("int4-rtn"):
            _, _, g, kind = name.split("-")
            quantize_model_(model, _config(scheme="int4_weight_only", group_size=int(g[1:]), symmetric=kind == "sym",
                                           partial_groups=True))
        elif name in GPTQ_VARIANTS:
            settings = dict(GPTQ_VARIANTS[name])
            samples = settings.pop("calibration_samples")
            samples = args.calibration_samples or samples
            cal = text_chunks(tok, "bbc-news", "train", samples, args.calibration_length)
            batches = [{"input_ids": cal[i:i + 4]} for i in range(0, len(cal), 4)]
            info = gptq_quantize_(model, batches, _config(scheme="int4_weight_only", method="gptq", group_size=128,
                                                          symmetric=False, partial_groups=True, **settings))
        elif name.startswith("int4-gptq-g128-asym-") and name.endswith("head") or name.endswith("all-linear"):
            # The GPTQ checkpoint of this run (reloaded), with the head and the embedding table quantized too.
            model = load(scratch / "int4-gptq-g128-asym")
            head = ("int8_weight_only", None) if name.endswith("int8-head") else ("int4_weight_only", 128)
            quantize_model_(model, _config(scheme=head[0], group_size=head[1],
                                           symmetric=head[0] == "int8_weight_only", partial_groups=head[1] is not None,
                                           include=[r"^lm_head$"], lm_head=True, embeddings="int8"))
        elif name == "int8-dynamic-token":
            quantize_model_(model, _config(scheme="int8_dynamic", activations="token", lm_head=True,
                                           embeddings="int8"))
        else:
            raise ValueError(name)
        info["quantize_s"] = round(time.time() - t, 1)
        return model, info

    variants = {
        "fp32": "float32 (as packaged)",
        "int8-dynamic-token": "int8 weights per channel + int8 activations per token (FBGEMM), lm_head int8 "
                              "(untied), input embeddings int8",
        "int4-gptq-g128-asym": "int4 weight-only, group 128 (576 = 4x128 + 64), asymmetric, GPTQ on bbc-news "
                               "train; decoder Linear layers (lm_head tied to the float embeddings)",
        "int4-gptq-g128-asym-clip": "int4-gptq-g128-asym with each group's range shrunk (1.0 .. 0.7) to the "
                                    "least squared rounding error (GPTQ's MSE grid)",
        "int4-gptq-g128-asym-act": "int4-gptq-g128-asym with act-order (columns by decreasing input energy, "
                                   "static groups)",
        "int4-gptq-g128-asym-act-refit": "int4-gptq-g128-asym-act + scales and zero points re-solved by least "
                                         "squares on each layer's output error",
        "int4-gptq-g128-asym-act-refit-clip": "int4-gptq-g128-asym-act-refit with each group's range shrunk to "
                                              "the least squared rounding error",
        "int4-gptq-g128-asym-act-tune": "int4-gptq-g128-asym-act + each layer's scales and zero points tuned "
                                        "(40 Adam steps) so its output follows the float model's",
        "int4-gptq-g128-asym-act-tune-e2e": "int4-gptq-g128-asym-act-tune + all scales and zero points tuned "
                                            "together (40 Adam steps) on the KL to the float model's next-token "
                                            "distribution",
        "int4-gptq-g128-asym-int8-head": "int4-gptq-g128-asym + lm_head int8 per channel (untied) + input "
                                         "embeddings int8 per row",
        "int4-gptq-g128-asym-all-linear": "int4-gptq-g128-asym + lm_head int4 g128 asymmetric (untied, "
                                          "round-to-nearest) + input embeddings int8 per row: every Linear in int4",
        **{f"int4-rtn-g{g}-{'sym' if s else 'asym'}": f"int4 weight-only, group {g}, "
           f"{'symmetric' if s else 'asymmetric (zero points)'}, round-to-nearest; decoder Linear layers"
           for g, s in sorted(RTN_GRID, key=lambda r: -r[0])},
        "int8-rtn": "int8 weight-only, per output channel, round-to-nearest; decoder Linear layers",
    }
    speed_names = ("fp32", "int8-dynamic-token", "int4-gptq-g128-asym-int8-head")
    only = [v for v in args.only.split(",") if v]
    rows, speed, speed_models = {}, {}, {}
    out = Path(args.output)

    def measure_speed():
        # Decode speed, interleaved: batch 1 for every speed model, batch 8 for fp32 and int8-dynamic-token.
        prompts = {b: ids[0, :b * 64].reshape(b, 64) for b in (1, 8)}
        for b in (1, 8):
            names = [n for n in speed_models if b == 1 or not n.startswith("int4")]
            for n in names:
                _generate(speed_models[n], prompts[b], 2)  # warm-up

            def gen(n, prompt=prompts[b]):
                model = speed_models[n]
                return lambda: (_generate(model, prompt, 1), _generate(model, prompt, args.new_tokens))

            runs = interleaved({n: gen(n) for n in names}, args.repeats, warmup=0)
            for n in names:
                firsts, totals = [r[0] for r in runs[n]], [r[1] for r in runs[n]]
                ttft = statistics.median(firsts)
                decode = statistics.median(totals) - ttft
                best = min(tt - f for tt, f in zip(totals, firsts))
                speed.setdefault(n, {})[f"batch_{b}"] = {
                    "ttft_ms": round(ttft * 1e3, 1),
                    "decode_tokens_per_s": round((args.new_tokens - 1) * b / decode, 2),
                    "best_decode_tokens_per_s": round((args.new_tokens - 1) * b / max(best, 1e-9), 2)}
            if "fp32" in names:
                for n in names:
                    row = speed[n][f"batch_{b}"]
                    row["speedup_vs_fp32"] = round(row["decode_tokens_per_s"] /
                                                   speed["fp32"][f"batch_{b}"]["decode_tokens_per_s"], 2)
            print(json.dumps({f"speed_batch_{b}": {n: speed[n][f"batch_{b}"] for n in names}}), flush=True)
        speed_models.clear()

    def write() -> dict:
        base = rows.get("fp32")
        if base:
            for row in rows.values():
                if "perplexity" in row:
                    row["perplexity_vs_fp32"] = round(row["perplexity"] / base["perplexity"] - 1, 5)
                    row["size_vs_fp32"] = round(row["weights_mb"] / base["weights_mb"], 4)
        return run.write(
            out, rows,
            model="SmolLM2-135M-Instruct (builtin_model('smollm2-135m')); weights dequantized from a Q4_1 (4-bit "
                  "asymmetric, group-32) GGUF, so int4 asymmetric group-32 re-quantization is near-lossless by "
                  "construction",
            perplexity_setup={"text": "load_text('bbc-news')['test'], documents in stored order joined by a "
                                      "blank line", "tokens": args.tokens, "context": args.context,
                              "stride": args.stride, "tokens_scored": args.tokens - 1},
            calibration={"text": "load_text('bbc-news')['train'], shuffled (seed 42), joined, cut into chunks "
                                 f"of {args.calibration_length} tokens; each GPTQ variant records its "
                                 "calibration_tokens", "length": args.calibration_length,
                         "samples": args.calibration_samples or {n: v["calibration_samples"]
                                                                 for n, v in GPTQ_VARIANTS.items()}},
            decode_setup={"prompt_tokens": 64, "new_tokens": args.new_tokens, "repeats": args.repeats,
                          "greedy": True, "kv_cache": True, "threads": args.threads,
                          "note": "median over interleaved rounds; decode = total - time to first token"},
            decode=speed)

    for name, what in variants.items():
        if only and name not in only:
            continue
        try:
            model, info = build(name)
            t = time.time()
            ppl = perplexity(model, ids, args.context, args.stride)
            rows[name] = {"what": what, "perplexity": ppl["perplexity"], "perplexity_s": round(time.time() - t, 1),
                          "weights_mb": weights_mb(model, scratch / name), **info}
        except Exception as e:  # one broken variant must not lose the others' numbers
            rows[name] = {"what": what, "error": f"{type(e).__name__}: {e}"}
            model = None
        print(json.dumps({name: rows[name]}), flush=True)
        if model is not None and name in speed_names and not args.no_decode:
            speed_models[name] = model
        if speed_models and (len(speed_models) == len([n for n in speed_names if not only or n in only])):
            measure_speed()
        write()
    if speed_models:
        measure_speed()
    result = write()
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
