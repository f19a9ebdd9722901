"""``InferenceConfig``: the serving knobs of :class:`~hf_optim.inference.InferenceEngine` (data only)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from ..config import OptimConfig, added_field

__all__ = ["InferenceConfig"]


@dataclasses.dataclass
class InferenceConfig(OptimConfig):
    """How an :class:`~hf_optim.inference.InferenceEngine` batches, queues and caches.

    Args:
        max_batch_size (`int`, *optional*, defaults to 32): most requests in one model call.
        max_wait_ms (`float`, *optional*, defaults to 5.0): longest a request waits for batch-mates before its
            bucket is run anyway. Raise it for throughput under heavy load, lower it for latency.
        length_buckets (`list[int]`, *optional*, defaults to `[16, 32, 64, 128]`): strictly increasing token
            bounds. Requests are batched with requests of the same bucket (unless ``merge_padding`` tops a batch
            up from others), and a batch is padded to its own longest member, so no batch is ever wider than
            the bound of the largest bucket it holds. The last bound is the longest accepted input.
        merge_padding (`float`, *optional*, defaults to 0.0): a batch that is run before it is full is topped up
            with waiting requests of the nearest other buckets while at most this share of its tokens is
            padding (0 = batches never mix buckets). More rows per call at the price of some padding.
        truncation (`bool`, *optional*, defaults to `False`): cut inputs longer than the last bucket instead
            of failing them with :class:`~hf_optim.inference.InputTooLong`.
        max_queue (`int`, *optional*, defaults to 4096): most requests waiting to be batched.
        on_full (`str`, *optional*, defaults to `"raise"`): when the queue is full, `"raise"` makes ``submit``
            raise :class:`~hf_optim.inference.QueueFull` at once; `"block"` waits for room (up to
            ``submit_timeout_s``).
        submit_timeout_s (`float`, *optional*): longest a blocking ``submit`` waits; `None` = no limit.
        output (`str`, *optional*, defaults to `"logits"`): the model output returned per request.
        cache_entries (`int`, *optional*, defaults to 0): result-cache size in entries when the engine builds its
            own cache; 0 with ``cache_bytes`` 0 means no cache, or ``InferenceCache``'s default limits with
            ``cache=True`` (pass ``cache=InferenceCache(...)`` to share one between engines).
        cache_bytes (`int`, *optional*, defaults to 0): result-cache size in bytes (0 = unlimited when
            ``cache_entries`` is set).
        cache_ttl_s (`float`, *optional*): seconds a cached result stays valid; `None` = no expiry.
        ort_threads (`int`, *optional*): intra-op threads of an ONNX Runtime session the engine creates from a
            directory; `None` = ONNX Runtime's default. Torch threads are process-wide: set them yourself
            (``torch.set_num_threads``).
    """

    kind = "inference"
    version = 1

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    length_buckets: tuple[int, ...] = (16, 32, 64, 128)
    merge_padding: float = added_field(0.0)
    truncation: bool = False
    max_queue: int = 4096
    on_full: Literal["raise", "block"] = "raise"
    submit_timeout_s: Optional[float] = None
    output: str = "logits"
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_ttl_s: Optional[float] = None
    ort_threads: Optional[int] = None

    def validate(self) -> None:
        if self.max_batch_size < 1:
            self._fail("max_batch_size", "must be >= 1")
        if self.max_wait_ms < 0:
            self._fail("max_wait_ms", "must be >= 0 (0 = run whatever is waiting at once)")
        b = self.length_buckets
        if not b or any(x < 1 for x in b) or list(b) != sorted(set(b)):
            self._fail("length_buckets", "expected strictly increasing positive token counts, e.g. [16, 32, 64, 128]")
        if not 0 <= self.merge_padding < 1:
            self._fail("merge_padding", "must be a padded share in [0, 1) (0 = never mix buckets)")
        if self.max_queue < 1:
            self._fail("max_queue", "must be >= 1")
        if self.submit_timeout_s is not None and self.submit_timeout_s < 0:
            self._fail("submit_timeout_s", "must be >= 0 or null")
        if self.cache_entries < 0:
            self._fail("cache_entries", "must be >= 0 (0 = no entry limit / no cache)")
        if self.cache_bytes < 0:
            self._fail("cache_bytes", "must be >= 0 (0 = no byte limit / no cache)")
        if self.cache_ttl_s is not None and self.cache_ttl_s <= 0:
            self._fail("cache_ttl_s", "must be > 0 seconds, or null for no expiry")
        if self.ort_threads is not None and self.ort_threads < 1:
            self._fail("ort_threads", "must be >= 1, or null for ONNX Runtime's default")
