"""``compile`` stage: ``torch.compile``, ``torch.export`` or TorchScript, validated on the task metric.

Artifacts (``from_pretrained`` files + ``hf_optim_compile.json``):

* ``compile``: the source weights; the record lists the warm-up shapes, which :func:`load_compiled` compiles
  again (a ``torch.compile`` graph cannot be saved). Inputs are padded up to the next warm-up length, so a call
  never triggers a recompile.
* ``export``: ``model.pt2`` (``torch.export.save``), dynamic in batch size and sequence length.
* ``torchscript``: ``model.torchscript.pt`` (trace + freeze + optimize_for_inference, fixed length
  ``max_length``). Deprecated by PyTorch; offered while torch ships it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ..artifacts import COMPILE_RECORD, CompiledPredictor, compile_warm, load_compiled, logits_module
from .config import CompileConfig

logger = logging.getLogger("hf_optim")

__all__ = ["compile_model", "load_compiled", "CompiledClassifier", "RECORD_NAME"]

RECORD_NAME = COMPILE_RECORD
CompiledClassifier = CompiledPredictor  # the predictor is in hf_optim.artifacts, with the torch and ONNX ones
_FILES = {"export": "model.pt2", "torchscript": "model.torchscript.pt"}


def _build(method: str, model, tokenizer, config: CompileConfig, out: Path | None) -> tuple[Any, dict]:
    """The compiled callable and what to record; saves the artifact file into ``out`` when given."""
    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in
                                               tokenizer.model_input_names else [])
    wrapper = logits_module(model)
    info: dict[str, Any] = {"names": names}

    def example(bs: int, length: int):
        return tuple(torch.ones(bs, length, dtype=torch.long) for _ in names)

    if method == "compile":
        fn, info["warmup_seconds"] = compile_warm(wrapper, len(names), config.mode, config.warmup_batch_sizes,
                                                  config.warmup_lengths)
        return fn, info
    if method == "export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("seq", min=2, max=config.max_length)
        with torch.no_grad():
            ep = torch.export.export(wrapper, example(2, min(16, config.max_length)),
                                     dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), strict=False)
        if out is not None:
            torch.export.save(ep, str(out / _FILES["export"]))
        return ep.module(), info
    # torchscript (deprecated by PyTorch): fixed length, batch size free
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example(2, config.max_length), strict=False, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    if out is not None:
        torch.jit.save(frozen, str(out / _FILES["torchscript"]))
    return frozen, info


def _lengths(config: CompileConfig, method: str) -> list[int]:
    if method == "torchscript":
        return [config.max_length]
    if method == "export":
        return [n for n in range(8, config.max_length + 8, 8) if n <= config.max_length] or [config.max_length]
    return sorted(set(config.warmup_lengths))


def compile_model(model_dir: str | Path, output_dir: str | Path, config: CompileConfig | None = None,
                  progress: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Compile a sequence classifier, validate it against the source on the task metric, and write it.
    ``progress`` shows bars over the validation batches.

    Returns the record written to ``output_dir/hf_optim_compile.json``; raises
    :class:`~hf_optim.errors.StageError` (writing nothing) when the metric drop exceeds ``max_metric_drop``.
    """
    import torch

    from ..artifacts import load_predictor
    from .onnx import copy_preprocessors
    from .validate import check_budget, compare, latency_vs_source, load_validation, predict_all

    config = config or CompileConfig(model=str(model_dir), **kwargs)
    src, out = Path(model_dir), Path(output_dir)
    if config.method == "torchscript":
        warnings.warn("TorchScript is deprecated by PyTorch; prefer method='export' or 'compile'",
                      DeprecationWarning, stacklevel=2)
    data = load_validation(config.task, config.validation_samples)
    data.check_model(src)
    source = load_predictor(src, max_length=config.max_length)
    source_logits = predict_all(source.predict_logits, data, progress=progress, desc="validate: source")
    params = int(sum(p.numel() for p in source.model.parameters()))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compile-work-", dir=out.parent))
    try:
        t = time.perf_counter()
        fn, info = _build(config.method, source.model, source.tokenizer, config, work)
        build_s = time.perf_counter() - t
        clf = CompiledPredictor(fn, source.tokenizer, info["names"], _lengths(config, config.method),
                                 config.max_length, params)
        validation = compare(source_logits, predict_all(clf.predict_logits, data, progress=progress,
                                                        desc="validate: compiled"), data)
        check_budget(validation, config.max_metric_drop, f"compile ({config.method})")
        validation["latency"] = latency_vs_source(source.predict_logits, clf.predict_logits, data)
        record = {"format": 1, "kind": "compile", "method": config.method, "source": str(src),
                  "file_name": _FILES.get(config.method), "input_names": info["names"],
                  "lengths": clf.lengths, "build_seconds": round(build_s, 2),
                  "warmup_seconds": info.get("warmup_seconds"), "validation": validation,
                  "params": params, "config": config.to_dict(), "torch": torch.__version__,
                  "deprecated": config.method == "torchscript"}
        out.mkdir(parents=True, exist_ok=True)
        for p in src.iterdir():
            if p.is_file() and (p.name == "config.json" or (config.method == "compile" and p.suffix == ".safetensors")):
                shutil.copy2(p, out / p.name)
        copy_preprocessors(src, out)
        if record["file_name"]:
            shutil.move(str(work / record["file_name"]), out / record["file_name"])
        (out / RECORD_NAME).write_text(json.dumps(record, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def run_compile(config: CompileConfig, ctx) -> dict[str, Any]:
    from .validate import run_staged, validation_metrics

    record = run_staged(compile_model, config, ctx)
    return {"method": record["method"], **validation_metrics(record), "build_seconds": record["build_seconds"],
            "deprecated": record["deprecated"]}
