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

After fusion, ONNX's own shape inference cannot type the outputs of ORT's contrib ops (``Attention``,
``SkipLayerNormalization``), and the quantizer then stops with "Unable to find data type for weight_name".
That is why Optimum's O2/O3 + INT8 fails; :func:`infer_shapes` runs ORT's symbolic shape inference, which knows
those ops, so a fused graph can be quantized (``Attention`` -> ``QAttention``).

:func:`split_skip_layernorm` can rewrite each fused ``SkipLayerNormalization`` as ``Sum`` + ``LayerNormalization``
(a ``Sum`` is not re-fused; ORT fuses ``Add`` + ``LayerNormalization`` back when a session loads) and ``BiasGelu``
as ``Add`` + ``Gelu`` (after quantization the bias then joins the INT8 matmul); ``Attention`` stays fused. Which
form is faster depends on the CPU and the graph, so the export setting ``split_skip_layernorm`` chooses: ``off``
(ORT's fused graph), ``on`` (always split) or ``auto`` (a probe of both kernels on this machine decides, so the
graph can differ between machines). The export record holds the setting, the probe and the decision.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Optional

from ..compat import FeatureUnavailable, has_optimum, require_optimum
from ..console import ort_session_options

logger = logging.getLogger("hf_optim")

__all__ = ["resolve_backend", "detect_task_type", "export_onnx", "optimize_onnx", "infer_shapes",
           "split_skip_layernorm", "skip_layernorm_timings", "copy_preprocessors", "ONNX_NAME", "OPTIMIZE_LEVELS"]

ONNX_NAME = "model.onnx"
# Same settings as optimum's AutoOptimizationConfig._LEVELS, so both backends optimize alike.
OPTIMIZE_LEVELS = {
    "O1": {"opt_level": 1, "fusions": False, "gelu_approximation": False},
    "O2": {"opt_level": 2, "fusions": True, "gelu_approximation": False},
    "O3": {"opt_level": 2, "fusions": True, "gelu_approximation": True},
}
_PREPROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                       "merges.txt", "vocab.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                       "generation_config.json")
# ORT's transformer optimizer model families (what optimum's ORTConfigManager maps to).
_ORT_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "albert": "bert",
                    "electra": "bert", "camembert": "bert", "mpnet": "bert", "deberta": "bert", "deberta-v2": "bert",
                    "modernbert": "bert", "gpt2": "gpt2", "llama": "gpt2", "mistral": "gpt2", "gpt_neox": "gpt2"}


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``optimum`` when optimum-onnx is importable, else ``torch``; ``optimum`` is checked."""
    if backend == "auto":
        return "optimum" if has_optimum() else "torch"
    if backend == "optimum":
        require_optimum("export backend 'optimum'")
    return backend


def detect_task_type(model_dir: str | Path) -> str:
    """``sequence-classification`` or ``causal-lm`` from the checkpoint's ``architectures``."""
    from ..data.tasks import checkpoint_kind

    kind = checkpoint_kind(model_dir)
    if kind in ("sequence-classification", "causal-lm"):
        return kind
    from ..errors import DataError

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    archs = cfg.get("architectures") or []

    raise DataError(f"{model_dir} holds {', '.join(archs) or cfg.get('model_type')}: export handles sequence "
                    "classifiers and causal LMs; set task_type or fine-tune the model first")


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


