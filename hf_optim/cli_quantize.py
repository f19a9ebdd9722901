"""``hf-optim quantize``: a model directory or Hub id quantized into a new directory that ``from_pretrained``
restores after ``import hf_optim``: what :func:`~hf_optim.quantize.quantize_model_` (or GPTQ, or calibration)
does to the model, saved the way the ``quantize`` stage saves it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from .cli_options import config_options, model_task
from .errors import HfOptimError

__all__ = ["quantize_parser", "cmd_quantize", "QUANTIZE_RECORD", "QUANTIZE_OPTIONS"]

QUANTIZE_RECORD = "hf_optim_quantize.json"
# the QuantizeConfig fields the command offers (the others keep their defaults; a recipe sets any of them)
QUANTIZE_OPTIONS = ["scheme", "group_size", "partial_groups", "symmetric", "method", "calibration_text", "lm_head",
                    "embeddings", "activations", "observer", "percentile", "calibration_split",
                    "calibration_samples", "batch_size", "max_length", "gptq_damp", "gptq_act_order",
                    "gptq_clip_search", "gptq_tune_steps", "gptq_e2e_steps"]


def quantize_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``quantize`` sub-command on ``sub`` (the top-level parser's sub-parsers)."""
    from .quantize.config import QuantizeConfig

    q = sub.add_parser("quantize", parents=parents, help="quantize a model (int8, int4, GPTQ, fp16/bf16) into a "
                       "directory from_pretrained restores", description="Quantize a model directory or Hub model id "
                       "and save it (with its tokenizer) the way the recipe's quantize stage does: from_pretrained "
                       "restores it after `import hf_optim`. The output is written whole, then renamed into place.")
    q.add_argument("model_dir", help="a model directory, or a Hub model id (org/name)")
    q.add_argument("--output", "-o", required=True, help="output directory (new or empty; see --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    q.add_argument("--task", help="calibration task (int8_static, int8_qat, GPTQ on a classifier) and the one the "
                   "output records (default: the one the model records; causal LMs: the text bbc-news)")
    config_options(q, QuantizeConfig, QUANTIZE_OPTIONS,
                   flags={"symmetric": "--asymmetric", "calibration_text": "--corpus"},
                   helps={"symmetric": "weight-only schemes: a zero point per group (asymmetric range, min..max of "
                                       "the group)"})
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(fn=cmd_quantize)
    return q


def _check_output(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise HfOptimError(f"--output {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HfOptimError(f"--output {out} is not empty; choose a new directory or pass --overwrite")


def cmd_quantize(args: argparse.Namespace) -> int:
    from .data import BUILTIN_TEXTS
    from .evaluation.harness import package_versions
    from .integrity import DIGESTS, weight_digests
    from .quantize.config import QuantizeConfig
    from .quantize.stage import quantize_dir
    from .task_record import record_task, recorded_task

    out = Path(args.output)
    _check_output(out, args.overwrite)
    task = model_task(args)
    config = QuantizeConfig(model=args.model_dir, task=task, **{n: getattr(args, n) for n in QUANTIZE_OPTIONS})
    out.parent.mkdir(parents=True, exist_ok=True)
    # scratch next to the output (same filesystem, never the CWD): an interrupted run leaves the output as it was
    work = Path(tempfile.mkdtemp(prefix=".quantize-work-", dir=out.parent))
    try:
        new = work / "model"
        metrics = quantize_dir(args.model_dir, new, config, progress=not (args.no_progress or args.quiet))
        source_task = recorded_task(args.model_dir)
        if source_task is not None or not (isinstance(task, str) and task in BUILTIN_TEXTS):
            record_task(new, source_task if source_task is not None else task)
        record = {"format": 1, "kind": "quantize", "source": str(args.model_dir), "config": config.to_dict(),
                  "metrics": metrics, "versions": package_versions(), DIGESTS: weight_digests(new)}
        (new / QUANTIZE_RECORD).write_text(json.dumps(record, indent=2))
        if out.exists():  # empty, or --overwrite: moved aside, then removed with the scratch directory
            os.replace(out, work / "old")
        os.replace(new, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out} ({config.scheme}{', gptq' if config.method == 'gptq' else ''}): "
          f"{metrics['modules_quantized']} modules quantized, Linear weights x{metrics['linear_weight_ratio']} of "
          f"float32, logits SQNR {metrics['logits_sqnr_db']} dB vs the float model")
    return 0
