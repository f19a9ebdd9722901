"""``export`` stage and the :func:`export_model` Python API: ONNX export -> ORT optimization -> quantization,
validated on the task metric; the artifact is written only when the metric stays within budget."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..evaluation.harness import package_versions
from .config import ExportConfig

logger = logging.getLogger("hf_optim")

# weight-only MatMulNBits schemes: bits per weight
NBITS = {"int4": 4, "int8_weight_only": 8}

__all__ = ["export_model", "RECORD_NAME"]

RECORD_NAME = "hf_optim_export.json"
RECORD_FORMAT = 1
_BACKEND_NOTES = {
    "optimum": "Optimum (optimum-onnx): main_export, ORTOptimizer, ORTQuantizer",
    "torch": "torch.onnx.export + onnxruntime.transformers.optimizer + onnxruntime.quantization "
             "(fallback: optimum-onnx is not installed)",
}


def export_model(model_dir: str | Path, output_dir: str | Path, config: ExportConfig | None = None,
                 progress: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Export ``model_dir`` to an ONNX Runtime directory ``output_dir`` and validate it on the task metric.

    Args:
        model_dir (`str` or `Path`): a ``from_pretrained`` directory (sequence classifier or causal LM).
        output_dir (`str` or `Path`): where the exported model goes; it must not exist or be empty.
        config (`ExportConfig`, *optional*): what to do; or pass its fields as keyword arguments.
        progress (`bool`, *optional*, defaults to `False`): progress bars over validation and calibration
            (each step is also logged at INFO).

    Returns:
        `dict`: the ``hf_optim`` record written to ``output_dir/hf_optim_export.json`` (backend, settings,
        op counts, validation). Raises :class:`~hf_optim.errors.StageError` and writes nothing when the
        metric drop exceeds ``max_metric_drop``.

    The directory loads with ``ORTModelForSequenceClassification`` / ``ORTModelForCausalLM.from_pretrained`` and
    in ``pipeline(...)``, and with ``hf_optim.evaluation.evaluate_model``.
    """
    from .onnx import detect_task_type, resolve_backend

    config = config or ExportConfig(model=str(model_dir), **kwargs)
    src, out = Path(model_dir), Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        from ..errors import HfOptimError

        raise HfOptimError(f"output {out} is a file or a directory that is not empty; choose a new one")
    if config.format != "onnx":  # a portable checkpoint for other runtimes: no ONNX graph, no task validation
        from .portable import export_portable

        return export_portable(src, out, config)
    backend = resolve_backend(config.backend)
    task_type = detect_task_type(src) if config.task_type == "auto" else config.task_type
    out.parent.mkdir(parents=True, exist_ok=True)
    # scratch next to the output (same filesystem, never the CWD); removed whatever happens
    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        if task_type == "sequence-classification":
            final, record = _export_classifier(src, work, config, backend, progress)
        else:
            final, record = _export_causal_lm(src, work, config, backend)
        record.update({
            "format": RECORD_FORMAT, "kind": "export", "source": str(src), "task_type": task_type,
            "backend": backend, "backend_note": _BACKEND_NOTES[backend], "file_name": "model.onnx",
            "config": config.to_dict(), "versions": package_versions(),
            "export_seconds": round(time.perf_counter() - t0, 2),
        })
        # assembled in the scratch dir and renamed into place: an interrupted export leaves no half-written output
        _assemble(final, work / "export", work / "assembled", record)
        os.replace(work / "assembled", out)  # `out` is new or empty (checked above)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _assemble(final: Path, export_dir: Path, out: Path, record: dict) -> None:
    from .onnx import copy_preprocessors

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(final, out / "model.onnx")
    for name in ("config.json", "ort_config.json"):
        if (export_dir / name).is_file():
            shutil.copy2(export_dir / name, out / name)
    copy_preprocessors(export_dir, out)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2))


