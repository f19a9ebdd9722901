"""``InferenceEngine``: length-bucketed dynamic batching and a result cache around a torch or ONNX Runtime model.

Callers in any number of threads ``submit`` texts (or already tokenized inputs) and get a ``Future``.
Tokenization happens in the caller's thread (fast tokenizers release the GIL, and a bad input fails there,
alone). One background worker takes the next ready bucket (see :mod:`~hf_optim.inference.batching`), pads it
to its longest member, runs the model once and resolves the futures. If a batch raises, each of its requests
is retried alone, so a poisoned request fails by itself and its batch-mates still get their answers.

Torch's thread count is process-wide; the engine does not change it (``torch.set_num_threads`` is yours).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import ConfigError, HfOptimError
from .backends import make_backend
from .batching import BucketQueue, InputTooLong, LengthBuckets, check_id_ranges, pad_batch
from .cache import InferenceCache, input_key, model_fingerprint
from .config import InferenceConfig

__all__ = ["InferenceEngine", "EngineClosed", "QueueFull", "InputTooLong"]

_MISS = object()
_SAMPLES = 100_000  # latency/queue-wait samples kept for percentiles (a ring buffer)


class EngineClosed(HfOptimError, RuntimeError):
    """``submit`` after ``close()``: the engine accepts no more work."""


class QueueFull(HfOptimError, RuntimeError):
    """The engine's queue holds ``max_queue`` requests (``on_full="raise"``, or a blocking submit timed out)."""


# -- requests --------------------------------------------------------------------------------------------
class _Pending:
    __slots__ = ("encoded", "length", "key", "futures", "enqueued_at")

    def __init__(self, encoded: dict[str, np.ndarray], key: bytes | None, fut: Future, t0: float):
        self.encoded = encoded
        self.length = len(encoded["input_ids"])
        self.key = key
        self.futures = [(fut, t0)]  # identical queued inputs share one row (only with a cache configured)
        self.enqueued_at = t0


def _percentiles(samples: Iterable[float]) -> dict[str, float]:
    arr = np.fromiter(samples, dtype=np.float64)
    if not arr.size:
        return {"n": 0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"n": int(arr.size), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "p99": round(float(p99), 3), "mean": round(float(arr.mean()), 3)}


