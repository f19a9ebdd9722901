"""A uniform ``predict_logits(texts)`` over the model formats hf_optim evaluates.

The predictors live in :mod:`hf_optim.artifacts`, below every technique; these names stay for the callers that
know them.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import Predictor, TorchPredictor, load_predictor, load_tokenizer

__all__ = ["TorchClassifier", "load_classifier", "load_tokenizer"]

TorchClassifier = TorchPredictor


def load_classifier(model_dir: str | Path, max_length: int = 128) -> Predictor:
    """Load a text classifier from a directory ``from_pretrained`` reads, an exported ONNX directory
    (``*.onnx`` and no torch weights: run by ONNX Runtime) or a ``compile`` stage artifact
    (:func:`~hf_optim.artifacts.load_predictor`).

    Raises:
        DataError: the directory is missing or is not a sequence-classification checkpoint.
    """
    return load_predictor(model_dir, max_length=max_length)
