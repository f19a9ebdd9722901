"""ONNX Runtime inference for exported directories, with the same ``predict_logits`` as the torch classifier.

The predictor lives in :mod:`hf_optim.artifacts` (one protocol for torch, ONNX Runtime and compiled models);
these names stay for the callers that know them.
"""

from __future__ import annotations

from ..artifacts import OrtPredictor, is_onnx_dir, make_session

__all__ = ["OrtClassifier", "is_onnx_dir", "make_session"]

OrtClassifier = OrtPredictor
