"""GPTQ: weight-only quantization that compensates each column's rounding error on the columns not yet quantized.

* :mod:`.algorithm`: the solve for one weight matrix (:func:`gptq_quantize_weight`) and the least-squares refit
  of its scales (:func:`refit_qparams`);
* :mod:`.tune`: tuning the chosen grid per layer (:func:`tune_layer_qparams`) and end to end
  (:func:`tune_model_qparams`);
* :mod:`.sequential`: the layer-by-layer driver over a causal LM (:func:`gptq_quantize_`);
* :mod:`.calibration`: the calibration's threads, its time per phase, and the float model's targets computed once.
"""

from __future__ import annotations

from .algorithm import gptq_quantize_weight, refit_qparams
from .sequential import decoder_layers, gptq_quantize_
from .tune import tune_layer_qparams, tune_model_qparams

__all__ = ["gptq_quantize_weight", "refit_qparams", "gptq_quantize_", "decoder_layers", "tune_layer_qparams",
           "tune_model_qparams"]