def optimize_onnx(onnx_path: str | Path, out_path: str | Path, level: str, backend: str,
                  split: str = "on") -> tuple[Path, dict]:
    """Apply ORT graph optimization ``level`` (O1-O3) to ``onnx_path``; writes ``out_path`` and returns it with
    the ``SkipLayerNormalization`` record: ``{"setting": split, **split_skip_layernorm(...)}``.

    ``split`` (``auto`` / ``on`` / ``off``) is passed to :func:`split_skip_layernorm` after fusion (levels without
    fusion have nothing to split).

    The embedding LayerNorm is never fused (as in Optimum's levels): ``EmbedLayerNormalization`` measured no
    faster here, static INT8 leaves it in float, and the lookups must stay plain ``Gather`` nodes for int4
    embeddings.
    The result always carries symbolic shape information (see :func:`infer_shapes`), so it can be quantized.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cfg = json.loads((onnx_path.parent / "config.json").read_text())
    # Structurally pruned models have per-layer head counts: ORT's fusion reads each layer's from the graph
    # (it prefers the detected value over the one passed; 0 = detect only). Validation checks the result.
    qc = cfg.get("quantization_config") or {}
    pruned = bool(qc.get("module_attrs") or qc.get("linear_shapes"))
    if backend == "optimum":
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import AutoOptimizationConfig

        work = out_path.parent / ".optimum-optimize"
        opt = ORTOptimizer.from_pretrained(onnx_path.parent, file_names=[onnx_path.name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt_config = AutoOptimizationConfig.with_optimization_level(level, disable_embed_layer_norm_fusion=True)
            opt.optimize(save_dir=work, optimization_config=opt_config)
        produced = work / f"{onnx_path.stem}_optimized.onnx"
        shutil.move(str(produced), out_path)
        shutil.rmtree(work, ignore_errors=True)
    else:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        spec = OPTIMIZE_LEVELS[level]
        family = _ORT_MODEL_TYPES.get(cfg.get("model_type"), "bert")
        options = FusionOptions(family)
        options.enable_gelu_approximation = spec["gelu_approximation"]
        options.enable_embed_layer_norm = False
        heads = 0 if pruned else cfg.get("num_attention_heads") or cfg.get("n_head") or 0
        hidden = 0 if pruned else cfg.get("hidden_size") or cfg.get("n_embd") or 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = optimize_model(str(onnx_path), model_type=family, num_heads=heads, hidden_size=hidden,
                                   opt_level=spec["opt_level"], optimization_options=options,
                                   only_onnxruntime=not spec["fusions"])
        model.save_model_to_file(str(out_path))
    fused = OPTIMIZE_LEVELS[level]["fusions"]
    decision = split_skip_layernorm(out_path, split if fused else "off", cfg.get("hidden_size") or cfg.get("n_embd"))
    infer_shapes(out_path)
    return out_path, {"setting": split, **decision}


def skip_layernorm_timings(hidden_size: int, batch: int = 8, seq: int = 64, rounds: int = 30,
                           threads: int | None = None) -> dict[str, float]:
    """Median milliseconds of ORT's fused ``SkipLayerNormalization`` and of ``Sum`` + ``LayerNormalization`` on a
    ``[batch, seq, hidden_size]`` input, measured alternately (so a busy machine slows both alike)."""
    import time

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(hidden_size).astype(np.float32), n) for n in ("g", "b")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", hidden_size]) for n in ("x", "skip")]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graphs = {
        "fused": [helper.make_node("SkipLayerNormalization", ["x", "skip", "g", "b"], ["y"], domain="com.microsoft",
                                   epsilon=1e-12)],
        "split": [helper.make_node("Sum", ["x", "skip"], ["s"]),
                  helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-12)],
    }
    opts = ort_session_options()
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {}
    for name, nodes in graphs.items():
        model = helper.make_model(helper.make_graph(nodes, name, io, out, inits),
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        sessions[name] = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {n: rng.standard_normal((batch, seq, hidden_size)).astype(np.float32) for n in ("x", "skip")}
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for r in range(rounds + 2):
        for name in (list(sessions) if r % 2 else list(sessions)[::-1]):
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            if r >= 2:  # two warm-up rounds
                times[name].append((time.perf_counter() - start) * 1e3)
    return {n: round(float(np.median(v)), 4) for n, v in times.items()}


def split_skip_layernorm(path: str | Path, setting: str = "on", hidden_size: int | None = None) -> dict:
    """Rewrite ``SkipLayerNormalization`` as (bias ``Add``) + ``Sum`` + ``LayerNormalization`` and ``BiasGelu`` as
    ``Add`` + ``Gelu`` in the model at ``path``, in place, as ``setting`` says.

    Args:
        path (`str` or `Path`): an ONNX model fused by ORT's transformer optimizer.
        setting (`str`, *optional*, defaults to ``"on"``): ``on`` (rewrite), ``off`` (leave the graph alone) or
            ``auto`` (rewrite when :func:`skip_layernorm_timings` on ``[8, 64, hidden_size]`` measures the split
            form at least 20 % faster on this machine).
        hidden_size (`int`, *optional*): the probe's hidden size (default: read from the first node's gamma).

    Returns:
        `dict`: ``decision`` (``on`` when the graph was rewritten, else ``off``), ``nodes_split`` and, when
        ``auto`` probed, ``probe_ms`` (median milliseconds of each form and the probe's input shape).
    """
    import onnx
    from onnx import helper

    if setting not in ("auto", "on", "off"):
        raise ValueError(f"split_skip_layernorm setting {setting!r}: expected 'auto', 'on' or 'off'")
    if setting == "off":
        return {"decision": "off", "nodes_split": 0}
    model = onnx.load(str(path))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    fused = [n for n in graph.node if n.op_type == "SkipLayerNormalization" and n.domain == "com.microsoft"
             and not any(o for o in list(n.output)[1:3])]  # mean/inv-std outputs: training graphs, leave them
    if not fused or opset < 17:  # LayerNormalization is an ONNX op from opset 17
        if fused and setting == "on":
            logger.warning("split_skip_layernorm: on needs opset >= 17 (this graph: %d); keeping it fused", opset)
        return {"decision": "off", "nodes_split": 0}
    result: dict = {}
    if setting == "auto":
        shape = [8, 64, hidden_size or _hidden_from_gamma(graph, fused[0])]
        timings = skip_layernorm_timings(shape[2], batch=shape[0], seq=shape[1])
        result["probe_ms"] = {**timings, "shape": shape}
        setting = "on" if timings["split"] < 0.8 * timings["fused"] else "off"
        logger.info("SkipLayerNormalization %.3f ms vs Sum + LayerNormalization %.3f ms: %s", timings["fused"],
                    timings["split"], "splitting" if setting == "on" else "keeping it fused")
    if setting == "off":
        return {"decision": "off", "nodes_split": 0, **result}
    todo = {id(n) for n in fused}
    nodes, count = [], 0
    for node in graph.node:
        if id(node) in todo:
            nodes.extend(_split_sln(node, helper))
            count += 1
        elif node.op_type == "BiasGelu" and node.domain == "com.microsoft":
            biased = f"{node.name}/biased"
            nodes.append(helper.make_node("Add", list(node.input), [biased], name=f"{node.name}/bias"))
            nodes.append(helper.make_node("Gelu", [biased], list(node.output), name=f"{node.name}/gelu",
                                          domain="com.microsoft"))
            count += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return {"decision": "on", "nodes_split": count, **result}


def _hidden_from_gamma(graph, node) -> int:
    for init in graph.initializer:
        if init.name == node.input[2]:
            return int(init.dims[-1])
    return 768


def _split_sln(node, helper) -> list:
    x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
    outs = (list(node.output) + [""] * 4)[:4]
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    out = []
    if bias:
        out.append(helper.make_node("Add", [x, bias], [f"{node.name}/biased"], name=f"{node.name}/bias"))
        x = f"{node.name}/biased"
    # Sum, not Add: ORT's SkipLayerNormFusion matches Add -> LayerNormalization and would fuse it back at load
    total = outs[3] or f"{node.name}/residual_out"
    out.append(helper.make_node("Sum", [x, skip], [total], name=f"{node.name}/residual"))
    out.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outs[0]],
                                name=f"{node.name}/LayerNorm", axis=-1, epsilon=eps))
    return out


def infer_shapes(path: str | Path) -> bool:
    """Add ORT symbolic shape inference to the model at ``path`` in place; ``False`` when it could not.

    Needed before quantizing a fused graph: without the types of contrib-op outputs the quantizer cannot
    decide the type of the tensors it quantizes.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as e:  # noqa: BLE001 - an unknown op; quantization may still work on an unfused graph
        logger.warning("symbolic shape inference failed on %s (%s); quantizing a fused graph may fail",
                       Path(path).name, e)
        return False
    if inferred is None:
        return False
    onnx.save(inferred, str(path))
    return True


def op_counts(path: str | Path) -> dict[str, int]:
    """``{op_type: count}`` of the graph at ``path`` (sorted by count)."""
    import collections

    import onnx

    counts = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return dict(counts.most_common())
