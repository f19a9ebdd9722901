"""SmolLM2-135M on a CPU, every path side by side in one run: hf_optim's torch and ONNX Runtime paths next to the
runtimes LLM users pick, llama.cpp (through ``llama-cpp-python``), with perplexity, size and decode speed for each.

    python scripts/bench_llm_cpu.py --llama-python .venv-anchors/bin/python --genai-python .venv-genai/bin/python \\
        --threads 1,2 --calibration-samples 64 --clip-search --tune-steps 40 --e2e-steps 80 --profile \\
        -o scripts/results/bench_llm_cpu.json                                                     # make bench-llm-cpu

hf_optim's int4 grid is llama.cpp's Q4_0 grid (symmetric, group 32, 16 levels, signed scales), chosen by GPTQ
(act-order, ``--clip-search``) on ``--calibration-samples`` chunks of BBC train text, then its scales tuned layer by
layer (``--tune-steps``) and end to end on the float model's next-token distribution (``--e2e-steps``); the same
grid is in every hf_optim row. Rows (``--rtn`` replaces GPTQ by round-to-nearest on the same grid, for a quick run):
- ``hf_optim torch fp32``: the packaged float model, ``generate`` with the KV cache.
- ``hf_optim torch int8``: int8 weight-only per output channel (``int8pack`` kernel).
- ``hf_optim torch int4 GPTQ``: that grid in torch (``int4pack`` kernel); the lm_head stays tied to the float
  embeddings.
- ``hf_optim torch int4 GPTQ + int8 head``: the same grid, the lm_head untied and int8 per channel (input
  embeddings int8 per row): the head is a 49,152 x 576 matrix, in fp32 the largest single read of every decode step.
- ``hf_optim ORT int8``: Optimum's ONNX export with past key values, ``MatMulNBits`` int8 block 32 with int8 compute
  (``accuracy_level: 4``), ``ORTModelForCausalLM.generate``.
- ``hf_optim ORT int4 from GPTQ``: the same export with the GPTQ grid written into ``MatMulNBits`` unchanged
  (``method: checkpoint``).
- ``llama.cpp packaged Q4_1``: the GGUF the model package ships (the float weights were dequantized from it).
- ``llama.cpp Q8_0 / Q4_0 / Q4_K_M``: llama.cpp's own quantizer on hf_optim's F32 GGUF of the float weights, as
  llama.cpp's docs build them (convert, then ``llama-quantize``).
- ``llama.cpp <- hf_optim GPTQ Q4_0``: hf_optim's GPTQ grid exported to GGUF (``save_gguf``) and run by llama.cpp.
- ``genai <- hf_optim GPTQ`` (with ``--genai-python``): the same grid written by ``save_genai`` and run by
  onnxruntime-genai's own generation loop (``scripts/_genai_worker.py``); ``genai own int4``: its model builder's
  int4 from the float model with its defaults (the anchor, as its docs build it); ``genai <- hf_optim GPTQ, int4
  head``: hf_optim's grid with the output head in the builder's int4 (``GenaiConfig(lm_head="int4")``), the head
  the anchor has, to compare like with like.

``--lm-head`` puts the output head in the grid too (GPTQ solves it on what the quantized model feeds it, then the
end-to-end tuning tunes it with the rest; input embeddings int8 per row): the torch row, the GGUF (head Q4_0 and
embeddings Q8_0, each from its grid) and the onnxruntime-genai model (head ``MatMulNBits`` from the grid) carry
`` + GPTQ int4 head``; the rows that would differ from them only in the head (the int8-head torch row, the builder's
int4 head) and the ONNX Runtime rows are left out.

    python scripts/bench_llm_cpu.py --llama-python .venv-anchors/bin/python --genai-python .venv-genai/bin/python \
        --threads 1,2 --calibration-samples 64 --clip-search --tune-steps 40 --e2e-steps 80 --lm-head \
        -o scripts/results/bench_llm_cpu_head.json                                           # make bench-llm-cpu-head

Speed: the same 64-token prompts from the BBC test text, ``--new-tokens`` greedy tokens, decode tokens/s after the
first token, medians over ``--rounds`` rounds, at each of ``--threads`` in turn; each round measures every hf_optim
model (rotated order) and then runs each anchor's worker for one round, so load drift on a shared machine reaches
every row. Batch 8 for the runtimes that batch (torch, ONNX Runtime). Perplexity: the first ``--tokens`` BBC test
tokens, window 512, stride 256, the same ids in every runtime (tokenized here by transformers).

``--profile`` adds where one decode step of the fastest hf_optim torch int4 row spends its time (torch profiler:
int4/int8 matmul kernels, float matmuls, attention, other ops, and the rest = Python and framework overhead),
against the memory-bandwidth bound: the bytes of weights one decode step reads, at the copy bandwidth measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_optim  # noqa: E402,F401
from hf_optim.data import builtin_model  # noqa: E402
from hf_optim.evaluation.harness import BenchRun  # noqa: E402
from hf_optim.evaluation.lm import _generate, load_causal_lm, perplexity, text_token_ids  # noqa: E402
from hf_optim.export import ExportConfig, export_model, save_gguf  # noqa: E402
from hf_optim.quantize import QuantizeConfig  # noqa: E402
from hf_optim.quantize.apply import quantize_model_  # noqa: E402
from hf_optim.quantize.gptq import gptq_quantize_  # noqa: E402
from hf_optim.quantize.stage import text_chunks  # noqa: E402

GRID = dict(scheme="int4_weight_only", group_size=32, symmetric=True)
LLAMA_CPP_TYPES = ("q8_0", "q4_0", "q4_k_m")


def _script(name: str):
    """scripts/<name>.py (bench_gguf, bench_genai): their workers and helpers are shared, not copied."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_gguf():
    return _script("bench_gguf")


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".safetensors", ".onnx",
                                                                                        ".onnx_data", ".data")]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def _decode_round(models: dict, prompts: dict, new_tokens: int, r: int) -> dict:
    """One round: every model once per batch size (rotated order); ``{name: {batch: (ttft, total)}}``."""
    names = list(models)
    out: dict = {}
    for name in names[r % len(names):] + names[: r % len(names)]:
        for b, prompt in prompts.items():
            out.setdefault(name, {})[b] = (_generate(models[name], prompt, 1),
                                           _generate(models[name], prompt, new_tokens))
    return out


