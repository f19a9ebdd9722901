"""Candidate int8/int4 CPU kernels for Linear layers, timed side by side at MiniLM-L6 shapes.

    python scripts/bench_quant_kernels.py --threads 1 -o scripts/results/bench_quant_kernels.json

Rows = tokens in a batch-32 pass (32 x ~32 tokens) and a batch-1 call (~32 tokens). The kernels of one shape are
called in ``--repeats`` interleaved rounds (:func:`hf_optim.evaluation.harness.interleaved`); reports the median and
best ms of each kernel and its speed (best vs best) relative to fp32 ``F.linear``; the choice in
hf_optim/quantize/kernels.py follows these numbers.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def kernels_for(x, w, b):
    from hf_optim.quantize import kernels as K

    n, k = w.shape
    q, s = K.quantize_weight(w, 8, None)
    packed = K.pack_int8(q, s, b)
    xs = float(x.abs().max()) / 64
    qt = q.t().contiguous()
    q4, s4 = K.quantize_weight(w, 4, 32)
    p4 = K.pack_int4(q4)
    sc = s.reshape(-1)

    def int_mm():  # dynamic per-row activation quantization in eager ops + torch._int_mm
        sx = x.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
        xq = torch.round(x / sx).clamp(-127, 127).to(torch.int8)
        return torch._int_mm(xq, qt).float() * (sx * sc) + b

    out = {
        "fp32 F.linear": lambda: F.linear(x, w, b),
        "fbgemm int8 dynamic (chosen)": lambda: K.linear_dynamic_int8(x, packed),
        "fbgemm int8 static (chosen)": lambda: K.linear_static_int8(x, packed, xs, 64),
        "torch._int_mm int8": int_mm,
        "torch._weight_int8pack_mm": lambda: torch._weight_int8pack_mm(x, q, sc) + b,
        "int8 weight-only dequant+F.linear (chosen)": lambda: F.linear(x, K.dequantize_weight(q, s), b),
        "int4 g32 unpack+dequant+F.linear (chosen)": lambda: F.linear(x, K.dequantize_weight(K.unpack_int4(p4, n, k), s4), b),
    }
    if hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        w4 = torch._convert_weight_to_int4pack_for_cpu((q4.to(torch.int32) + 8), 1)
        sz = torch.stack((s4.t(), torch.zeros_like(s4.t())), -1).contiguous().bfloat16()
        xb = x.bfloat16()
        out["torch._weight_int4pack_mm_for_cpu (bf16)"] = lambda: torch._weight_int4pack_mm_for_cpu(xb, w4, 32, sz)
    return out


def _working(fns: dict) -> tuple[dict, dict]:
    """(kernels that run here, ``{name: "unavailable: Error"}`` for those missing on this build)."""
    ok, missing = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            ok[name] = fn
        except Exception as e:  # noqa: BLE001 - a kernel missing on this build is a result too
            missing[name] = f"unavailable: {type(e).__name__}"
    return ok, missing


def main(argv: list[str] | None = None) -> dict:
    from hf_optim.evaluation.harness import BenchRun, interleaved, summarize, timed

    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("--repeats", type=int, default=30, help="interleaved rounds per shape")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: least sensitive to a busy machine)")
    args = ap.parse_args(argv)
    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for rows in (1024, 32):
        for k, n in ((384, 384), (384, 1536), (1536, 384)):
            x, w, b = torch.randn(rows, k), torch.randn(n, k) * 0.05, torch.randn(n) * 0.1
            fns, missing = _working(kernels_for(x, w, b))
            times = interleaved({name: timed(fn) for name, fn in fns.items()}, args.repeats, warmup=3)
            stats = {name: summarize(ts, scale=1e3) for name, ts in times.items()}
            ms = {**{name: s["median"] for name, s in stats.items()}, **missing}
            best = {name: s["min"] for name, s in stats.items()}
            base = best["fp32 F.linear"]
            rel = {name: round(base / v, 2) for name, v in best.items()}
            results.append({"rows": rows, "in": k, "out": n, "median_ms": ms, "best_ms": best,
                            "speedup_vs_fp32_best": rel})
            print(json.dumps(results[-1]))
    return run.write(args.output, {f"{r['rows']}x{r['in']}->{r['out']}": r for r in results},
                     quantized_engine=torch.backends.quantized.engine)


if __name__ == "__main__":
    main()