def _optimize_and_quantize_common(onnx_path: Path, config: ExportConfig, backend: str, level: str) -> tuple[Path, dict]:
    from .graph import optimize_onnx

    info: dict[str, Any] = {}
    current = onnx_path
    if level != "none":
        current, info["skip_layernorm"] = optimize_onnx(current, current.parent / "model_optimized.onnx", level,
                                                        backend, config.split_skip_layernorm)
    info["optimization"] = level
    return current, info


def _export_classifier(src: Path, work: Path, config: ExportConfig, backend: str,
                       progress: bool = False) -> tuple[Path, dict]:
    from ..artifacts import OrtPredictor, load_predictor
    from .graph import op_counts
    from .onnx import export_onnx
    from .ort_quant import quantize_dynamic_onnx
    from .validate import check_budget, compare, load_validation, predict_all

    data = load_validation(config.task, config.validation_samples)
    data.check_model(src)
    source = load_predictor(src, max_length=config.max_length)
    source_logits = predict_all(source.predict_logits, data, progress=progress, desc="validate: source")
    tokenizer = source.tokenizer

    logger.info("export: ONNX graph (%s backend), then optimization %s, quantization %s", backend,
                config.optimization, config.quantization)
    onnx_path = export_onnx(src, work / "export", "sequence-classification", backend, config.opset)
    fp32_ops = op_counts(onnx_path)
    current, record = _optimize_and_quantize_common(onnx_path, config, backend, config.optimization)
    if config.embeddings == "int4":  # first: the int8 quantizers below would otherwise quantize the table
        from .embeddings import quantize_embeddings_int4
        from .graph import infer_shapes

        current, record["int4_embedding_tables"] = quantize_embeddings_int4(
            current, current.parent / "model_emb4.onnx", config.embeddings_block_size)
        infer_shapes(current)
    optimized = current

    def score(path: Path) -> dict:
        clf = OrtPredictor(path, tokenizer=tokenizer, max_length=config.max_length)
        return compare(source_logits, predict_all(clf.predict_logits, data, progress=progress,
                                                  desc="validate: exported"), data)

    q = config.quantization
    record["quantization"] = q
    if q == "dynamic":
        current = quantize_dynamic_onnx(optimized, optimized.parent / "model_quantized.onnx", backend,
                                        config.per_channel)
    elif q in NBITS:
        current = _weight_only(optimized, config, record)
    elif q == "static":
        current, record["guard"] = _static_with_guard(optimized, work, config, backend, tokenizer, score,
                                                      progress)
    validation = record.pop("_validation", None) or score(current)
    record["validation"] = validation
    if validation["drop"] <= config.max_metric_drop + 1e-9:
        from .validate import latency_vs_source

        clf = OrtPredictor(current, tokenizer=tokenizer, max_length=config.max_length)
        validation["latency"] = latency_vs_source(source.predict_logits, clf.predict_logits, data)
    record["ops"] = op_counts(current)
    record["ops_fp32_export"] = fp32_ops
    record["size_mb"] = round(current.stat().st_size / 2**20, 3)
    check_budget(validation, config.max_metric_drop, f"export ({config.optimization}, {q})")
    return current, record


def _calibration_features(config: ExportConfig, tokenizer, input_names: list[str]) -> dict:
    import numpy as np

    from ..data import load_task

    from ..data.sampling import stratified_subset
    from ..data.tasks import TaskSpec

    spec = TaskSpec.coerce(config.task)
    train = stratified_subset(load_task(spec)["train"], config.calibration_samples, spec.seed)
    pairs = list(train["text_pair"]) if "text_pair" in train.column_names else None
    # one fixed length (the longest example, capped) so chunks stack; the attention mask hides the padding
    longest = max(len(ids) for ids in tokenizer(list(train["text"]), pairs, truncation=True,
                                                  max_length=config.max_length)["input_ids"])
    enc = tokenizer(list(train["text"]), pairs, truncation=True, max_length=longest, padding="max_length",
                    return_tensors="np")
    feats = {n: enc[n].astype(np.int64) for n in input_names if n in enc}
    if "token_type_ids" in input_names and "token_type_ids" not in feats:
        feats["token_type_ids"] = np.zeros_like(feats["input_ids"])
    return feats


