"""Causal-LM evaluation, measured the way LLM users measure: sliding-window perplexity, time to first token,
decode tokens/s at batch 1 and 8, checkpoint size and peak memory.

Perplexity: the split's documents in their seeded, topic-stratified order (:func:`hf_optim.data.load_text`),
joined by a blank line, tokenized once; the first ``max_tokens`` tokens are the fixed slice (its documents'
topics are recorded with the result). Windows of ``context`` tokens start every ``stride`` tokens; each
window scores only the tokens the previous window did not. With ``stride < context`` every token after the
first is predicted exactly once, with at least ``context - stride`` tokens of history after the first window;
``stride == context`` gives independent chunks (each chunk's first token is not scored).

Generation: prompts are ``prompt_tokens``-token slices of the same text (no padding); greedy decoding with the
model's KV cache for exactly ``new_tokens`` tokens. Time to first token = a ``max_new_tokens=1`` call (prefill
+ one step); decode tokens/s = ``(new_tokens - 1) * batch / (t(new_tokens) - t(1))``. Medians of ``repeats``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .config import EvalConfig

__all__ = ["text_token_ids", "perplexity", "generation_speed", "lm_peak_memory_mb", "evaluate_lm", "is_causal_lm"]


def is_causal_lm(model_dir: str | Path) -> bool:
    """Whether ``model_dir``'s ``config.json`` names a ``*ForCausalLM`` architecture."""
    from ..artifacts import checkpoint_kind

    return checkpoint_kind(model_dir) == "causal-lm"


