"""A uniform ``predict_logits(texts)`` over the model formats hf_optim evaluates."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError


class TorchClassifier:
    """A ``from_pretrained`` sequence-classification model and its tokenizer, in eval mode."""

    def __init__(self, model, tokenizer, max_length: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    def predict_logits(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), list(text_pairs) if text_pairs else None, truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model(**{k: v.to(device) for k, v in enc.items()})
        return out.logits.float().cpu().numpy()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts)


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)``, or a :class:`DataError` saying what to add when the directory
    holds no usable tokenizer: transformers 4.x raises anything from ``OSError`` to ``TypeError`` there, and 5.x
    builds a tokenizer of special tokens only, which maps every word to ``[UNK]`` (a model scored through it
    reports a number that means nothing)."""
    from transformers import AutoTokenizer

    fix = "save it next to the weights with tokenizer.save_pretrained(DIR)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise DataError(f"{path} has no usable tokenizer ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise DataError(f"{path} has no usable tokenizer (it knows only its {len(tokenizer)} special tokens); {fix}")
    return tokenizer


def load_classifier(model_dir: str | Path, max_length: int = 128) -> TorchClassifier:
    """Load a text classifier from a directory ``from_pretrained`` reads, an exported ONNX directory
    (``*.onnx`` and no torch weights: run by ONNX Runtime) or a ``compile`` stage artifact.

    Raises:
        DataError: the directory is missing or is not a sequence-classification checkpoint.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(model_dir)
    # exported / compiled artifacts (hf_optim.export) keep the same predict_logits interface
    if (path / "hf_optim_compile.json").is_file():
        from ..export.compile import load_compiled

        return load_compiled(path, max_length=max_length)
    if (path / "config.json").is_file():
        from ..export.runtime import is_onnx_dir

        if is_onnx_dir(path):
            from ..export.runtime import OrtClassifier

            return OrtClassifier.from_dir(path, max_length=max_length)
    if not (path / "config.json").is_file():
        raise DataError(f"{path} is not a model directory (no config.json); pass a folder written by "
                        "save_pretrained or by a recipe stage")
    config = AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise DataError(f"{path} holds a {', '.join(archs) or config.model_type} model, not a sequence "
                        "classifier; fine-tune it first (a `finetune` stage)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"could not load the model in {path}: {str(e)[:500]}") from None
    tokenizer = load_tokenizer(path)
    return TorchClassifier(model, tokenizer, max_length=max_length)
