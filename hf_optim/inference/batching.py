"""Length buckets, per-bucket FIFO queues and padding: the pure (thread-free) half of dynamic batching.

A request of ``n`` tokens belongs to the first bucket whose bound is ``>= n``. Each bucket is a FIFO; a bucket
is *ready* when it holds ``max_batch_size`` requests or its oldest request has waited ``max_wait_s``. A batch
is padded only to its own longest member, so a batch never holds more than ``bound`` tokens per row.

With ``merge_padding > 0`` a ready batch that is not full is topped up with waiting requests of the nearest
other buckets as long as the batch's padded share stays within ``merge_padding``: fewer, larger model calls
for some padding, which pays where a call has a high fixed cost (an accelerator, a remote runtime). The batch
then belongs to the largest bucket it holds and is still padded only to its longest member.
The engine guards :class:`BucketQueue` with its lock.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, HfOptimError

__all__ = ["LengthBuckets", "BucketQueue", "pad_batch", "InputTooLong", "check_id_ranges"]


class InputTooLong(HfOptimError, ValueError):
    """A request has more tokens than the largest length bucket (and truncation is off)."""


class LengthBuckets:
    """Sorted token-length bounds, e.g. ``(16, 32, 64, 128)``."""

    def __init__(self, bounds: Sequence[int]):
        bounds = tuple(bounds)
        if not bounds or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bounds) \
                or list(bounds) != sorted(set(bounds)):
            raise ConfigError(f"length_buckets = {bounds!r}: expected strictly increasing positive token counts, "
                              "e.g. [16, 32, 64, 128]", field="length_buckets")
        self.bounds = bounds

    @property
    def max_length(self) -> int:
        return self.bounds[-1]

    def index(self, length: int) -> int:
        """Index of the bucket for a request of ``length`` tokens; :class:`InputTooLong` past the last bound."""
        i = bisect.bisect_left(self.bounds, length)
        if i == len(self.bounds):
            raise InputTooLong(f"input has {length} tokens, more than the largest length bucket ({self.max_length}); "
                               "shorten it, add a larger bucket, or set truncation=True")
        return i

    def __len__(self) -> int:
        return len(self.bounds)

    def __repr__(self) -> str:
        return f"LengthBuckets({list(self.bounds)})"


class BucketQueue:
    """Pending requests grouped by length bucket, FIFO within each bucket.

    Items are any objects with ``length`` (tokens) and ``enqueued_at`` (clock seconds) attributes.

    Args:
        buckets (`LengthBuckets`): the bounds.
        max_batch_size (`int`): a bucket holding this many requests is flushed at once.
        max_wait_s (`float`): a bucket whose oldest request waited this long is flushed even if not full.
        merge_padding (`float`, *optional*, defaults to 0): largest padded share of a batch topped up from other
            buckets (0 = never mix buckets).
    """

    def __init__(self, buckets: LengthBuckets, max_batch_size: int, max_wait_s: float, merge_padding: float = 0.0):
        if not 0 <= merge_padding < 1:
            raise ConfigError(f"merge_padding = {merge_padding!r}: expected a padded share in [0, 1)",
                              field="merge_padding")
        self.buckets = buckets
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.merge_padding = merge_padding
        self._queues: list[deque] = [deque() for _ in buckets.bounds]
        self._size = 0

    def push(self, item: Any) -> bool:
        """Add ``item`` to its bucket; returns True when that bucket just became full."""
        q = self._queues[self.buckets.index(item.length)]
        q.append(item)
        self._size += 1
        return len(q) == self.max_batch_size

    def pop_ready(self, now: float, drain: bool = False) -> tuple[int, list[Any]] | None:
        """The next batch to run as ``(bucket_index, items)``, or None when no bucket is ready.

        Full buckets go first, then buckets past their deadline; among several, the one whose oldest request
        has waited longest (so no bucket starves). With ``drain=True`` every non-empty bucket is ready. A batch
        topped up from other buckets (``merge_padding``) reports the largest bucket it holds.
        """
        best, best_t, best_full = None, None, False
        for i, q in enumerate(self._queues):
            if not q:
                continue
            full = len(q) >= self.max_batch_size
            t = q[0].enqueued_at
            if not (full or drain or now - t >= self.max_wait_s):
                continue
            if best is None or (full, -t) > (best_full, -best_t):
                best, best_t, best_full = i, t, full
        if best is None:
            return None
        q = self._queues[best]
        items = [q.popleft() for _ in range(min(len(q), self.max_batch_size))]
        bucket = best
        if self.merge_padding > 0 and len(items) < self.max_batch_size:
            bucket = self._top_up(best, items)
        self._size -= len(items)
        return bucket, items

    def _top_up(self, best: int, items: list[Any]) -> int:
        """Add heads of the nearest buckets (closest first, FIFO) while the padded share stays within bounds."""
        width = max(it.length for it in items)
        real = sum(it.length for it in items)
        bucket = best
        n = len(self._queues)
        for j in sorted((j for j in range(n) if j != best), key=lambda j: (abs(j - best), j)):
            q = self._queues[j]
            while q and len(items) < self.max_batch_size:
                w = max(width, q[0].length)
                if 1 - (real + q[0].length) / ((len(items) + 1) * w) > self.merge_padding:
                    break
                it = q.popleft()
                items.append(it)
                width, real, bucket = w, real + it.length, max(bucket, j)
        return bucket

    def next_deadline(self) -> float | None:
        """Clock time at which the oldest pending request's bucket becomes ready (None when empty)."""
        heads = [q[0].enqueued_at for q in self._queues if q]
        return min(heads) + self.max_wait_s if heads else None

    def drain_all(self) -> list[Any]:
        """Remove and return every pending item."""
        items = [it for q in self._queues for it in q]
        for q in self._queues:
            q.clear()
        self._size = 0
        return items

    def sizes(self) -> list[int]:
        return [len(q) for q in self._queues]

    def __len__(self) -> int:
        return self._size


