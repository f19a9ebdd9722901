"""A thread-safe LRU + TTL result cache keyed by a model's identity and its exact input.

Keys are ``(model_id, input_key)``. ``model_id`` is an artifact fingerprint (:func:`model_fingerprint`), so two
engines sharing one cache can never serve each other's answers; ``input_key`` is what the model actually sees
(the engine uses the token ids, so inputs that only differ in ways the tokenizer erases share an entry and
nothing else does).

Eviction is by entry count and by bytes, least recently used first; expiry is by age since the value was
stored (a hit does not refresh it: TTL bounds how stale an answer can be). Every operation is O(1) (an
``OrderedDict`` under one lock); expired entries are dropped when met, or all at once by
:meth:`InferenceCache.purge_expired`.

``cachetools.TTLCache`` was considered instead: it bounds one size only (entries, or bytes through ``getsizeof``,
not both), is not thread-safe, and does not say why an entry left (count, bytes, expiry), so it would need this
module's lock, a second budget and a ``popitem`` override around it. That leaves no code saved for a new dependency.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from ..errors import ConfigError

__all__ = ["InferenceCache", "CacheStats", "model_fingerprint", "dir_fingerprint", "input_key"]

# Bytes charged per entry on top of key and value payloads (OrderedDict node, tuple, floats): an estimate that
# keeps `max_bytes` honest for tiny values such as a 2-logit row.
_ENTRY_OVERHEAD = 200
_MISSING = object()


@dataclass
class CacheStats:
    """Counters since creation (or :meth:`InferenceCache.reset_stats`); ``entries``/``bytes`` are current."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    evicted_count: int = 0   # evicted because of max_entries
    evicted_bytes: int = 0   # evicted because of max_bytes
    expired: int = 0         # dropped because older than ttl_s
    rejected: int = 0        # a single value larger than max_bytes: not stored
    replaced: int = 0        # a put for a key already present (e.g. two threads computed the same input)
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "hit_rate": round(self.hit_rate, 4)}