def _static_with_guard(src: Path, work: Path, config: ExportConfig, backend: str, tokenizer, score,
                       progress: bool = False):
    """Static INT8; while the drop exceeds the budget keep more node groups in float (see ``guard_groups``)."""
    import onnx

    from .ort_quant import calibrate_onnx, guard_groups, quantize_static_onnx

    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    feats = _calibration_features(config, tokenizer, names)
    ranges = calibrate_onnx(src, feats, backend, work / "calibration", config.calibration_batch_size, progress)
    groups = guard_groups(src, ranges) if config.guard else []
    excluded: list[str] = []
    steps = []
    dst = src.parent / "model_static.onnx"
    for label, nodes in [("none", [])] + groups:
        excluded = excluded + nodes
        quantize_static_onnx(src, dst, backend, ranges, config.per_channel, excluded)
        result = score(dst)
        steps.append({"kept_float": label, "excluded_nodes": len(excluded), "candidate": result["candidate"],
                      "drop": result["drop"]})
        logger.info("static int8 guard: float %s (%d nodes) -> %s %.4f (drop %.4f)", label, len(excluded),
                    result["metric"], result["candidate"], result["drop"])
        if result["drop"] <= config.max_metric_drop or not config.guard:
            break
    guard = {"steps": steps, "excluded_nodes": excluded, "calibration_samples": len(feats["input_ids"]),
             "reached": result["drop"] <= config.max_metric_drop}
    if not guard["reached"]:
        logger.warning("static int8: the budget max_metric_drop=%s cannot be reached even with %d nodes in float",
                       config.max_metric_drop, len(excluded))
    return dst, guard


def _weight_only(src: Path, config: ExportConfig, record: dict, grids: dict | None = None) -> Path:
    """``MatMulNBits`` weight-only quantization of ``src`` (int4 / int8_weight_only); counts go into ``record``.
    ``grids``: the checkpoint's own grids (``method: checkpoint``), written as they are."""
    from .ort_quant import quantize_int4_onnx

    bits = NBITS[config.quantization]
    if config.method == "checkpoint":
        from .matmulnbits import apply_checkpoint_grid

        if grids is None:
            from ..errors import HfOptimError

            raise HfOptimError("method 'checkpoint' is offered for causal LMs; use method 'rtn' for classifiers")
        dst, record["checkpoint_grid"] = apply_checkpoint_grid(src, src.parent / f"model_{config.quantization}.onnx",
                                                               grids, config.accuracy_level)
        record[f"int{bits}_matmuls"] = record["checkpoint_grid"]["matmuls"]
        return dst
    dst, record[f"int{bits}_matmuls"] = quantize_int4_onnx(
        src, src.parent / f"model_{config.quantization}.onnx", group_size=config.group_size,
        min_weights=config.min_weights, symmetric=config.symmetric, bits=bits, accuracy_level=config.accuracy_level,
        method=config.method)
    return dst


