"""``quantize`` stage handler and :func:`quantize_dir`, its Python form."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data.tasks import TaskSpec, is_text_corpus
from .config import QuantizeConfig
from .schemes import SCHEMES

__all__ = ["quantize_dir", "run_quantize", "linear_weight_bytes", "sqnr_db"]

logger = logging.getLogger("hf_optim")


def _auto_class(model_dir: Path):
    import transformers

    from ..artifacts import checkpoint_kind

    name = {"sequence-classification": "AutoModelForSequenceClassification",
            "causal-lm": "AutoModelForCausalLM"}.get(checkpoint_kind(model_dir), "AutoModel")
    return getattr(transformers, name)


def linear_weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the Linear weights (quantized values + scales) vs the same layers in float32."""
    from .modules import QuantLinear

    stored = fp32 = 0
    for mod in model.modules():
        if isinstance(mod, QuantLinear):
            stored += mod.weight.numel() * mod.weight.element_size() + mod.weight_scale.numel() * 4
            stored += 0 if mod.symmetric else mod.weight_zero_point.numel() * 4
            fp32 += mod.in_features * mod.out_features * 4
        elif isinstance(mod, torch.nn.Linear):
            stored += mod.weight.numel() * mod.weight.element_size()
            fp32 += mod.weight.numel() * 4
    return {"linear_weight_bytes": stored, "linear_weight_bytes_fp32": fp32}


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is closer; ~40 dB+ is near-lossless for logits)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).mean()
    return float("inf") if noise == 0 else float(10 * math.log10(ref.pow(2).mean() / noise))


def _main_output(out) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return (logits if logits is not None else out[0]).float()


