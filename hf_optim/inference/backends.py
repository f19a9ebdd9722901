"""What the inference engine runs: a batch of int64 token-id arrays in, a numpy array ``(batch, ...)`` out.

Directories (torch checkpoints, ONNX exports, compiled artifacts) and loaded torch models or ONNX Runtime sessions
are served through the predictors of :mod:`hf_optim.artifacts`; anything else callable Hugging Face style (an
Optimum ``ORTModel``) through :class:`CallableBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import OrtPredictor, TorchPredictor, artifact_format, load_predictor, pick_output, to_numpy
from ..errors import DataError
from .config import InferenceConfig

__all__ = ["CallableBackend", "make_backend"]


class CallableBackend:
    """Anything with a Hugging Face style ``__call__(**encoded) -> output.logits`` (e.g. Optimum's ``ORTModel``)."""

    def __init__(self, model, output: str):
        self.model = model
        self.output = output
        self.max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return to_numpy(pick_output(self.model(**batch), self.output))


def _is_ort_session(model: Any) -> bool:
    return type(model).__module__.startswith("onnxruntime") and hasattr(model, "run") and hasattr(model, "get_inputs")


def _load_dir(path: Path, config: InferenceConfig):
    """``(predictor, tokenizer_dir)`` for a model directory (or a single ``.onnx`` file). The engine tokenizes
    itself, so the predictor gets no tokenizer."""
    if artifact_format(path) is None:
        what = "does not exist" if not path.exists() else "is not a model directory (no config.json and no .onnx file)"
        raise DataError(f"{path} {what}; pass a directory written by save_pretrained, a recipe stage or an ONNX "
                        "export, or a loaded model")
    # A raw ONNX Runtime session works the same on both dependency stacks; Optimum's ORTModel wraps the same
    # session and can be passed in directly when you want it.
    predictor = load_predictor(path, output=config.output, tokenizer=None, threads=config.ort_threads)
    return predictor, path.parent if path.is_file() else path


def _tokenizer_in(tok_dir: Any):
    """The tokenizer saved in ``tok_dir``, or `None` when there is none (pre-tokenized requests need none)."""
    if tok_dir is None or not Path(tok_dir).is_dir() or not any(
            (Path(tok_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def make_backend(model: Any, tokenizer: Any, config: InferenceConfig):
    """``(backend, tokenizer)``: the backend serving ``model``, and ``tokenizer`` or, when it is `None`, the one
    saved with the model (`None` when there is none)."""
    if isinstance(model, (str, Path)):
        backend, tok_dir = _load_dir(Path(model), config)
    elif _is_ort_session(model):
        backend, tok_dir = OrtPredictor(session=model, tokenizer=None, output=config.output), None
    elif _is_torch_module(model):
        backend, tok_dir = TorchPredictor(model, output=config.output), getattr(model, "name_or_path", None) or None
    elif callable(model):
        backend, tok_dir = CallableBackend(model, config.output), getattr(model, "model_save_dir", None)
    else:
        raise TypeError(f"InferenceEngine needs a model directory, a torch model, an ORTModel or an "
                        f"onnxruntime.InferenceSession, not {type(model).__name__}")
    backend.id_limits = _id_limits(model)
    return backend, tokenizer if tokenizer is not None else _tokenizer_in(tok_dir)


def _id_limits(model: Any) -> dict[str, int]:
    """``{"input_ids": vocab_size, "token_type_ids": type_vocab_size}`` as far as the model's config says."""
    if isinstance(model, (str, Path)):
        from ..artifacts import read_config

        path = Path(model)
        cfg = read_config(path.parent if path.is_file() else path) or {}
    else:
        config = getattr(model, "config", None)
        cfg = config.to_dict() if hasattr(config, "to_dict") else {}
    limits = {"input_ids": cfg.get("vocab_size"), "token_type_ids": cfg.get("type_vocab_size")}
    return {k: v for k, v in limits.items() if isinstance(v, int) and v > 0}


def _is_torch_module(model: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, torch.nn.Module)