def _export_causal_lm(src: Path, work: Path, config: ExportConfig, backend: str) -> tuple[Path, dict]:
    from .graph import op_counts
    from .onnx import export_onnx
    from .ort_quant import quantize_dynamic_onnx

    logger.info("export: ONNX graph (%s backend), then optimization %s, quantization %s", backend,
                config.optimization, config.quantization)
    grids, export_src = None, src
    if config.quantization in NBITS and config.method == "checkpoint":  # the float graph of the checkpoint's grid
        from .matmulnbits import float_checkpoint

        export_src = work / "dequantized"
        grids = float_checkpoint(src, export_src, NBITS[config.quantization])
    onnx_path = export_onnx(export_src, work / "export", "causal-lm", backend, config.opset)
    record: dict[str, Any] = {}
    current = onnx_path
    if config.optimization != "none":
        from .graph import optimize_onnx

        try:
            current, record["skip_layernorm"] = optimize_onnx(current, current.parent / "model_optimized.onnx",
                                                              config.optimization, backend, config.split_skip_layernorm)
        except Exception as e:  # noqa: BLE001 - not every decoder family has ORT fusions; keep the plain graph
            logger.warning("ORT optimization %s failed for this decoder (%s); exporting without it",
                           config.optimization, e)
            record["optimization_error"] = str(e)[:300]
    record["optimization"] = config.optimization if current != onnx_path else "none"
    q = config.quantization
    record["quantization"] = q
    if q == "dynamic":
        current = quantize_dynamic_onnx(current, current.parent / "model_quantized.onnx", backend, config.per_channel)
    elif q in NBITS:
        current = _weight_only(current, config, record, grids)
    logger.info("export: validating perplexity against the source model")
    record["validation"] = _validate_causal_lm(src, current, config)
    record["ops"] = op_counts(current)
    record["size_mb"] = round(current.stat().st_size / 2**20, 3)
    v = record["validation"]
    if v["drop"] > config.max_metric_drop:
        from ..errors import StageError

        raise StageError(f"export (causal LM): perplexity rose {100 * v['drop']:.1f}% ({v['source']:.3f} -> "
                         f"{v['candidate']:.3f}), more than max_metric_drop={config.max_metric_drop} (relative); "
                         "nothing was written")
    return current, record


def _validate_causal_lm(src: Path, onnx_path: Path, config: ExportConfig, n_texts: int = 8) -> dict:
    """Perplexity of torch vs the ONNX graph (run with an empty past) on held-out text."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data import load_text
    from ..data.tasks import named_corpus
    from .runtime import make_session
    from .validate import causal_lm_perplexity

    name = named_corpus(config) or "bbc-news"
    texts = [t for t in load_text(name)["validation"]["text"][:n_texts] if t.strip()]
    tok = AutoTokenizer.from_pretrained(src)
    encs = [dict(tok(t, return_tensors="np", truncation=True, max_length=config.max_length)) for t in texts]
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    cfg = model.config

    def torch_logits(ids, mask):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.float().numpy()

    sess = make_session(onnx_path)
    inputs = {i.name: i for i in sess.get_inputs()}
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def ort_logits(ids, mask):
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        for name in inputs:
            if name.startswith("past_key_values"):
                feeds[name] = np.zeros((ids.shape[0], kv_heads, 0, head_dim), dtype=np.float32)
        return sess.run(["logits"], feeds)[0]

    ppl_src = causal_lm_perplexity(torch_logits, encs)
    ppl = causal_lm_perplexity(ort_logits, encs)
    diff = max(float(np.abs(torch_logits(e["input_ids"], e["attention_mask"]) -
                            ort_logits(e["input_ids"], e["attention_mask"])).max()) for e in encs[:2])
    return {"task": name, "split": "validation", "examples": len(encs), "metric": "perplexity",
            "source": round(ppl_src, 4), "candidate": round(ppl, 4), "drop": round(ppl / ppl_src - 1, 6),
            "max_logit_diff": round(diff, 6)}


def run_export(config: ExportConfig, ctx) -> dict[str, Any]:
    from .validate import run_staged, validation_metrics

    record = run_staged(export_model, config, ctx)
    if config.format != "onnx":
        from .portable import portable_metrics

        return portable_metrics(record)
    metrics = {"backend": record["backend"], "backend_note": record["backend_note"],
               "optimization": record["optimization"], "quantization": record["quantization"],
               **validation_metrics(record), "size_mb": record["size_mb"], "export_seconds": record["export_seconds"]}
    if "skip_layernorm" in record:  # what was done (``auto`` resolved) and, when probed, the probe's timings
        metrics["split_skip_layernorm"] = record["skip_layernorm"]["decision"]
        if "probe_ms" in record["skip_layernorm"]:
            metrics["skip_layernorm_probe_ms"] = record["skip_layernorm"]["probe_ms"]
    if "guard" in record:
        metrics["guard_kept_float"] = [s["kept_float"] for s in record["guard"]["steps"]][1:]
        metrics["guard_reached"] = record["guard"]["reached"]
    return metrics