def _batches(tokenizer, texts, batch_size: int, max_length: int):
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        yield {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _texts(spec: TaskSpec, split: str, n: int) -> list[str]:
    from ..data import load_task
    from ..data.sampling import stratified_subset

    # stratified by label with the task's seed, so calibration sees every class in proportion
    return stratified_subset(load_task(spec)[split], n, spec.seed)["text"]


def text_chunks(tokenizer, corpus: str, split: str, n: int, length: int, seed: int = 42) -> torch.Tensor:
    """``[n, length]`` token ids: the split's documents shuffled with ``seed``, joined and cut into chunks."""
    from ..data import load_text

    data = load_text(corpus)[split].shuffle(seed=seed)
    ids: list[int] = []
    sep = tokenizer.eos_token_id
    for text in data["text"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + ([sep] if sep is not None else [])
        if len(ids) >= n * length:
            break
    n = min(n, len(ids) // length)
    if n < 1:
        raise ValueError(f"{corpus}/{split} has fewer than {length} tokens")
    return torch.tensor(ids[:n * length]).reshape(n, length)


def _run_qat(model, tokenizer, config: QuantizeConfig, spec: TaskSpec, scratch: str, seed: int, log_callback=None,
             progress: bool = False):
    import numpy as np
    from transformers import DataCollatorWithPadding, Trainer

    from ..data import load_task
    from ..training import quiet_printer, tokenize_splits, training_arguments
    from .apply import convert_qat_, prepare_qat_, qat_callback

    data = load_task(spec)
    if config.qat_max_train_samples:
        from ..data.sampling import stratified_subset

        data["train"] = stratified_subset(data["train"], config.qat_max_train_samples, spec.seed)
    encoded = tokenize_splits(data, tokenizer, config.max_length)
    steps = int(np.ceil(len(encoded["train"]) / config.batch_size) * config.qat_epochs)
    prepare_qat_(model, config.include, config.exclude)
    # Seed the activation ranges on a float forward pass before training moves them.
    model.train()
    args = training_arguments(scratch, per_device_train_batch_size=config.batch_size,
                              learning_rate=config.qat_learning_rate, num_train_epochs=config.qat_epochs,
                              logging_steps=max(1, steps // 10), seed=seed, disable_tqdm=not progress,
                              warmup_steps=0)
    callbacks = [qat_callback(freeze_observers_at=max(1, int(steps * config.qat_freeze_observers)))]
    if log_callback is not None:
        callbacks.append(log_callback)
    trainer = Trainer(model=model, args=args, train_dataset=encoded["train"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks)
    result = quiet_printer(trainer, progress).train()
    model.eval()
    convert_qat_(model)
    return {"qat_train_loss": float(result.training_loss), "qat_steps": int(result.global_step),
            "qat_train_examples": len(encoded["train"])}


def quantize_dir(model_dir: str | Path, output_dir: str | Path, config: QuantizeConfig | None = None, seed: int = 42,
                 progress: bool = False, log_callback=None, **kwargs: Any) -> dict[str, Any]:
    """Quantize the model in ``model_dir`` and save it (with its tokenizer) to ``output_dir``.

    Args:
        model_dir (`str` or `Path`): a directory ``from_pretrained`` loads.
        output_dir (`str` or `Path`): where the quantized checkpoint is written.
        config (`QuantizeConfig`, *optional*): what to do; or pass its fields as keyword arguments.
        progress (`bool`, *optional*, defaults to `False`): progress bars over calibration, GPTQ's layers and
            QAT's training steps.

    Returns:
        `dict`: metrics (modules quantized, Linear weight bytes before/after, logit SQNR vs the float model).
    """
    from transformers import AutoTokenizer

    from .apply import calibrate, quantize_model_, target_linears

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config = config or QuantizeConfig(**{"model": str(model_dir), **kwargs})
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _auto_class(model_dir).from_pretrained(model_dir).eval()
    before = linear_weight_bytes(model)
    targeted = target_linears(model, config.include, config.exclude)
    if SCHEMES[config.scheme].replaces_linears and not targeted and not config.lm_head:
        linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
        raise ValueError(f"{config.scheme}: include={list(config.include or [])} / exclude="
                         f"{list(config.exclude) if config.exclude is not None else 'the default heads'} match none "
                         f"of the model's {len(linears)} Linear layers (e.g. {', '.join(linears[:3]) or 'none'}), so "
                         "nothing would be quantized; fix the patterns (regexes searched in module names)")
    corpus = config.text_corpus or ("bbc-news" if type(model).__name__.endswith("ForCausalLM") else None)
    lm_calibration = corpus is not None
    spec = None if lm_calibration and is_text_corpus(config.task) else TaskSpec.coerce(config.task)
    if lm_calibration:
        chunks = text_chunks(tokenizer, corpus, config.calibration_split,
                             (config.calibration_samples if config.method == "gptq" else 0) + 2, config.max_length,
                             seed)
        probe = {"input_ids": chunks[-2:]}  # held out from calibration
        chunks = chunks[:-2]
    else:
        probe = list(_batches(tokenizer, _texts(spec, "validation", 64), 64, config.max_length))[0]
    with torch.inference_mode():
        ref = _main_output(model(**probe))
    metrics: dict[str, Any] = {"scheme": config.scheme, "modules_targeted": len(targeted)}
    if config.method == "gptq":
        from .gptq import gptq_quantize_

        if lm_calibration:
            batches = [{"input_ids": chunks[i:i + config.batch_size]} for i in range(0, len(chunks), config.batch_size)]
        else:
            texts = _texts(spec, config.calibration_split, config.calibration_samples)
            batches = list(_batches(tokenizer, texts, config.batch_size, config.max_length))
        cost: dict[str, Any] = {}
        metrics.update(gptq_quantize_(model, batches, config, progress=progress, cost=cost))
        metrics["calibration"] = cost  # wall seconds per phase, threads, peak memory: shown next to the gain
    elif SCHEMES[config.scheme].data == "calibration":
        texts = _texts(spec, config.calibration_split, config.calibration_samples)
        ranges = calibrate(model, list(_batches(tokenizer, texts, config.batch_size, config.max_length)),
                           config.observer, config.percentile, config.include, config.exclude, progress)
        quantize_model_(model, config, ranges=ranges)
        metrics["calibration_samples"] = len(texts)
    elif SCHEMES[config.scheme].data == "training":
        if "ForSequenceClassification" not in type(model).__name__:
            raise ValueError("int8_qat fine-tunes on the task's labels and needs a sequence classifier; got "
                             f"{type(model).__name__}. Use int8_static for other models.")
        scratch = tempfile.mkdtemp(prefix="qat-")
        try:
            metrics.update(_run_qat(model, tokenizer, config, spec, scratch, seed, log_callback, progress))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        quantize_model_(model, config)
    qcfg = model.config.quantization_config
    qcfg.provenance = {**qcfg.provenance, "stage_config": config.to_dict()}
    with torch.inference_mode():
        out = _main_output(model(**probe))
    after = linear_weight_bytes(model)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    metrics.update({
        "modules_quantized": len(qcfg.modules or {}),
        "linear_weight_bytes_fp32": before["linear_weight_bytes_fp32"],
        "linear_weight_bytes": after["linear_weight_bytes"],
        "linear_weight_ratio": round(after["linear_weight_bytes"] / max(1, before["linear_weight_bytes_fp32"]), 4),
        "logits_sqnr_db": round(sqnr_db(ref, out), 2),
        "logits_max_abs_diff": float((ref - out).abs().max()),
    })
    logger.info("quantized %s -> %s: %s", model_dir, output_dir, metrics)
    return metrics


def run_quantize(config: QuantizeConfig, ctx) -> dict[str, Any]:
    return quantize_dir(ctx.inputs["model"], ctx.output_dir, config, seed=ctx.seed, progress=ctx.progress,
                        log_callback=ctx.log_callback())
