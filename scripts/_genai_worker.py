"""onnxruntime-genai side of scripts/bench_genai.py, run by the genai venv's python (``-I``: nothing from the
working dir).

Reads one JSON job on stdin and writes one JSON result on stdout. Only ``onnxruntime_genai``, ``onnxruntime`` and
numpy are used, so the job carries token ids (tokenized by transformers in the main process): both runtimes see
the same ids.

Job: ``{"models": {name: model dir}, "threads", "prompts": [[ids]] | null, "new_tokens", "offset",
"ppl_ids": [ids] | null, "context", "stride"}``.
Result: ``{"versions": {...}, "rows": {name: {"tokens": [[ids] per prompt], "decode_tok_s", "prefill_tok_s",
"perplexity": float | null}}}``: one round of greedy generation (models in the order rotated by ``offset``) through
onnxruntime-genai's own loop, and the sliding-window perplexity of the same graph (``model.onnx``) through an
onnxruntime ``InferenceSession``.
"""

from __future__ import annotations

import json
import math
import sys
import time


def _load(path: str, threads: int):
    import onnxruntime_genai as og

    config = og.Config(path)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def _greedy(model, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy continuation; (tokens, prefill tokens/s, decode tokens/s after the first new token)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()  # selects from the prompt's logits
    t_first = time.perf_counter()
    while not gen.is_done():
        gen.generate_next_token()  # one decode step, then the selection
    t_end = time.perf_counter()
    out = [int(t) for t in gen.get_sequence(0)[len(prompt):]]
    return out, len(prompt) / (t_first - t0), (len(out) - 1) / max(t_end - t_first, 1e-9)


def _perplexity(path: str, ids: list[int], context: int, stride: int, threads: int) -> float:
    """Sliding-window perplexity, the windows of hf_optim.evaluation.lm.perplexity (each token scored once)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(f"{path}/model.onnx", options, providers=["CPUExecutionProvider"])
    genai = json.load(open(f"{path}/genai_config.json"))["model"]["decoder"]
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]
    n, nll, scored, prev_end = len(ids), 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        window = np.asarray([ids[begin:end]], dtype=np.int64)
        feeds = {"input_ids": window, "attention_mask": np.ones_like(window)}
        feeds.update({i.name: np.zeros((1, genai["num_key_value_heads"], 0, genai["head_size"]), np.float32)
                      for i in past})
        logits = sess.run(["logits"], feeds)[0][0, :-1].astype(np.float64)
        target = window[0, 1:]
        first = max(0, len(target) - (end - prev_end))
        z = logits[first:] - logits[first:].max(-1, keepdims=True)
        nll -= float((z[np.arange(len(z)), target[first:]] - np.log(np.exp(z).sum(-1))).sum())
        scored += len(target) - first
        prev_end = end
        if end == n:
            break
    return math.exp(nll / max(scored, 1))


def main() -> int:
    import onnxruntime
    import onnxruntime_genai as og

    job = json.load(sys.stdin)
    names = list(job["models"])
    k = job.get("offset", 0) % max(len(names), 1)
    rows: dict[str, dict] = {name: {} for name in names}
    for name in names[k:] + names[:k]:  # rotated: load drift hits every model
        if not job.get("prompts"):
            break
        model = _load(job["models"][name], job["threads"])
        _greedy(model, job["prompts"][0], 2)  # warm-up (thread pools, allocations)
        tokens, prefill, decode = [], [], []
        for prompt in job["prompts"]:
            toks, p, d = _greedy(model, prompt, job["new_tokens"])
            tokens.append(toks)
            prefill.append(p)
            decode.append(d)
        rows[name].update(tokens=tokens, decode_tok_s=sum(decode) / len(decode),
                          prefill_tok_s=sum(prefill) / len(prefill))
        del model
    if job.get("ppl_ids"):
        for name in names:
            rows[name]["perplexity"] = _perplexity(job["models"][name], job["ppl_ids"], job["context"],
                                                   job["stride"], job["threads"])
    versions = {"onnxruntime_genai": og.__version__, "onnxruntime": onnxruntime.__version__}
    json.dump({"versions": versions, "rows": rows}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
