"""SmolLM2-135M int4 in ONNX Runtime: hf_optim's own grid in ``MatMulNBits`` (``method: checkpoint``) vs ONNX
Runtime's round-to-nearest quantizer on the float model; perplexity and decode speed, side by side.

    python scripts/bench_ort_grid.py --threads 1 -o scripts/results/bench_ort_grid.json

Every ONNX variant is an Optimum export with past key values (``optimization: none``), ``MatMulNBits`` with int8
compute (``accuracy_level: 4``), loaded with ``ORTModelForCausalLM``. hf_optim's grid is round-to-nearest int4,
group 128, asymmetric (``partial_groups``: each 576-wide row holds 4 x 128 + 64), with float zero points (rounded
to integers by the export, the weight change recorded) or with ``integer_zero_points``. ONNX Runtime's quantizer
converts only the MatMuls whose input size its block divides: at group 128 the 576-input projections stay float
(only the down projections are int4), so its group-64 run, where every projection is int4, is the like-for-like
comparison. Perplexity as in ``bench_lm`` (:func:`hf_optim.evaluation.lm.perplexity`, the stratified
``bbc-news`` test slice); decode: greedy ``generate`` after a 64-token prompt, batch 1, median of interleaved
rounds. ``--only hf-optim-grid-gptq-g128-asym,hf-optim-grid-gptq-g128-asym-intzp -o
scripts/results/bench_ort_grid_gptq.json`` measures the GPTQ grids (as ``bench_lm``'s ``int4-gptq-g128-asym``).
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
from hf_optim.evaluation.lm import _generate, load_causal_lm, perplexity, text_token_ids  # noqa: E402
from hf_optim.export import ExportConfig, export_model  # noqa: E402
from hf_optim.quantize import QuantizeConfig  # noqa: E402
from hf_optim.quantize.apply import quantize_model_  # noqa: E402
from hf_optim.quantize.gptq import gptq_quantize_  # noqa: E402
from hf_optim.quantize.stage import text_chunks  # noqa: E402

# name -> (hf_optim checkpoint quantized first, or None for the float model; export settings)
GRID = dict(group_size=128, symmetric=False, partial_groups=True)
VARIANTS = {
    "ort-rtn-g128-asym": (None, dict(method="rtn", group_size=128, symmetric=False)),
    "ort-rtn-g64-asym": (None, dict(method="rtn", group_size=64, symmetric=False)),
    "hf-optim-grid-rtn-g128-asym": (dict(GRID), dict(method="checkpoint")),
    "hf-optim-grid-rtn-g128-asym-intzp": (dict(GRID, integer_zero_points=True), dict(method="checkpoint")),
    # GPTQ as bench_lm's int4-gptq-g128-asym (column order, 16 calibration chunks of 256 tokens)
    "hf-optim-grid-gptq-g128-asym": (dict(GRID, method="gptq", gptq_act_order=False), dict(method="checkpoint")),
    "hf-optim-grid-gptq-g128-asym-intzp": (dict(GRID, method="gptq", gptq_act_order=False, integer_zero_points=True),
                                           dict(method="checkpoint")),
}
GPTQ_CALIBRATION = (16, 256)  # chunks, tokens each


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode-speed measurement")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "bench_ort_grid.json"))
    args = ap.parse_args(argv)
    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ort-grid-"))
    only = [v for v in args.only.split(",") if v]
    rows, models = {}, {}
    for name, (quantize, export) in VARIANTS.items():
        if only and name not in only:
            continue
        row: dict = {}
        model_dir = src
        if quantize is not None:  # hf_optim's grid, measured in torch too
            model = AutoModelForCausalLM.from_pretrained(src).eval()
            config = QuantizeConfig(model=str(src), scheme="int4_weight_only", task="bbc-news", **quantize)
            if config.method == "gptq":
                cal = text_chunks(tok, "bbc-news", "train", *GPTQ_CALIBRATION)
                gptq_quantize_(model, [{"input_ids": cal[i:i + 4]} for i in range(0, len(cal), 4)], config)
            else:
                quantize_model_(model, config)
            model_dir = scratch / f"{name}-torch"
            model.save_pretrained(model_dir)
            tok.save_pretrained(model_dir)
            row["torch_perplexity"] = perplexity(model, ids, args.context, args.stride)["perplexity"]
            del model
        t = time.time()
        out = scratch / name
        record = export_model(model_dir, out, ExportConfig(
            model=str(model_dir), task="bbc-news", task_type="causal-lm", optimization="none", quantization="int4",
            accuracy_level=4, max_metric_drop=10.0, **export))
        ort = load_causal_lm(out, threads=args.threads)
        row.update({"export_s": round(time.time() - t, 1), "int4_matmuls": record["int4_matmuls"],
                    "size_mb": record["size_mb"],
                    "perplexity": perplexity(ort, ids, args.context, args.stride)["perplexity"]})
        if "checkpoint_grid" in record:
            row["zero_point_rounding"] = record["checkpoint_grid"].get("zero_point_rounding")
        rows[name] = row
        models[name] = ort
        print(json.dumps({name: row}), flush=True)
    if not args.no_decode and models:
        prompt = ids[0, :64].reshape(1, 64)
        for m in models.values():
            _generate(m, prompt, 2)  # warm-up

        def gen(m):
            return lambda: (_generate(m, prompt, 1), _generate(m, prompt, args.new_tokens))

        runs = interleaved({n: gen(m) for n, m in models.items()}, args.repeats, warmup=0)
        for n, r in runs.items():
            ttft = statistics.median(x[0] for x in r)
            rows[n]["decode_tokens_per_s"] = round((args.new_tokens - 1) / (statistics.median(x[1] for x in r) - ttft),
                                                   2)
            rows[n]["ttft_ms"] = round(ttft * 1e3, 1)
    result = run.write(
        args.output, rows,
        model="SmolLM2-135M-Instruct (builtin_model('smollm2-135m')), weights dequantized from a Q4_1 GGUF",
        perplexity_setup={"text": "load_text('bbc-news')['test'], stratified slice", "tokens": args.tokens,
                          "context": args.context, "stride": args.stride},
        decode_setup={"prompt_tokens": 64, "new_tokens": args.new_tokens, "repeats": args.repeats, "batch": 1,
                      "greedy": True, "kv_cache": True, "threads": args.threads})
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