def pad_batch(rows: Sequence[Mapping[str, np.ndarray]], pad_token_id: int, padding_side: str = "right",
              pad_values: Mapping[str, int] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Stack variable-length encoded rows into int64 arrays padded to the longest row.

    Args:
        rows: one ``{name: 1-D int array}`` per request (``input_ids`` required; ``attention_mask`` is
            created when absent).
        pad_token_id (`int`): value for padded ``input_ids``; other inputs pad with 0 unless ``pad_values``
            says otherwise.
        padding_side (`str`, *optional*, defaults to ``"right"``): ``"left"`` for models that read the last
            position.

    Returns:
        ``(arrays, width)`` where every array is ``(len(rows), width)`` and width is the longest row.
    """
    width = max(len(r["input_ids"]) for r in rows)
    names = list(dict.fromkeys(k for r in rows for k in r))
    if "attention_mask" not in names:
        names.append("attention_mask")
    fill = {"input_ids": pad_token_id, "attention_mask": 0, **(pad_values or {})}
    out = {n: np.full((len(rows), width), fill.get(n, 0), dtype=np.int64) for n in names}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        for name in names:
            if name in r:
                out[name][i, sl] = r[name]
            elif name == "attention_mask":
                out[name][i, sl] = 1
    return out, width



def check_id_ranges(encoded: dict[str, np.ndarray], limits: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``encoded`` when every id lies in ``[0, limits[name])`` for the names ``limits`` holds (the model's
    ``vocab_size`` for ``input_ids``, ``type_vocab_size`` for ``token_type_ids``); else a ``ValueError`` naming the
    input, the id and the range (an embedding lookup would fail with torch's bare "index out of range")."""
    for name, limit in limits.items():
        ids = encoded.get(name)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= limit):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"{name!r} holds {bad}, outside the model's range [0, {limit}); "
                             "tokenize with the model's own tokenizer")
    return encoded