def _weights_read_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer except the input embedding table (one
    row is gathered), unless the output head is that same table."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    skip = set()
    if getattr(head, "weight", None) is not getattr(emb, "weight", None):
        skip = {id(t) for t in list(emb.parameters()) + list(emb.buffers())}
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or id(t) in skip:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _copy_bandwidth() -> float:
    """Bytes/s of a large copy (read + write) on the threads torch uses: the memory roof one decode step meets."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)  # 256 MB, far past any cache
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times)


def _profile(model, prompt, new_tokens: int) -> dict:
    """Self CPU time of one greedy decode by op family, and the rest of the wall time (Python, framework)."""
    from torch.profiler import ProfilerActivity, profile

    _generate(model, prompt, 2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _generate(model, prompt, new_tokens)
    families = {"int4/int8 matmul kernels": ("int4pack", "int8pack"),
                "float matmuls (linear, mm, addmm)": ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul",
                                                      "aten::bmm"),
                "attention (sdpa)": ("scaled_dot_product", "flash_attention", "_efficient_attention")}
    spent = dict.fromkeys(list(families) + ["other ops"], 0.0)
    for e in prof.key_averages():
        fam = next((f for f, keys in families.items() if any(k in e.key for k in keys)), "other ops")
        spent[fam] += e.self_cpu_time_total / 1e6
    ops = sum(spent.values())
    out = {k: {"s": round(v, 4), "share": round(v / wall, 3)} for k, v in spent.items()}
    out["python and framework (wall - ops)"] = {"s": round(wall - ops, 4), "share": round(1 - ops / wall, 3)}
    return {"wall_s": round(wall, 4), "new_tokens": new_tokens, "by_family": out}


def _label(args) -> str:
    return "RTN" if args.rtn else "GPTQ"


def _head(args) -> str:
    """The suffix of the rows whose output head is in hf_optim's int4 grid (``--lm-head``)."""
    return f" + {_label(args)} int4 head" if args.lm_head else ""


