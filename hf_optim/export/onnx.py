"""ONNX export and ONNX Runtime graph optimization, through Optimum or through ``torch.onnx`` + ORT's own tools.

Two backends give the same artifact (``model.onnx`` + ``config.json`` + tokenizer files):

* ``optimum``: ``optimum.exporters.onnx.main_export`` and ``ORTOptimizer`` (the primary stack);
* ``torch``: ``torch.onnx.export`` (TorchScript-based exporter, eager attention: the graph ORT's transformer
  optimizer knows how to fuse) and ``onnxruntime.transformers.optimizer.optimize_model`` with the same
  settings Optimum uses per level. This is the path on transformers 5, where optimum-onnx cannot be installed.
  It covers sequence classifiers and decoder-only causal LMs with past key values. A causal LM's graph has the
  inputs, outputs and dynamic axes of Optimum's ``text-generation-with-past`` export (``input_ids``,
  ``attention_mask`` over past + new tokens, ``position_ids``, ``past_key_values.{i}.key/value`` ->
  ``logits``, ``present.{i}.key/value``; an empty past has length 0) and is checked against the model, with
  and without a past, before it is kept. Layers that mix full and sliding-window attention (Gemma 2/3, ...),
  chunked attention, caches that are not one key/value pair per layer, or a graph that does not reproduce the
  model raise :class:`~hf_optim.compat.FeatureUnavailable`. To generate with that graph on transformers 5, run
  your own loop over an ``onnxruntime.InferenceSession`` (feed ``present.*`` back as ``past_key_values.*``):
  Optimum's ``ORTModelForCausalLM``, which loads the directory on the primary stack, is not installable there.

Graph optimization (ORT fusion levels, symbolic shape inference, the ``SkipLayerNormalization`` rewrite) is
in :mod:`hf_optim.export.graph`; its names are imported here too.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Optional

from ..compat import FeatureUnavailable, has_optimum, require_optimum
from ..console import ort_session_options
from .graph import OPTIMIZE_LEVELS, infer_shapes, op_counts, optimize_onnx, skip_layernorm_timings, split_skip_layernorm

logger = logging.getLogger("hf_optim")

__all__ = ["resolve_backend", "detect_task_type", "export_onnx", "optimize_onnx", "infer_shapes",
           "split_skip_layernorm", "skip_layernorm_timings", "copy_preprocessors", "ONNX_NAME", "OPTIMIZE_LEVELS",
           "op_counts"]

ONNX_NAME = "model.onnx"
_PREPROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                       "merges.txt", "vocab.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                       "generation_config.json")


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``optimum`` when optimum-onnx is importable, else ``torch``; ``optimum`` is checked."""
    if backend == "auto":
        return "optimum" if has_optimum() else "torch"
    if backend == "optimum":
        require_optimum("export backend 'optimum'")
    return backend


def detect_task_type(model_dir: str | Path) -> str:
    """``sequence-classification`` or ``causal-lm``: :func:`hf_optim.artifacts.checkpoint_kind` of the checkpoint,
    refused when it is neither."""
    from ..artifacts import checkpoint_architectures, checkpoint_kind, read_config

    kind = checkpoint_kind(model_dir)
    if kind in ("sequence-classification", "causal-lm"):
        return kind
    from ..errors import DataError

    what = ", ".join(checkpoint_architectures(model_dir)) or (read_config(model_dir) or {}).get("model_type")
    raise DataError(f"{model_dir} holds {what}: export handles sequence classifiers and causal LMs; set task_type "
                    "or fine-tune the model first")


