"""ONNX export and ONNX Runtime graph optimization, through Optimum or through ``torch.onnx`` + ORT's own tools.

Two backends give the same artifact (``model.onnx`` + ``config.json`` + tokenizer files):

* ``optimum``: ``optimum.exporters.onnx.main_export`` and ``ORTOptimizer`` (the primary stack);
* ``torch``: ``torch.onnx.export`` (TorchScript-based exporter, eager attention: the graph ORT's transformer
  optimizer knows how to fuse) and ``onnxruntime.transformers.optimizer.optimize_model`` with the same
  settings Optimum uses per level. This is the path on transformers 5, where optimum-onnx cannot be installed.

After fusion, ONNX's own shape inference cannot type the outputs of ORT's contrib ops (``Attention``,
``SkipLayerNormalization``), and the quantizer then stops with "Unable to find data type for weight_name".
That is why Optimum's O2/O3 + INT8 fails; :func:`infer_shapes` runs ORT's symbolic shape inference, which knows
those ops, so a fused graph can be quantized (``Attention`` -> ``QAttention``).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Optional

from ..compat import FeatureUnavailable, has_optimum, require_optimum

logger = logging.getLogger("hf_optim")

__all__ = ["resolve_backend", "detect_task_type", "export_onnx", "optimize_onnx", "infer_shapes",
           "copy_preprocessors", "ONNX_NAME", "OPTIMIZE_LEVELS"]

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
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    from ..errors import DataError

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
        if task_type != "sequence-classification":
            raise FeatureUnavailable(
                "exporting a causal LM with past key values needs Optimum (optimum-onnx); the torch.onnx fallback "
                "covers sequence classifiers. Use the primary stack (`make setup`) for causal LMs.")
        _torch_export_classifier(src, out / ONNX_NAME, opset)
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


def optimize_onnx(onnx_path: str | Path, out_path: str | Path, level: str, backend: str) -> Path:
    """Apply ORT graph optimization ``level`` (O1-O3) to ``onnx_path``; writes ``out_path`` and returns it.

    The result always carries symbolic shape information (see :func:`infer_shapes`), so it can be quantized.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cfg = json.loads((onnx_path.parent / "config.json").read_text())
    if backend == "optimum":
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import AutoOptimizationConfig

        work = out_path.parent / ".optimum-optimize"
        opt = ORTOptimizer.from_pretrained(onnx_path.parent, file_names=[onnx_path.name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.optimize(save_dir=work, optimization_config=AutoOptimizationConfig.with_optimization_level(level))
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
        heads = cfg.get("num_attention_heads") or cfg.get("n_head") or 0
        hidden = cfg.get("hidden_size") or cfg.get("n_embd") or 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = optimize_model(str(onnx_path), model_type=family, num_heads=heads, hidden_size=hidden,
                                   opt_level=spec["opt_level"], optimization_options=options,
                                   only_onnxruntime=not spec["fusions"])
        model.save_model_to_file(str(out_path))
    infer_shapes(out_path)
    return out_path


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
