"""llama.cpp side of scripts/bench_gguf.py, run by the anchors venv's python (``-I``: nothing from the working dir).

Reads one JSON job on stdin and writes one JSON result on stdout. Only ``llama_cpp`` and numpy are used, so the
job carries token ids (tokenized by transformers in the main process): both runtimes see the same ids.

Job: ``{"models": {name: gguf path}, "quantize": [{"src", "dst", "type"}], "prompts": [[ids]], "new_tokens",
"threads", "rounds", "ppl_ids": [ids] | null, "context", "stride"}``.
Result: ``{name: {"tokens": [[ids] per prompt], "decode_tok_s": [per round], "prefill_tok_s": [...],
"perplexity": float | null, "load_s": float}}``.
"""

from __future__ import annotations

import json
import math
import sys
import time


def _quantize(src: str, dst: str, kind: str) -> None:
    import llama_cpp

    ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
             "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {kind} failed")


def _greedy(llm, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy continuation; (tokens, prefill tokens/s, decode tokens/s after the first new token)."""
    llm.reset()
    out, t0 = [], time.perf_counter()
    t_first = None
    for tok in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if t_first is None:
            t_first = time.perf_counter()
        out.append(int(tok))
        if len(out) == new_tokens:
            break
    t_end = time.perf_counter()
    return out, len(prompt) / (t_first - t0), (len(out) - 1) / max(t_end - t_first, 1e-9)


def _perplexity(llm, ids: list[int], context: int, stride: int) -> float:
    """Sliding-window perplexity, the windows of hf_optim.evaluation.lm.perplexity (each token scored once)."""
    import numpy as np

    n, nll, scored, prev_end = len(ids), 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        window = ids[begin:end]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)
        target = np.asarray(window[1:])
        first = max(0, len(target) - (end - prev_end))
        z = logits[first:]
        z = z - z.max(-1, keepdims=True)
        logp = z[np.arange(len(z)), target[first:]] - np.log(np.exp(z).sum(-1))
        nll -= float(logp.sum())
        scored += len(target) - first
        prev_end = end
        if end == n:
            break
    return math.exp(nll / max(scored, 1))


def main() -> int:
    import llama_cpp

    job = json.load(sys.stdin)
    for q in job.get("quantize", []):
        _quantize(q["src"], q["dst"], q["type"])
    models, out = {}, {}
    for name, path in job["models"].items():
        t = time.perf_counter()
        models[name] = llama_cpp.Llama(model_path=path, n_ctx=max(job.get("context", 512), 512), n_threads=job["threads"],
                                       n_threads_batch=job["threads"], logits_all=True, verbose=False)
        out[name] = {"load_s": round(time.perf_counter() - t, 3), "decode_tok_s": [], "prefill_tok_s": []}
    names = list(models)
    for r in range(job["rounds"]):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: load drift hits every model
            tokens, prefill, decode = [], [], []
            for prompt in job["prompts"]:
                toks, p, d = _greedy(models[name], prompt, job["new_tokens"])
                tokens.append(toks)
                prefill.append(p)
                decode.append(d)
            out[name]["tokens"] = tokens
            out[name]["decode_tok_s"].append(sum(decode) / len(decode))
            out[name]["prefill_tok_s"].append(sum(prefill) / len(prefill))
    for name, llm in models.items():
        out[name]["perplexity"] = (_perplexity(llm, job["ppl_ids"], job["context"], job["stride"])
                                   if job.get("ppl_ids") else None)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