def copy_preprocessors(src: Path, dst: Path) -> None:
    """Copy tokenizer and generation files so the exported dir works in ``pipeline(...)``."""
    for name in _PREPROCESSOR_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def export_onnx(model_dir: str | Path, out_dir: str | Path, task_type: str, backend: str,
                opset: Optional[int] = None) -> Path:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (with config and tokenizer); returns the ONNX path."""
    src, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if backend == "optimum":
        from optimum.exporters.onnx import main_export

        task = "text-classification" if task_type == "sequence-classification" else "text-generation-with-past"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # do_validation compares raw tensors; hf_optim validates on the task metric instead (validate.py)
            main_export(str(src), output=out, task=task, opset=opset, do_validation=False, local_files_only=True,
                        library_name="transformers")
    else:
        if task_type == "sequence-classification":
            _torch_export_classifier(src, out / ONNX_NAME, opset)
        elif task_type == "causal-lm":
            _torch_export_causal_lm(src, out / ONNX_NAME, opset)
        else:
            raise FeatureUnavailable(f"the torch.onnx export backend covers sequence classifiers and causal LMs, "
                                     f"not {task_type!r}")
        shutil.copy2(src / "config.json", out / "config.json")
    copy_preprocessors(src, out)
    path = out / ONNX_NAME
    if not path.is_file():
        raise RuntimeError(f"the exporter wrote no {ONNX_NAME} in {out} (found {sorted(p.name for p in out.iterdir())})")
    return path


def _torch_export_classifier(src: Path, path: Path, opset: Optional[int]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # eager attention: the graph pattern ORT's optimizer fuses into Attention (sdpa is not fused)
    model = AutoModelForSequenceClassification.from_pretrained(src, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    class _Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args))).logits

    # The legacy exporter restores the wrapper's training flag recursively afterwards: wrap an eval() module.
    wrapper = _Logits(model).eval()
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes["logits"] = {0: "batch_size"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset or 17, dynamo=False,
                          do_constant_folding=True)


def _causal_lm_unavailable(model_type: str, why: str) -> FeatureUnavailable:
    return FeatureUnavailable(
        f"the torch.onnx fallback cannot export this {model_type} causal LM with past key values: {why}. Export it "
        "with Optimum (backend 'optimum', primary stack: `make setup`)")


def _attention_window(config) -> Optional[int]:
    """The sliding window every attention layer uses (``None``: full causal attention); refuses mixed layers."""
    text = config.get_text_config(decoder=True)
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise _causal_lm_unavailable(model_type, "it is an encoder-decoder model")
    if getattr(text, "attention_chunk_size", None):
        raise _causal_lm_unavailable(model_type, "chunked attention is not covered")
    kinds = set(getattr(text, "layer_types", None) or [])
    window = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    if not kinds:
        return window or None
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"} and window:
        return int(window)
    raise _causal_lm_unavailable(model_type, f"its layers mix attention kinds ({', '.join(sorted(kinds))})")


def _additive_causal_mask(attention_mask, query_length, window: Optional[int]):
    """``[batch, 1, query, past + query]`` float mask (0 where attended, dtype minimum elsewhere): causal over the
    cache positions, optionally limited to a sliding ``window``, and hiding the padding of the 2D mask."""
    import torch

    total = attention_mask.shape[1]
    q = torch.arange(query_length, device=attention_mask.device) + (total - query_length)
    k = torch.arange(total, device=attention_mask.device)
    allowed = k[None, :] <= q[:, None]
    if window:
        allowed = allowed & (k[None, :] > q[:, None] - window)
    allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))


def _causal_lm_with_past(model, num_layers: int, window: Optional[int]):
    """``model`` as a module of flat tensors, laid out as Optimum's ``text-generation-with-past`` graph:
    ``(input_ids, attention_mask, position_ids, past.0.key, past.0.value, ...) -> (logits, present.0.key, ...)``.

    The 2D padding mask becomes the 4D additive mask here (transformers uses a 4D mask as given), so the graph
    does not depend on transformers' mask builders, which differ between versions and do not trace.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    from ..compat import cache_kwarg

    cache_arg = cache_kwarg(model)
    pass_cache_position = "cache_position" in inspect.signature(model.forward).parameters  # transformers 4.x

    class _WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(num_layers)]
            cache = DynamicCache(ddp_cache_data=pairs)
            for layer, (k, v) in zip(cache.layers, pairs):  # the past as given, not concatenated to an empty tensor
                layer.keys, layer.values = k, v
            seq = input_ids.shape[1]
            kwargs = {cache_arg: cache}
            if pass_cache_position:
                total = attention_mask.shape[1]
                kwargs["cache_position"] = torch.arange(seq, device=input_ids.device) + (total - seq)
            out = self.m(input_ids=input_ids, attention_mask=_additive_causal_mask(attention_mask, seq, window),
                         position_ids=position_ids, use_cache=True, **kwargs)
            presents = []
            for layer in cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    # The legacy exporter restores the wrapper's training flag recursively afterwards: wrap an eval() module.
    return _WithPast(model).eval()