def _sizeof(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if isinstance(obj, tuple):
        return sum(_sizeof(o) for o in obj)
    return sys.getsizeof(obj)


class InferenceCache:
    """LRU cache with a maximum entry count, a maximum byte size and a time-to-live.

    Args:
        max_entries (`int`, *optional*, defaults to 100_000): most entries kept; `0` disables the limit.
        max_bytes (`int`, *optional*, defaults to 256 MiB): most bytes kept (key + value + a fixed overhead per
            entry); `0` disables the limit. A value larger than this on its own is not stored.
        ttl_s (`float`, *optional*): seconds an entry stays valid after it was stored; `None` = no expiry.
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`): time source, injectable so
            expiry can be tested without sleeping.
        sizeof (`Callable[[Any], int]`, *optional*): bytes of a value; defaults to ``ndarray.nbytes`` for
            arrays and ``sys.getsizeof`` otherwise.

    Values are stored as given; numpy arrays are made read-only so a caller cannot change a cached answer.
    """

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 2**20, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sizeof: Callable[[Any], int] | None = None):
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"InferenceCache.{name} = {value!r}: expected an int >= 0 (0 = unlimited)",
                                  field=name)
        if ttl_s is not None and not ttl_s > 0:
            raise ConfigError(f"InferenceCache.ttl_s = {ttl_s!r}: expected seconds > 0, or None for no expiry",
                              field="ttl_s")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._sizeof = sizeof or _sizeof
        self._lock = threading.Lock()
        # key -> (value, nbytes, stored_at)
        self._data: OrderedDict[tuple[str, Hashable], tuple[Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._stats = CacheStats()

    # -- core --------------------------------------------------------------------------------------------
    def get(self, model_id: str, key: Hashable, default: Any = None) -> Any:
        """The value stored for ``(model_id, key)``, or ``default`` (a miss) when absent or expired."""
        full = (model_id, key)
        with self._lock:
            item = self._data.get(full, _MISSING)
            if item is _MISSING:
                self._stats.misses += 1
                return default
            value, nbytes, stored_at = item
            if self.ttl_s is not None and self._clock() - stored_at >= self.ttl_s:
                del self._data[full]
                self._bytes -= nbytes
                self._stats.expired += 1
                self._stats.misses += 1
                return default
            self._data.move_to_end(full)
            self._stats.hits += 1
            return value

    def put(self, model_id: str, key: Hashable, value: Any) -> bool:
        """Store ``value``; evict least recently used entries past the limits. Returns whether it was stored."""
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
        full = (model_id, key)
        nbytes = self._sizeof(value) + _sizeof(key) + len(model_id) + _ENTRY_OVERHEAD
        with self._lock:
            old = self._data.pop(full, None)
            if old is not None:
                self._bytes -= old[1]
            if self.max_bytes and nbytes > self.max_bytes:  # the old value for this key is stale: gone too
                self._stats.rejected += 1
                return False
            self._stats.replaced += old is not None
            self._data[full] = (value, nbytes, self._clock())
            self._bytes += nbytes
            self._stats.puts += 1
            while self.max_entries and len(self._data) > self.max_entries:
                self._pop_oldest()
                self._stats.evicted_count += 1
            while self.max_bytes and self._bytes > self.max_bytes:
                self._pop_oldest()
                self._stats.evicted_bytes += 1
            return True

    def _pop_oldest(self) -> None:
        _, (_, nbytes, _) = self._data.popitem(last=False)
        self._bytes -= nbytes

    # -- housekeeping ------------------------------------------------------------------------------------
    def purge_expired(self) -> int:
        """Drop every expired entry now (O(n)); returns how many were dropped."""
        if self.ttl_s is None:
            return 0
        with self._lock:
            now = self._clock()
            dead = [k for k, (_, _, t) in self._data.items() if now - t >= self.ttl_s]
            for k in dead:
                self._bytes -= self._data.pop(k)[1]
            self._stats.expired += len(dead)
            return len(dead)

    def clear(self, model_id: str | None = None) -> None:
        """Remove every entry, or only those of ``model_id``."""
        with self._lock:
            if model_id is None:
                self._data.clear()
                self._bytes = 0
                return
            for k in [k for k in self._data if k[0] == model_id]:
                self._bytes -= self._data.pop(k)[1]

    def stats(self) -> CacheStats:
        with self._lock:
            s = CacheStats(**self._stats.__dict__)
            s.entries, s.bytes = len(self._data), self._bytes
            return s

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, full_key: tuple[str, Hashable]) -> bool:
        """Presence without touching LRU order or statistics (expired entries count as absent)."""
        with self._lock:
            item = self._data.get(full_key)
            return item is not None and (self.ttl_s is None or self._clock() - item[2] < self.ttl_s)

    def __repr__(self) -> str:
        return (f"InferenceCache(entries={len(self._data)}/{self.max_entries or 'inf'}, "
                f"bytes={self._bytes}/{self.max_bytes or 'inf'}, ttl_s={self.ttl_s})")


# -- request identity -------------------------------------------------------------------------------------
def input_key(encoded: dict[str, np.ndarray]) -> bytes:
    """An unambiguous key for one encoded request: each input's name, dtype, shape and bytes, length-prefixed (so
    no input's bytes can spell another input's boundary), hashed."""
    h = hashlib.blake2b(digest_size=32)
    for name in sorted(encoded):
        arr = np.ascontiguousarray(encoded[name])
        for part in (name.encode(), arr.dtype.str.encode(), repr(arr.shape).encode(), arr.tobytes()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.digest()


# -- model identity ---------------------------------------------------------------------------------------
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".data", ".pt", ".gguf")
_CONFIG_FILES = ("config.json", "quantize_config.json", "generation_config.json")


def dir_fingerprint(path: str | Path) -> str:
    """Identity of an artifact directory (or a single model file).

    Hashes the contents of ``config.json`` (which carries pruned shapes and the quantization scheme), the
    stage fingerprint in ``hf_optim_stage.json`` when present, and the name, size and modification time of
    every weight file: re-saving or re-exporting a model changes its identity; copying a tree with
    ``cp -p``/``rsync -t`` keeps it.
    """
    path = Path(path)
    h = hashlib.sha256(b"hf_optim-dir-v1\0")
    root = path if path.is_dir() else path.parent
    files = sorted(p for p in (root.rglob("*") if path.is_dir() else [path]) if p.is_file())
    for p in files:
        rel = p.relative_to(root).as_posix()
        if p.name in _CONFIG_FILES:
            h.update(f"cfg:{rel}\0".encode() + p.read_bytes())
        elif p.name == "hf_optim_stage.json":
            try:
                fp = json.loads(p.read_text()).get("fingerprint", "")
            except ValueError:
                fp = p.read_text()
            h.update(f"stage:{fp}\0".encode())
        elif p.name.endswith(_WEIGHT_SUFFIXES):
            st = p.stat()
            h.update(f"w:{rel}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return "dir:" + h.hexdigest()[:32]


def _torch_fingerprint(model) -> str:
    """Content hash of a torch module: class, config and every parameter/buffer (quantized ones included)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, value in model.state_dict().items():
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.is_quantized:
                h.update(repr((t.qscheme(), t.dtype)).encode())
                t = t.int_repr()
            t = t.cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:  # packed params and other opaque state: their repr holds the values we can see
            h.update(repr(value).encode())
    return "torch:" + h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """Identity of a model for cache keys: a directory, an ``onnxruntime.InferenceSession``, an Optimum
    ``ORTModel`` or a torch module (content hash).

    Raises:
        ConfigError: the model's identity cannot be determined; pass ``model_id=`` to the engine.
    """
    if isinstance(model, (str, Path)):
        return dir_fingerprint(model)
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return _torch_fingerprint(model)
    except ImportError:  # pragma: no cover - torch is a hard dependency of the engine's torch path only
        pass
    for attr in ("model_save_dir", "model_path"):  # optimum ORTModel
        p = getattr(model, attr, None)
        if p is not None and Path(p).exists():
            return dir_fingerprint(p) + ":" + type(model).__name__
    model_path = getattr(model, "_model_path", None)  # onnxruntime.InferenceSession built from a file
    if model_path and Path(model_path).is_file():
        return dir_fingerprint(model_path)
    model_bytes = getattr(model, "_model_bytes", None)  # ... or from bytes
    if model_bytes:
        return "onnx-bytes:" + hashlib.sha256(model_bytes).hexdigest()[:32]
    raise ConfigError(f"cannot fingerprint a {type(model).__name__} for the result cache; pass "
                      "model_id='<a string that changes whenever the model does>' to InferenceEngine",
                      field="model_id")