def build_hf_optim(args, src, tok, tmp: Path) -> tuple[dict, dict, dict]:
    """(torch/ORT models, rows, GGUF files) of the hf_optim rows."""
    method = {} if args.rtn else {"method": "gptq", "gptq_act_order": True, "gptq_clip_search": args.clip_search,
                                  "gptq_tune_steps": args.tune_steps, "gptq_e2e_steps": args.e2e_steps}
    if args.lm_head:  # the head in the grid (GPTQ solves it after the last layer), input embeddings int8 per row
        method.update(lm_head=True, embeddings="int8")
    label, head = _label(args), _head(args)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)
    models, rows, gguf = {}, {}, {}

    def add(name, model, path, what, **extra):
        t = time.time()
        ppl = perplexity(model, ids, args.context, args.stride)["perplexity"] if args.tokens else None
        rows[name] = {"what": what, "size_mb": _size_mb(path), "perplexity": ppl,
                      "perplexity_s": round(time.time() - t, 1), "path": path, **extra}
        models[name] = model
        print(json.dumps({name: rows[name]}, default=str), flush=True)

    fp32 = AutoModelForCausalLM.from_pretrained(src).eval()
    fp32.save_pretrained(tmp / "fp32")
    tok.save_pretrained(tmp / "fp32")  # the export validates on text
    add("hf_optim torch fp32", fp32, tmp / "fp32", "float32 as packaged")
    gguf["f32"] = tmp / "f32.gguf"
    save_gguf(fp32, gguf["f32"], qtype="f32", tokenizer=tok)

    int8 = AutoModelForCausalLM.from_pretrained(src).eval()
    quantize_model_(int8, QuantizeConfig(model=str(src), scheme="int8_weight_only"))
    int8.save_pretrained(tmp / "int8")
    add("hf_optim torch int8", int8, tmp / "int8", "int8 weight-only per output channel, int8pack kernel")

    int4 = AutoModelForCausalLM.from_pretrained(src).eval()
    config = QuantizeConfig(model=str(src), **GRID, **method)
    t = time.time()
    if args.rtn:
        quantize_model_(int4, config)
    else:
        cal = text_chunks(tok, "bbc-news", "train", args.calibration_samples, 256)
        gptq_quantize_(int4, [{"input_ids": cal[i:i + 4]} for i in range(0, len(cal), 4)], config)
    quantize_s = round(time.time() - t, 1)
    int4.save_pretrained(tmp / "int4")
    tok.save_pretrained(tmp / "int4")
    gguf["hf_optim"] = tmp / "int4-q4_0.gguf"
    # --lm-head: the head Q4_0 and the embeddings Q8_0, each straight from its grid
    save_gguf(int4, gguf["hf_optim"], qtype="q4_0", head_qtype="auto" if args.lm_head else None, tokenizer=tok)
    add(f"hf_optim torch int4 {label}{head}", int4, tmp / "int4",
        f"int4 weight-only, Q4_0 grid (group 32, symmetric, signed scales), {label}; int4pack kernel; " +
        ("lm_head untied and in the grid, input embeddings int8 per row" if args.lm_head else
         "lm_head tied to the float embeddings"), quantize_s=quantize_s)
    if args.lm_head:  # the rows below would repeat this one's grid with another head
        return models, rows, gguf

    head = AutoModelForCausalLM.from_pretrained(tmp / "int4").eval()
    quantize_model_(head, QuantizeConfig(model=str(src), scheme="int8_weight_only", include=[r"^lm_head$"],
                                         lm_head=True, embeddings="int8"))
    head.save_pretrained(tmp / "int4-head")
    add(f"hf_optim torch int4 {label} + int8 head", head, tmp / "int4-head",
        f"the int4 {label} grid, lm_head untied and int8 per channel, input embeddings int8 per row")

    for name, model_dir, export in (
            ("hf_optim ORT int8", tmp / "fp32", dict(quantization="int8_weight_only", group_size=32)),
            (f"hf_optim ORT int4 from {label}", tmp / "int4", dict(quantization="int4", method="checkpoint"))):
        out = tmp / name.replace(" ", "-")
        export_model(model_dir, out, ExportConfig(model=str(model_dir), task="bbc-news", task_type="causal-lm",
                                                  optimization="none", accuracy_level=4, max_metric_drop=10.0,
                                                  **export))
        add(name, load_causal_lm(out), out,  # torch's thread count
            f"Optimum ONNX export with past key values, MatMulNBits ({export['quantization']}), int8 compute")
    return models, rows, gguf