def _torch_export_causal_lm(src: Path, path: Path, opset: Optional[int]) -> None:
    """Export a ``*ForCausalLM`` with past key values (the inputs, outputs and dynamic axes Optimum gives
    ``text-generation-with-past``), then check the graph against the model with and without a past."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    from ..compat import cache_kwarg

    config = AutoConfig.from_pretrained(src)
    model_type = getattr(config, "model_type", "?")
    window = _attention_window(config)
    # eager attention: plain MatMul/Softmax that ORT runs and quantizes; float32 whatever the checkpoint dtype
    model = AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    max_id = min(int(getattr(config.get_text_config(decoder=True), "vocab_size", 0) or 2), 100)  # dummy token ids

    # per-layer key/value shapes, read from one forward (head counts and head sizes need not be uniform)
    probe = DynamicCache()
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=True, **{cache_kwarg(model): probe})
    except Exception as e:  # noqa: BLE001 - a model that does not run on a DynamicCache passed in
        raise _causal_lm_unavailable(model_type, f"it does not run on a DynamicCache ({type(e).__name__}: {e})") from e
    layers = list(probe.layers)
    if not layers or any(getattr(la, "keys", None) is None or la.keys.dim() != 4 for la in layers):
        raise _causal_lm_unavailable(model_type, "its cache is not one key/value tensor pair per layer")
    kv_shapes = [(tuple(la.keys.shape), tuple(la.values.shape)) for la in layers]

    # trace with a non-empty past (a zero-length one can be folded into constants); every length stays dynamic
    batch, past_len, seq = 2, 2, 3
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max_id, (batch, seq), generator=gen)
    mask = torch.ones((batch, past_len + seq), dtype=torch.long)
    positions = torch.arange(past_len, past_len + seq).unsqueeze(0).expand(batch, -1)
    past = []
    for k_shape, v_shape in kv_shapes:
        past += [torch.randn((batch, k_shape[1], past_len, k_shape[3]), generator=gen),
                 torch.randn((batch, v_shape[1], past_len, v_shape[3]), generator=gen)]
    past_names = [f"past_key_values.{i}.{kv}" for i in range(len(kv_shapes)) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(len(kv_shapes)) for kv in ("key", "value")]
    total = "past_sequence_length + sequence_length"
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "attention_mask": {0: "batch_size", 1: total},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
    axes.update({n: {0: "batch_size", 2: total} for n in present_names})
    wrapper = _causal_lm_with_past(model, len(kv_shapes), window)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (ids, mask, positions, *past), str(path),
                              input_names=["input_ids", "attention_mask", "position_ids"] + past_names,
                              output_names=["logits"] + present_names, dynamic_axes=axes,
                              opset_version=opset or 17, dynamo=False, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - a model the TorchScript exporter cannot trace
        raise _causal_lm_unavailable(model_type, f"torch.onnx.export failed ({type(e).__name__}: {e})") from e
    _check_causal_lm_graph(path, model, past_names, kv_shapes, max_id, model_type)


def _check_causal_lm_graph(path: Path, model, past_names: list[str], kv_shapes, max_id: int,
                           model_type: str) -> None:
    """The exported graph must give the model's logits on a whole sequence (empty past) and on its last tokens
    after a prefix (the prefix's presents as past); otherwise the model is not one the fallback covers."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ids = torch.randint(0, max_id, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float().numpy()
    sess = ort.InferenceSession(str(path), ort_session_options(), providers=["CPUExecutionProvider"])

    def run(chunk: np.ndarray, past: list[np.ndarray]) -> list[np.ndarray]:
        start = past[0].shape[2]
        feeds = {"input_ids": chunk, "attention_mask": np.ones((1, start + chunk.shape[1]), dtype=np.int64),
                 "position_ids": np.arange(start, start + chunk.shape[1], dtype=np.int64)[None]}
        feeds.update(zip(past_names, past))
        return sess.run(None, feeds)

    empty = [np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32) for pair in kv_shapes for shape in pair]
    whole = run(ids.numpy(), empty)[0]
    prefix = run(ids[:, :4].numpy(), empty)
    rest = run(ids[:, 4:].numpy(), prefix[1:])[0]
    tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    diff = max(float(np.abs(whole - ref).max()), float(np.abs(rest - ref[:, 4:]).max()))
    if not diff <= tol:
        raise _causal_lm_unavailable(model_type, f"the graph's logits differ from the model's by {diff:.3g}")
