"""ONNX Runtime graph optimization of an exported model, and the timing-driven rewrite of its fused ops.

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

from ..console import ort_session_options

logger = logging.getLogger("hf_optim")

__all__ = ["optimize_onnx", "infer_shapes", "split_skip_layernorm", "skip_layernorm_timings", "op_counts",
           "OPTIMIZE_LEVELS"]

# Same settings as optimum's AutoOptimizationConfig._LEVELS, so both backends optimize alike.
OPTIMIZE_LEVELS = {
    "O1": {"opt_level": 1, "fusions": False, "gelu_approximation": False},
    "O2": {"opt_level": 2, "fusions": True, "gelu_approximation": False},
    "O3": {"opt_level": 2, "fusions": True, "gelu_approximation": True},
}
# ORT's transformer optimizer model families (what optimum's ORTConfigManager maps to).
_ORT_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "albert": "bert",
                    "electra": "bert", "camembert": "bert", "mpnet": "bert", "deberta": "bert", "deberta-v2": "bert",
                    "modernbert": "bert", "gpt2": "gpt2", "llama": "gpt2", "mistral": "gpt2", "gpt_neox": "gpt2"}


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
