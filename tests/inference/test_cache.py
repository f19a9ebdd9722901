"""InferenceCache: LRU by count and bytes, TTL on an injected clock, statistics, thread safety, identity."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from hf_optim.errors import ConfigError
from hf_optim.inference import InferenceCache, dir_fingerprint, model_fingerprint
from hf_optim.inference.cache import _ENTRY_OVERHEAD


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_lru_evicts_least_recently_used_by_count():
    c = InferenceCache(max_entries=3, max_bytes=0)
    for k in "abc":
        c.put("m", k, np.array([ord(k)], dtype=np.float32))
    assert c.get("m", "a") is not None        # a is now most recent; b is the oldest
    c.put("m", "d", np.zeros(1, np.float32))
    assert ("m", "b") not in c and ("m", "a") in c and ("m", "c") in c and ("m", "d") in c
    s = c.stats()
    assert (s.entries, s.evicted_count, s.evicted_bytes, s.hits, s.misses) == (3, 1, 0, 1, 0)
    assert c.get("m", "b") is None and c.stats().misses == 1


def test_lru_evicts_by_bytes_and_rejects_oversized_values():
    entry = 400 * 4 + 1 + 1 + _ENTRY_OVERHEAD            # value + key + model id + overhead
    c = InferenceCache(max_entries=0, max_bytes=3 * entry)
    for k in "abc":
        assert c.put("m", k, np.zeros(400, np.float32))
    assert c.stats().bytes == 3 * entry and c.stats().evicted_bytes == 0
    c.get("m", "a")
    c.put("m", "d", np.zeros(400, np.float32))
    assert ("m", "b") not in c and len(c) == 3 and c.stats().evicted_bytes == 1
    assert c.stats().bytes <= c.max_bytes
    # two small entries make room for nothing bigger than the budget: a huge value is refused, nothing evicted
    assert not c.put("m", "huge", np.zeros(10_000, np.float32))
    assert c.stats().rejected == 1 and len(c) == 3
    # replacing a key re-accounts its bytes instead of leaking them
    c.put("m", "a", np.zeros(400, np.float32))
    assert c.stats().bytes == 3 * entry


def test_ttl_expires_on_injected_clock_without_refresh_on_hit():
    clock = Clock()
    c = InferenceCache(ttl_s=10.0, clock=clock)
    c.put("m", "k", np.ones(2))
    clock.t += 9.0
    assert c.get("m", "k") is not None           # a hit does not extend the entry's life
    clock.t += 1.0
    assert c.get("m", "k") is None
    s = c.stats()
    assert (s.hits, s.misses, s.expired, s.entries, s.bytes) == (1, 1, 1, 0, 0)
    c.put("m", "x", np.ones(2))
    c.put("m", "y", np.ones(2))
    clock.t += 5
    c.put("m", "z", np.ones(2))
    clock.t += 6                                  # x and y are 11 s old, z 6 s
    assert c.purge_expired() == 2 and len(c) == 1 and ("m", "z") in c


def test_never_serves_another_models_entry_and_clear_by_model():
    c = InferenceCache()
    c.put("model-a", "same input", np.array([1.0]))
    assert c.get("model-b", "same input") is None
    c.put("model-b", "same input", np.array([2.0]))
    assert c.get("model-a", "same input")[0] == 1.0 and c.get("model-b", "same input")[0] == 2.0
    c.clear("model-a")
    assert len(c) == 1 and c.get("model-b", "same input")[0] == 2.0


def test_cached_arrays_are_read_only():
    c = InferenceCache()
    v = np.zeros(3)
    c.put("m", "k", v)
    with pytest.raises(ValueError):
        c.get("m", "k")[0] = 1.0


def test_stats_hit_rate_and_reset():
    c = InferenceCache()
    c.put("m", 1, np.zeros(1))
    for k in (1, 1, 1, 2):
        c.get("m", k)
    s = c.stats()
    assert (s.hits, s.misses, s.hit_rate) == (3, 1, 0.75)
    assert s.to_dict()["hit_rate"] == 0.75
    c.reset_stats()
    assert c.stats().hits == 0 and c.stats().entries == 1


@pytest.mark.parametrize("kwargs", [{"max_entries": -1}, {"max_bytes": 1.5}, {"ttl_s": 0}, {"ttl_s": -3}])
def test_invalid_limits_name_the_field(kwargs):
    with pytest.raises(ConfigError) as e:
        InferenceCache(**kwargs)
    assert e.value.field == next(iter(kwargs))


def test_concurrent_puts_and_gets_keep_invariants():
    c = InferenceCache(max_entries=500, max_bytes=120_000)
    errors = []

    def work(tid):
        rng = np.random.default_rng(tid)
        try:
            for i in range(2000):
                k = int(rng.integers(0, 2000))
                v = c.get("m", k)
                if v is None:
                    c.put("m", k, np.full(8, k, dtype=np.float64))
                elif v[0] != k:
                    errors.append((k, v[0]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert not errors
    assert s.entries == len(c) <= 500 and 0 < s.bytes <= 120_000
    assert s.hits + s.misses == 8 * 2000
    assert s.puts - s.replaced - s.evicted_count - s.evicted_bytes == s.entries  # every stored entry accounted for


def test_dir_fingerprint_tracks_weights_config_and_stage(tiny_bert_dir, tmp_path):
    fp = dir_fingerprint(tiny_bert_dir)
    assert fp == dir_fingerprint(tiny_bert_dir) == model_fingerprint(str(tiny_bert_dir))
    w = tiny_bert_dir / "model.safetensors"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # re-saved weights
    fp2 = dir_fingerprint(tiny_bert_dir)
    assert fp2 != fp
    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    cfg["id2label"] = {"0": "neg", "1": "pos"}
    (tiny_bert_dir / "config.json").write_text(json.dumps(cfg))
    fp3 = dir_fingerprint(tiny_bert_dir)
    assert fp3 != fp2
    (tiny_bert_dir / "hf_optim_stage.json").write_text(json.dumps({"fingerprint": "abc"}))
    fp4 = dir_fingerprint(tiny_bert_dir)
    (tiny_bert_dir / "hf_optim_stage.json").write_text(json.dumps({"fingerprint": "abd"}))
    assert len({fp3, fp4, dir_fingerprint(tiny_bert_dir)}) == 3
    (tiny_bert_dir / "README.md").write_text("docs do not change the model")
    assert dir_fingerprint(tiny_bert_dir) == dir_fingerprint(tiny_bert_dir)


def test_torch_fingerprint_is_a_content_hash():
    from hf_optim.testing import tiny_bert

    a, a2, b = tiny_bert(seed=0), tiny_bert(seed=0), tiny_bert(seed=1)
    assert model_fingerprint(a) == model_fingerprint(a2) != model_fingerprint(b)
    import torch

    with torch.no_grad():
        a2.classifier.bias[0] += 1e-3
    assert model_fingerprint(a2) != model_fingerprint(a)


def test_unknown_model_cannot_be_fingerprinted():
    with pytest.raises(ConfigError, match="model_id"):
        model_fingerprint(lambda **kw: None)