def llama_rows(args, tok, tmp: Path, gguf: dict, prompts: list, threads: int, first: bool) -> dict:
    """One round of the llama.cpp worker at ``threads`` (the first also quantizes and measures perplexity)."""
    bg = _bench_gguf()
    quantize = [{"src": str(gguf["f32"]), "dst": str(tmp / f"llamacpp-{t}.gguf"), "type": t}
                for t in LLAMA_CPP_TYPES]
    models = {f"llama.cpp {q['type'].upper()}": q["dst"] for q in quantize}
    models[f"llama.cpp <- hf_optim {_label(args)} Q4_0{_head(args)}"] = str(gguf["hf_optim"])
    packaged = bg._packaged_q41()
    if packaged:
        models["llama.cpp packaged Q4_1"] = str(packaged)
    ids = text_token_ids(tok, "bbc-news", "test", args.tokens)[0].tolist() if first and args.tokens else None
    job = {"models": models, "quantize": quantize if first else [], "prompts": prompts,
           "new_tokens": args.new_tokens, "threads": threads, "rounds": 1, "context": args.context,
           "stride": args.stride, "ppl_ids": ids}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([bg._python(args), "-I", str(bg.WORKER)], input=json.dumps(job), capture_output=True,
                         text=True, env=env, cwd=tmp, timeout=7200)
    if out.returncode:
        raise SystemExit(f"error: the llama.cpp worker failed:\n{out.stderr[-3000:]}")
    return {name: dict(r, path=models[name]) for name, r in json.loads(out.stdout).items()}


def _measure(args, models: dict, batches: dict, anchors: list, threads: int) -> dict:
    """Decode speed of every row at ``threads``: ``{name: {batch_1_decode_tok_s, ...}}``, the anchors' rows too
    (each anchor job runs one round of its worker after each round of hf_optim's models)."""
    torch.set_num_threads(threads)
    for m in models.values():
        _generate(m, batches[1][0], 2)  # warm-up
    timings: dict = {}
    llama: dict = {}
    for r in range(args.rounds):
        for i, prompt in enumerate(batches[1]):
            for name, by_batch in _decode_round(models, {1: prompt} if i else {1: prompt, 8: batches[8][0]},
                                                args.new_tokens, r + i).items():
                for b, t in by_batch.items():
                    timings.setdefault(name, {}).setdefault(b, []).append(t)
        for job in anchors:
            for name, res in job(threads, r).items():
                row = llama.setdefault(name, {"decode": [], "prefill": []})
                row["decode"] += res["decode_tok_s"]
                row["prefill"] += res["prefill_tok_s"]
                job.results.setdefault(name, {}).update(path=res["path"])
                if res.get("perplexity"):
                    job.results[name]["perplexity"] = round(res["perplexity"], 4)
        print(f"threads {threads}: round {r + 1}/{args.rounds} done", flush=True)
    out: dict = {}
    for name, by_batch in timings.items():
        for b, ts in by_batch.items():
            decode = statistics.median(t[1] - t[0] for t in ts)
            out.setdefault(name, {})[f"batch_{b}_decode_tok_s"] = round((args.new_tokens - 1) * b / decode, 2)
            out[name][f"batch_{b}_ttft_ms"] = round(statistics.median(t[0] for t in ts) * 1e3, 1)
    for name, row in llama.items():
        out[name] = {"batch_1_decode_tok_s": round(statistics.median(row["decode"]), 2),
                     "batch_1_prefill_tok_s": round(statistics.median(row["prefill"]), 1)}
    base = out["hf_optim torch fp32"]["batch_1_decode_tok_s"]
    for row in out.values():
        row["batch_1_vs_torch_fp32"] = round(row["batch_1_decode_tok_s"] / base, 2)
    return out