class InferenceEngine:
    """Thread-safe dynamic batching (by sequence-length bucket) with an optional result cache.

    Args:
        model (`str | Path | nn.Module | ORTModel | onnxruntime.InferenceSession`): a directory that
            ``from_pretrained`` loads (hf_optim quantized artifacts included), a directory or file with an ONNX
            export, or a loaded model. Torch models are put in eval mode.
        tokenizer (*optional*): a Hugging Face tokenizer; loaded from the model's directory when omitted. Only
            needed for text input (pre-tokenized dicts work without one).
        config (`InferenceConfig`, *optional*): batching, queue and cache settings; keyword arguments override
            its fields (``InferenceEngine(m, tok, max_batch_size=16, max_wait_ms=2)``).
        cache (`InferenceCache | bool`, *optional*): a cache to use (it may be shared by several engines:
            entries are keyed by each model's fingerprint), `True` for a new one sized by the config's
            ``cache_*`` fields, `False` for none. Defaults to a new one when ``cache_entries`` or ``cache_bytes``
            is set.
        model_id (`str`, *optional*): the model's identity in cache keys; computed with
            :func:`~hf_optim.inference.model_fingerprint` when omitted.

    Results are read-only numpy arrays (one row of the model's ``output`` per request). Use the engine as a
    context manager or call :meth:`close`.

    Example::

        with InferenceEngine("runs/x/teacher", max_wait_ms=5, cache=True) as engine:
            future = engine.submit("a gripping, funny film")      # from any thread
            logits = future.result()
            all_logits = engine(["great", "awful"])               # (2, num_labels)
    """

    def __init__(self, model: Any, tokenizer: Any = None, config: InferenceConfig | None = None, *,
                 cache: InferenceCache | bool | None = None, model_id: str | None = None, **overrides: Any):
        if isinstance(tokenizer, InferenceConfig):
            raise TypeError("the second argument is the tokenizer; pass the InferenceConfig as config=")
        config = config if config is not None else InferenceConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self._buckets = LengthBuckets(config.length_buckets)
        self._backend, tokenizer = make_backend(model, tokenizer, config)
        #: the model being served (a torch module, an ORTModel or an onnxruntime session)
        self.model = getattr(self._backend, "model", None) or getattr(self._backend, "session", None)
        self.tokenizer = tokenizer
        limit = self._backend.max_positions
        if limit and self._buckets.max_length > limit:
            raise ConfigError(f"length_buckets = {list(config.length_buckets)}: the last bound exceeds the model's "
                              f"{limit} positions; use bounds <= {limit}", field="length_buckets")
        self._pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self._padding_side = getattr(tokenizer, "padding_side", "right") or "right"
        names = getattr(tokenizer, "model_input_names", None) or ["input_ids", "token_type_ids", "attention_mask"]
        self._input_names = tuple(names)
        if tokenizer is not None:
            # A fast tokenizer mutates its backend when its truncation settings change; doing that once here
            # keeps concurrent first submits from racing on it ("Already borrowed").
            try:
                self._encode("warm-up")
            except Exception:  # a tokenizer that cannot encode this fails each request with its own error
                pass

        sized = bool(config.cache_entries or config.cache_bytes)
        if cache is True or (cache is None and sized):
            # sized by the config; cache=True alone gets InferenceCache's default limits
            limits = {"max_entries": config.cache_entries, "max_bytes": config.cache_bytes} if sized else {}
            cache = InferenceCache(ttl_s=config.cache_ttl_s, **limits)
        elif cache is False:
            cache = None
        elif cache is not None and not isinstance(cache, InferenceCache):
            raise TypeError(f"cache= takes an InferenceCache, True or False, not {type(cache).__name__}")
        self.cache: InferenceCache | None = cache
        self._model_id = model_id
        if self.cache is not None and model_id is None:
            self._model_id = model_fingerprint(model)
        if self._model_id is not None:
            # the same weights asked for another output are another answer
            self._model_id = f"{self._model_id}|{config.output}"

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)   # the worker waits here for ready buckets
        self._room = threading.Condition(self._lock)   # blocking submitters wait here for queue room
        self._queue = BucketQueue(self._buckets, config.max_batch_size, config.max_wait_ms / 1e3,
                                  config.merge_padding)
        self._inflight: dict[bytes, _Pending] = {}
        self._closing = False
        self._stats_lock = threading.Lock()
        self.reset_stats()
        self._thread = threading.Thread(target=self._worker, name="hf_optim-inference", daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str | None:
        """The model identity used in cache keys (None when the engine has no cache and none was given)."""
        return self._model_id

    def submit(self, item: str | tuple[str, str] | Mapping[str, Any]) -> Future:
        """Queue one request and return a ``Future`` of its output row.

        Args:
            item: a text, a ``(text, text_pair)`` tuple, or a tokenized input (``{"input_ids": [...], ...}``).

        A bad input (wrong type, too long, untokenizable) resolves its future with the error instead of raising.

        Raises:
            EngineClosed: after :meth:`close`.
            QueueFull: the queue holds ``max_queue`` requests and ``on_full="raise"`` (or the blocking wait
                exceeded ``submit_timeout_s``).
        """
        return self._submit(item, block=self.config.on_full == "block", timeout=self.config.submit_timeout_s)

    def __call__(self, items: Iterable[Any], timeout: float | None = None) -> np.ndarray | list:
        """Run ``items`` through the engine (waiting for queue room) and return their outputs in order:
        an array ``(len(items), ...)`` when all rows have the same shape. Re-raises the first failure, with a
        note naming its position."""
        futures = [self._submit(x, block=True, timeout=None) for x in items]
        results = []
        for i, f in enumerate(futures):
            try:
                results.append(f.result(timeout))
            except Exception as e:
                e.add_note(f"(request {i} of {len(futures)} passed to InferenceEngine.__call__)")
                raise
        if results and all(r.shape == results[0].shape for r in results):
            return np.stack(results)
        return results

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Stop accepting requests; finish (default) or cancel what is queued; wait for the worker.

        Args:
            cancel_pending (`bool`, *optional*, defaults to `False`): cancel queued requests (their futures
                raise ``CancelledError``) instead of running them. A batch already running always completes.
            timeout (`float`, *optional*): seconds to wait for the worker.

        Returns:
            `True` when the worker has stopped. Calling it again is harmless.
        """
        with self._lock:
            if not self._closing:
                self._closing = True
                if cancel_pending:
                    for p in self._queue.drain_all():
                        for f, _ in p.futures:
                            if f.cancel():
                                self._count("cancelled")
                    self._inflight.clear()
                self._work.notify_all()
                self._room.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> "InferenceEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters and distributions since creation or :meth:`reset_stats`.

        ``requests``: submitted / completed / failed / cancelled / cache_hits / coalesced (identical queued inputs
        answered by one row); ``batches``: count, mean size, size histogram, batches per bucket bound;
        ``padding_ratio``: padded positions / all positions the model ran; ``queue_wait_ms`` and
        ``latency_ms`` (submit to result): p50/p95/p99/mean; ``cache``: the cache's statistics.
        """
        with self._stats_lock:
            s = self._s
            sizes = dict(sorted(s["batch_sizes"].items()))
            n_batches = sum(sizes.values())
            out = {
                "requests": dict(s["requests"]),
                "batches": {"count": n_batches,
                            "mean_size": round(sum(k * v for k, v in sizes.items()) / n_batches, 3) if n_batches else 0.0,
                            "size_histogram": sizes,
                            "per_bucket": {str(self._buckets.bounds[i]): c for i, c in sorted(s["per_bucket"].items())},
                            "max_width_per_bucket": {str(self._buckets.bounds[i]): w
                                                     for i, w in sorted(s["max_width"].items())}},
                "padding_ratio": round(s["pad_tokens"] / s["all_tokens"], 4) if s["all_tokens"] else 0.0,
                "queue_wait_ms": _percentiles(s["queue_wait"]),
                "latency_ms": _percentiles(s["latency"]),
            }
        out["queue_depth"] = len(self._queue)
        out["cache"] = self.cache.stats().to_dict() if self.cache is not None else None
        return out

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._s = {"requests": Counter({k: 0 for k in ("submitted", "completed", "failed", "cancelled",
                                                           "cache_hits", "coalesced")}),
                       "batch_sizes": Counter(), "per_bucket": Counter(), "max_width": {},
                       "pad_tokens": 0, "all_tokens": 0,
                       "queue_wait": deque(maxlen=_SAMPLES), "latency": deque(maxlen=_SAMPLES)}

    # -- submission ------------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._s["requests"][name] += n

    def _encode(self, item: Any) -> dict[str, np.ndarray]:
        if isinstance(item, Mapping):
            if "input_ids" not in item:
                raise ValueError(f"a tokenized request needs 'input_ids' (got keys: {', '.join(map(str, item))})")
            enc = {}
            for k, v in item.items():
                arr = np.asarray(v)
                if arr.ndim == 2 and arr.shape[0] == 1:
                    arr = arr[0]
                if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
                    raise ValueError(f"tokenized input {k!r} must be a 1-D sequence of integers, got shape {arr.shape} "
                                     f"and dtype {arr.dtype}")
                enc[k] = arr.astype(np.int64, copy=False)
            lengths = {len(v) for v in enc.values()}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"tokenized inputs must be non-empty and of one length, got {sorted(lengths)}")
            return check_id_ranges(enc, getattr(self._backend, "id_limits", {}))
        if isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            if self.tokenizer is None:
                raise ConfigError("this engine has no tokenizer: pass tokenizer= or submit tokenized inputs",
                                  field="tokenizer")
            text, pair = (item, None) if isinstance(item, str) else item
            kw = {"truncation": True, "max_length": self._buckets.max_length} if self.config.truncation else {}
            enc = self.tokenizer(text, pair, **kw)
            return {k: np.asarray(enc[k], dtype=np.int64) for k in self._input_names if k in enc}
        raise TypeError(f"a request is a str, a (text, text_pair) tuple or a dict of token ids, not {type(item).__name__}")

    def _submit(self, item: Any, block: bool, timeout: float | None) -> Future:
        if self._closing:
            raise EngineClosed("the inference engine is closed; create a new one")
        if not self._thread.is_alive():  # never accept a request no one will answer
            raise EngineClosed("the inference engine's worker has stopped; create a new engine")
        fut: Future = Future()
        t0 = time.monotonic()
        try:
            encoded = self._encode(item)
            self._buckets.index(len(encoded["input_ids"]))
        except Exception as e:  # the request's own fault: it fails alone
            fut.set_running_or_notify_cancel()
            fut.set_exception(e)
            self._count("submitted")
            self._count("failed")
            return fut
        key = None
        if self.cache is not None:
            key = input_key(encoded)
            hit = self.cache.get(self._model_id, key, _MISS)
            if hit is not _MISS:
                fut.set_running_or_notify_cancel()
                fut.set_result(hit)
                with self._stats_lock:
                    self._s["requests"].update(("submitted", "cache_hits", "completed"))
                    self._s["latency"].append((time.monotonic() - t0) * 1e3)
                return fut
        with self._lock:
            pending = self._inflight.get(key) if key is not None else None
            if pending is not None:
                pending.futures.append((fut, t0))
                self._count("submitted")
                self._count("coalesced")
                return fut
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(self._queue) >= self.config.max_queue and not self._closing:
                if not block:
                    raise QueueFull(f"the inference queue is full ({self.config.max_queue} requests waiting); retry "
                                    "later, raise max_queue, or use on_full='block'")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFull(f"no room in the inference queue ({self.config.max_queue} requests) within "
                                    f"{timeout} s")
                self._room.wait(remaining)
            if self._closing:
                raise EngineClosed("the inference engine is closed; create a new one")
            p = _Pending(encoded, key, fut, t0)
            was_empty = len(self._queue) == 0
            became_full = self._queue.push(p)
            if key is not None:
                self._inflight[key] = p
            # a new request's deadline is never earlier than those queued, so the worker needs waking only for
            # the first request or a full bucket
            if was_empty or became_full:
                self._work.notify()
        self._count("submitted")
        return fut

    # -- worker ----------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    ready = self._queue.pop_ready(now, drain=self._closing)
                    if ready is not None:
                        break
                    if self._closing:
                        return
                    deadline = self._queue.next_deadline()
                    self._work.wait(None if deadline is None else max(deadline - now, 0.0))
                bucket, items = ready
                for p in items:
                    if p.key is not None and self._inflight.get(p.key) is p:
                        del self._inflight[p.key]
                self._room.notify_all()
            try:
                self._run(bucket, items, now)
            except BaseException as e:  # never leave a future pending, never let the worker die
                if not isinstance(e, Exception):
                    # SystemExit / KeyboardInterrupt raised by the model: handed to a caller's `result()` it would
                    # end the caller's program; it fails this batch as an ordinary error and the worker goes on
                    err = RuntimeError(f"the model raised {type(e).__name__}({e}) while running this batch")
                    err.__cause__ = e
                    e = err
                for p in items:
                    for f, _ in p.futures:
                        if not f.done():
                            f.set_exception(e)
                with self._stats_lock:
                    self._s["requests"]["failed"] += sum(len(p.futures) for p in items)

    def _forward(self, bucket: int, rows: list[dict[str, np.ndarray]]) -> np.ndarray:
        batch, width = pad_batch(rows, self._pad_id, self._padding_side)
        out = self._backend.predict(batch)
        if len(out) != len(rows):
            raise RuntimeError(f"the model returned {len(out)} rows for a batch of {len(rows)}")
        real = sum(len(r["input_ids"]) for r in rows)
        with self._stats_lock:
            s = self._s
            s["batch_sizes"][len(rows)] += 1
            s["per_bucket"][bucket] += 1
            s["max_width"][bucket] = max(s["max_width"].get(bucket, 0), width)
            s["all_tokens"] += len(rows) * width
            s["pad_tokens"] += len(rows) * width - real
        return out

    def _finish(self, p: _Pending, result: Any = None, error: BaseException | None = None) -> None:
        now = time.monotonic()
        if error is None:
            result = np.array(result)  # a copy: rows must not keep the whole batch alive
            result.setflags(write=False)
            if self.cache is not None and p.key is not None:
                self.cache.put(self._model_id, p.key, result)
        for f, t0 in p.futures:
            if error is None:
                f.set_result(result)
            else:
                f.set_exception(error)
        with self._stats_lock:
            self._s["requests"]["completed" if error is None else "failed"] += len(p.futures)
            self._s["latency"].extend((now - t0) * 1e3 for _, t0 in p.futures)

    def _run(self, bucket: int, items: list[_Pending], popped_at: float) -> None:
        live = []
        for p in items:
            kept = [(f, t0) for f, t0 in p.futures if f.set_running_or_notify_cancel()]
            if len(kept) != len(p.futures):
                self._count("cancelled", len(p.futures) - len(kept))
            if kept:
                p.futures = kept
                live.append(p)
        if not live:
            return
        with self._stats_lock:
            self._s["queue_wait"].extend((popped_at - p.enqueued_at) * 1e3 for p in live)
        try:
            out = self._forward(bucket, [p.encoded for p in live])
        except Exception as e:
            if len(live) == 1:
                self._finish(live[0], error=e)
                return
            # find the culprit(s): every request alone, so one bad input cannot fail its batch-mates
            for p in live:
                try:
                    row = self._forward(bucket, [p.encoded])[0]
                except Exception as e1:
                    self._finish(p, error=e1)
                else:
                    self._finish(p, row)
            return
        for i, p in enumerate(live):
            self._finish(p, out[i])

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (f"InferenceEngine({type(self._backend).__name__.strip('_')}, buckets={list(self._buckets.bounds)}, "
                f"max_batch_size={self.config.max_batch_size}, max_wait_ms={self.config.max_wait_ms}, "
                f"cache={self.cache!r}, {state})")
