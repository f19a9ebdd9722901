"""Serving building blocks: length-bucketed dynamic batching and an LRU/TTL result cache.

``InferenceConfig`` is light; the engine and the cache are imported on first use (the engine needs torch or
onnxruntime).

    from hf_optim.inference import InferenceEngine
    with InferenceEngine("runs/x/teacher", max_wait_ms=5, cache=True) as engine:
        logits = engine.submit("a gripping film").result()
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .config import InferenceConfig

_LAZY = {
    "InferenceEngine": "hf_optim.inference.engine",
    "EngineClosed": "hf_optim.inference.engine",
    "QueueFull": "hf_optim.inference.engine",
    "InputTooLong": "hf_optim.inference.batching",
    "LengthBuckets": "hf_optim.inference.batching",
    "BucketQueue": "hf_optim.inference.batching",
    "pad_batch": "hf_optim.inference.batching",
    "InferenceCache": "hf_optim.inference.cache",
    "CacheStats": "hf_optim.inference.cache",
    "model_fingerprint": "hf_optim.inference.cache",
    "dir_fingerprint": "hf_optim.inference.cache",
}

__all__ = ["InferenceConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