def build_genai(args, src, tmp: Path, label: str) -> dict:
    """onnxruntime-genai models: hf_optim's int4 grid written by ``save_genai``, and the builder's own int4 from
    the float model (the anchor, with its defaults, as its docs build it); ``{name: model dir}``."""
    from hf_optim.export.genai import GenaiConfig, save_genai

    python = os.path.abspath(args.genai_python)
    report = save_genai(tmp / "int4", tmp / "genai-int4", GenaiConfig(python=python))  # --lm-head: from the grid
    dirs = {f"genai <- hf_optim {label}{_head(args)}": str(report.path)}
    if not args.lm_head:
        report = save_genai(tmp / "int4", tmp / "genai-int4-head", GenaiConfig(python=python, lm_head="int4"))
        dirs[f"genai <- hf_optim {label}, int4 head"] = str(report.path)
    out = tmp / "genai-own-int4"
    subprocess.run([python, "-I", "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p",
                    "int4", "-e", "cpu", "-c", str(tmp / "genai-cache")], cwd=tmp, capture_output=True, text=True,
                   check=True, timeout=3600)
    dirs["genai own int4"] = str(out)
    return dirs


def genai_job(args, tmp: Path, dirs: dict, prompts: list):
    """``job(threads, round) -> {name: {decode_tok_s: [..], prefill_tok_s: [..]}}`` through bench_genai's worker;
    ``job.perplexity()`` scores the same graphs on the perplexity tokens."""
    bench = _script("bench_genai")
    python = os.path.abspath(args.genai_python)

    def job(threads, r):
        res = bench._worker(python, {"models": dirs, "threads": threads, "prompts": prompts,
                                     "new_tokens": args.new_tokens, "offset": r}, tmp)
        job.versions = res.get("versions")
        return {n: {"decode_tok_s": [v["decode_tok_s"]], "prefill_tok_s": [v["prefill_tok_s"]], "path": dirs[n]}
                for n, v in res["rows"].items()}

    def perplexity_of(tok, threads):
        ids = text_token_ids(tok, "bbc-news", "test", args.tokens)[0].tolist()
        res = bench._worker(python, {"models": dirs, "threads": threads, "prompts": None, "ppl_ids": ids,
                                     "context": args.context, "stride": args.stride}, tmp)
        return {n: round(v["perplexity"], 4) for n, v in res["rows"].items()}

    job.perplexity = perplexity_of
    job.results = {}
    return job


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python (without it: hf_optim rows only)")
    ap.add_argument("--genai-python", help="python of a venv with onnxruntime-genai (make anchors-genai)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, each measured in turn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=2, help="64-token prompts from the BBC test text")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4096, help="perplexity tokens (0: skip perplexity)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--rtn", action="store_true", help="round-to-nearest instead of GPTQ (a quick run)")
    ap.add_argument("--calibration-samples", type=int, default=32, help="GPTQ: chunks of 256 BBC train tokens")
    ap.add_argument("--clip-search", action="store_true", help="GPTQ: each group's range shrunk to its least error")
    ap.add_argument("--tune-steps", type=int, default=0, help="GPTQ: Adam steps tuning each layer's scales")
    ap.add_argument("--e2e-steps", type=int, default=0, help="GPTQ: Adam steps tuning all scales end to end")
    ap.add_argument("--lm-head", action="store_true", help="the output head in the int4 grid too (GPTQ solves and "
                    "tunes it; input embeddings int8); without the int8-head, builder-head and ONNX Runtime rows")
    ap.add_argument("--profile", action="store_true", help="profile one decode of the fastest torch int4 row")
    ap.add_argument("-o", "--output", help="result JSON")
    args = ap.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    first_threads = thread_counts[0]  # the models are built and their perplexity measured at the first count
    run = BenchRun(args, argv, threads=first_threads)
    torch.set_num_threads(first_threads)
    torch.manual_seed(0)
    src = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    text = text_token_ids(tok, "bbc-news", "test", 64 * 8 * max(args.prompts, 1))
    prompt_lists = [text[0, 64 * i: 64 * (i + 1)].tolist() for i in range(args.prompts)]
    batches = {1: [torch.tensor([p]) for p in prompt_lists], 8: [text[0, : 64 * 8].reshape(8, 64)]}
    speed: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-llm-cpu-") as tmp:
        tmp = Path(tmp)
        models, rows, gguf = build_hf_optim(args, src, tok, tmp)
        anchors = []
        if args.llama_python:
            def llama_job(threads, r):
                return llama_rows(args, tok, tmp, gguf, prompt_lists, threads, not llama_job.results)
            llama_job.results = {}
            anchors.append(llama_job)
        if args.genai_python:
            dirs = build_genai(args, src, tmp, _label(args))
            anchors.append(genai_job(args, tmp, dirs, prompt_lists))
        for threads in thread_counts:
            for name in [n for n in models if " ORT " in n]:  # ONNX Runtime fixes its threads per session
                models[name] = load_causal_lm(rows[name]["path"], threads=threads)
            speed[f"threads_{threads}"] = _measure(args, models, batches, anchors, threads)
        torch.set_num_threads(first_threads)
        if args.genai_python and args.tokens:
            for name, ppl in anchors[-1].perplexity(tok, first_threads).items():
                anchors[-1].results[name]["perplexity"] = ppl
        for job in anchors:
            runtime = "llama.cpp (llama-cpp-python)" if job is anchors[0] and args.llama_python else \
                "onnxruntime-genai (its own generation loop)"
            for name, res in job.results.items():
                rows[name] = {"what": runtime, "size_mb": _size_mb(Path(res["path"])),
                              "perplexity": res.get("perplexity")}
        base = rows["hf_optim torch fp32"]
        for name, row in rows.items():
            row.pop("path", None)
            if row.get("perplexity") and base.get("perplexity"):
                row["perplexity_vs_fp32"] = round(row["perplexity"] / base["perplexity"] - 1, 4)
            for key, by_name in speed.items():
                row[key] = by_name.get(name)
        profile = None
        if args.profile:
            first = speed[f"threads_{first_threads}"]
            fastest = max((n for n in rows if n.startswith("hf_optim torch int4")),
                          key=lambda n: first[n]["batch_1_decode_tok_s"])
            model = models[fastest]
            bytes_per_token = _weights_read_per_token(model)
            bandwidth = _copy_bandwidth()
            profile = {"row": fastest, "threads": first_threads, **_profile(model, batches[1][0], args.new_tokens),
                       "weights_read_per_token_mb": round(bytes_per_token / 2**20, 2),
                       "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                       "bandwidth_bound_tok_s": round(bandwidth / bytes_per_token, 1),
                       "measured_tok_s": first[fastest]["batch_1_decode_tok_s"]}
            print(json.dumps({"profile": profile}), flush=True)
        version = None
        if args.llama_python:
            version = subprocess.run([_bench_gguf()._python(args), "-I", "-c",
                                      "import llama_cpp; print(llama_cpp.__version__)"],
                                     capture_output=True, text=True, cwd=tmp).stdout.strip()
    for name, row in rows.items():
        print(f"{name:42s} {row.get('size_mb', '-'):>8} MB  ppl {row.get('perplexity')}  " + "  ".join(
            f"t{t}: b1 {row[f'threads_{t}']['batch_1_decode_tok_s']} ({row[f'threads_{t}']['batch_1_vs_torch_fp32']}x)"
            for t in thread_counts if row.get(f"threads_{t}")), flush=True)
    return run.write(
        args.output, rows,
        model="SmolLM2-135M-Instruct (builtin_model('smollm2-135m')); weights dequantized from a Q4_1 GGUF",
        perplexity_setup={"text": "load_text('bbc-news')['test']", "tokens": args.tokens, "context": args.context,
                          "stride": args.stride},
        decode_setup={"prompt_tokens": 64, "prompts": args.prompts, "new_tokens": args.new_tokens,
                      "rounds": args.rounds, "greedy": True, "threads": thread_counts,
                      "note": "per row threads_<n>: decode tokens/s after the first token, median over rounds; "
                              "batch 8 for torch and ONNX Runtime"},
        llama_cpp={"llama_cpp_python": version} if version else None, profile=profile)


if __name__ == "__main__":
    main()
    sys.exit(0)