def text_token_ids(tokenizer, corpus: str = "bbc-news", split: str = "test", max_tokens: int | None = 4096):
    """``[1, n]`` token ids of the split's documents (topic-stratified order, joined by a blank line), the first
    ``max_tokens``."""
    import torch

    from ..data import load_text

    text = "\n\n".join(load_text(corpus)[split]["text"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        if len(ids) < max_tokens:
            raise ValueError(f"{corpus}/{split} has {len(ids)} tokens, fewer than max_tokens={max_tokens}")
        ids = ids[:max_tokens]
    return torch.tensor([ids])


def slice_topics(tokenizer, corpus: str, split: str, max_tokens: int) -> dict[str, int]:
    """``{topic: documents}`` of the documents the first ``max_tokens`` tokens of :func:`text_token_ids` read
    (a document counts when the slice reaches it)."""
    from ..data import load_text
    from ..data.sampling import class_counts

    ds = load_text(corpus)[split]
    seen, total = [], 0
    for text, topic in zip(ds["text"], ds["topic"]):
        if total >= max_tokens:
            break
        seen.append(topic)
        total += len(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
    return class_counts(seen)


def _logits(model, ids):
    import torch

    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


def perplexity(model, input_ids, context: int = 512, stride: int = 256, progress: bool = False) -> dict[str, Any]:
    """Sliding-window perplexity of ``model`` over ``input_ids`` (``[1, n]``), see the module docstring.

    Works for torch causal LMs and Optimum ``ORTModelForCausalLM`` (anything that returns ``.logits``).
    ``progress`` shows a bar over the windows.

    Returns:
        `dict`: ``perplexity``, ``nll`` (mean, nats), ``tokens_scored``, ``windows``, ``context``, ``stride``.
    """
    import torch

    if not 0 < stride <= context:
        raise ValueError(f"stride={stride} must be in (0, context={context}]")
    from ..console import progress as progress_bar

    n = input_ids.shape[1]
    nll, scored, windows, prev_end = 0.0, 0, 0, 0
    total = math.ceil(max(n - context, 0) / stride) + 1  # the last window is the first to reach the end
    with torch.inference_mode(), progress_bar(desc="perplexity", total=total, enabled=progress, unit="window") as bar:
        for begin in range(0, n, stride):
            end = min(begin + context, n)
            new = end - prev_end  # tokens this window scores (the last `new` positions)
            ids = input_ids[:, begin:end]
            logits = _logits(model, ids)[0, :-1].float()
            target = ids[0, 1:]
            first = max(0, target.shape[0] - new)  # the window's first token has no prediction
            logp = torch.log_softmax(logits[first:], -1)
            nll -= float(logp.gather(-1, target[first:, None]).sum())
            scored += target.shape[0] - first
            windows += 1
            prev_end = end
            bar.update()
            if end == n:
                break
    mean = nll / max(scored, 1)
    return {"perplexity": round(math.exp(mean), 4), "nll": round(mean, 6), "tokens_scored": scored,
            "windows": windows, "context": context, "stride": stride}


def _generate(model, ids, new_tokens: int) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                       pad_token_id=getattr(model.config, "eos_token_id", None))
    return time.perf_counter() - start


def generation_speed(model, input_ids, batch_sizes: Sequence[int] = (1, 8), prompt_tokens: int = 64,
                     new_tokens: int = 32, repeats: int = 3, progress: bool = False) -> dict[str, Any]:
    """Time to first token and decode tokens/s of greedy ``generate`` with the KV cache, per batch size.

    Prompts are consecutive ``prompt_tokens`` slices of ``input_ids`` (``[1, n]``). ``progress`` shows a bar
    over the timed generations.

    Returns:
        `dict`: ``{"batch_<b>": {"ttft_ms", "decode_tokens_per_s", "decode_ms_per_token", ...}, ...}``.
    """
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (one for the first token, the rest for decoding)")
    from ..console import progress as progress_bar

    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats}
    bar = progress_bar(desc="generation speed", total=len(batch_sizes) * repeats, enabled=progress, unit="run")
    for b in batch_sizes:
        if input_ids.shape[1] < b * prompt_tokens:
            raise ValueError(f"need {b * prompt_tokens} tokens for batch {b}, have {input_ids.shape[1]}")
        ids = input_ids[0, :b * prompt_tokens].reshape(b, prompt_tokens)
        _generate(model, ids, 2)  # warm-up (allocations, lazy kernel packing)
        firsts, totals = [], []
        for _ in range(repeats):
            firsts.append(_generate(model, ids, 1))
            totals.append(_generate(model, ids, new_tokens))
            bar.update()
        ttft = statistics.median(firsts)
        decode = max(statistics.median(totals) - ttft, 1e-9)
        out[f"batch_{b}"] = {"batch_size": b, "ttft_ms": round(ttft * 1e3, 2),
                             "decode_tokens_per_s": round((new_tokens - 1) * b / decode, 2),
                             "decode_ms_per_token": round(decode / (new_tokens - 1) * 1e3, 2),
                             "end_to_end_s": round(statistics.median(totals), 3)}
    bar.close()
    return out


def lm_peak_memory_mb(model_dir: str | Path, prompt_tokens: int = 64, new_tokens: int = 16, timeout: float = 600
                      ) -> dict[str, Any]:
    """Peak resident memory of loading the model and generating ``new_tokens`` at batch 1, in a fresh process
    (see :func:`hf_optim.evaluation.bench.peak_memory_mb` for why a fresh process)."""
    from .bench import run_probe

    return run_probe("hf_optim.evaluation.lm", {"model": str(Path(model_dir).resolve()), "prompt_tokens": prompt_tokens,
                                                "new_tokens": new_tokens}, timeout)


def load_causal_lm(model_dir: str | Path, threads: int | None = None):
    """A torch ``AutoModelForCausalLM`` (hf_optim checkpoints included) or, for an ONNX export directory,
    Optimum's ``ORTModelForCausalLM`` with ``threads`` intra-op threads (default: torch's current count, so an
    ONNX and a torch variant are measured with the same number of threads)."""
    model_dir = Path(model_dir)
    if any(model_dir.glob("*.onnx")):
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        from ..console import ort_session_options

        options = ort_session_options()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        return ORTModelForCausalLM.from_pretrained(model_dir, session_options=options)
    import hf_optim  # noqa: F401 - registers the loader for quantized checkpoints
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


_OLD_NAMES = {"corpus": "task", "max_tokens": "lm_tokens", "batch_sizes": "generate_batch_sizes",
              "repeats": "generate_repeats"}


def _config_from_arguments(model_dir: str | Path, **kwargs: Any) -> EvalConfig:
    """The :class:`EvalConfig` the keyword form of :func:`evaluate_lm` (before the config form) meant."""
    from .config import EvalConfig

    fields = {"task": "bbc-news", **{_OLD_NAMES.get(k, k): v for k, v in kwargs.items()}}
    allowed = {"task", "split", "lm_tokens", "context", "stride", "generate_batch_sizes", "prompt_tokens",
               "new_tokens", "generate_repeats", "measure_memory", "threads"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"evaluate_lm() got unexpected keyword argument(s) {', '.join(unknown)}")
    return EvalConfig(model=str(model_dir), task_type="causal-lm", **fields)


def evaluate_lm(model_dir: str | Path, config: EvalConfig | None = None, *, model=None, progress: bool = False,
                **kwargs: Any) -> dict[str, Any]:
    """Perplexity, generation speed, size and peak memory of the causal LM in ``model_dir``.

    Args:
        model_dir (`str` or `Path`): a directory ``AutoModelForCausalLM`` (or ``ORTModelForCausalLM``) loads.
        config (`EvalConfig`): what to measure: the text (``corpus``, a corpus of :func:`hf_optim.data.load_text`,
            or ``task`` when it names one; ``bbc-news`` when neither does) and ``split``, the perplexity slice (``lm_tokens``) and window
            (``context``, ``stride``), the generation timing (``generate_batch_sizes``, empty skips it;
            ``prompt_tokens``, ``new_tokens``, ``generate_repeats``), ``measure_memory`` (peak RSS in a fresh
            process) and ``threads``. The keyword form before this one (``corpus=``, ``max_tokens=``,
            ``batch_sizes=``, ``repeats=`` ...) is deprecated and still read, with a ``FutureWarning``, until the
            next release.
        model (*optional*): an already loaded model to measure instead of loading ``model_dir``.
        progress (`bool`, *optional*, defaults to `False`): progress bars over the perplexity windows and the
            timed generations.

    Returns:
        `dict`: JSON-ready metrics (``metric: "perplexity"``, ``perplexity``, ``generation``, ``size``, ``memory``).
    """
    if config is None:
        warnings.warn("evaluate_lm(model_dir, **options) is deprecated: pass an EvalConfig, e.g. evaluate_lm("
                      "model_dir, EvalConfig(model=model_dir, task='bbc-news', lm_tokens=4096))", FutureWarning,
                      stacklevel=2)
        config = _config_from_arguments(model_dir, **kwargs)
    elif kwargs:
        raise TypeError(f"evaluate_lm takes an EvalConfig; set {', '.join(kwargs)} on the config instead")
    corpus, split, max_tokens, threads = config.text_corpus, config.split, config.lm_tokens, config.threads
    batch_sizes, prompt_tokens, new_tokens = config.generate_batch_sizes, config.prompt_tokens, config.new_tokens

    import torch
    from transformers import AutoTokenizer

    from .bench import dir_size_mb

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = text_token_ids(tokenizer, corpus, split, max(max_tokens, max(batch_sizes or [1]) * prompt_tokens))
    model = model if model is not None else load_causal_lm(model_dir, threads)
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ppl = perplexity(model, ids[:, :max_tokens], config.context, config.stride, progress)
        out: dict[str, Any] = {"model": str(model_dir), "task": corpus, "split": split, "metric": "perplexity",
                               "perplexity": ppl["perplexity"],
                               "perplexity_setup": {**{k: v for k, v in ppl.items() if k != "perplexity"},
                                                    "slice_tokens": max_tokens,
                                                    "slice": f"first {max_tokens} tokens of the {split} split, "
                                                             "documents in topic-stratified order joined by a "
                                                             "blank line",
                                                    "slice_topics": slice_topics(tokenizer, corpus, split,
                                                                                 max_tokens)},
                               "size": dir_size_mb(model_dir)}
        params = getattr(model, "num_parameters", None)
        if callable(params):
            out["params"] = int(params())
        if batch_sizes:
            out["generation"] = generation_speed(model, ids, batch_sizes, prompt_tokens, new_tokens,
                                                 config.generate_repeats, progress)
    finally:
        torch.set_num_threads(prev)
    if config.measure_memory:
        out["memory"] = lm_peak_memory_mb(model_dir, prompt_tokens, min(new_tokens, 16))
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": threads or prev,
                      "torch": torch.__version__}
    return out


def _memprobe() -> None:
    req = json.loads(sys.stdin.read())
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import hf_optim  # noqa: F401

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    from .memprobe import _status_mb

    baseline = _status_mb("VmRSS")
    model = load_causal_lm(req["model"])
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.arange(req["prompt_tokens"])[None] % max(vocab - 1, 1)
    _generate(model, ids, req["new_tokens"])
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "model_peak_mb": round(peak - baseline, 1),
                      "what": f"load + generate {req['new_tokens']} tokens, batch 1, {req['prompt_tokens']}-token prompt"}))


if __name__ == "__main__":
    _memprobe()
