"""InferenceEngine: correctness under concurrency, bucket bounds, isolation of failures, queue and close()."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import numpy as np
import pytest

from hf_optim.errors import ConfigError
from hf_optim.inference import (EngineClosed, InferenceCache, InferenceConfig, InferenceEngine, InputTooLong,
                                QueueFull)

from .conftest import EchoModel, make_texts


def _ids(rng, n):
    return rng.integers(1, 1000, size=n).tolist()


def test_thousands_of_concurrent_requests_none_lost_or_duplicated(echo):
    n_threads, per_thread = 16, 250
    buckets = (8, 16, 32, 64)
    engine = InferenceEngine(echo, max_batch_size=16, max_wait_ms=1, length_buckets=buckets)
    submitted = [[] for _ in range(n_threads)]

    def client(t):
        rng = np.random.default_rng(t)
        for _ in range(per_thread):
            ids = _ids(rng, int(rng.integers(1, 65)))
            submitted[t].append((ids, engine.submit({"input_ids": ids})))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for reqs in submitted:
        for ids, fut in reqs:
            assert fut.result(30).tolist() == EchoModel.expected(ids)
    engine.close()
    total = n_threads * per_thread
    rows = sum(len(lengths) for _, lengths in echo.batches)
    assert rows == total                                      # every request ran exactly once
    s = engine.stats()
    assert s["requests"]["submitted"] == s["requests"]["completed"] == total
    assert s["requests"]["failed"] == s["requests"]["cancelled"] == 0
    assert sum(k * v for k, v in s["batches"]["size_histogram"].items()) == total
    assert s["batches"]["mean_size"] > 1                      # it did batch
    assert s["latency_ms"]["n"] == total and s["queue_wait_ms"]["n"] == total

    # padding never exceeds a bucket's bound: a batch holds one bucket's requests, padded to its longest member
    bounds = np.array(buckets)
    for width, lengths in echo.batches:
        bucket = {int(np.searchsorted(bounds, n)) for n in lengths}
        assert len(bucket) == 1
        assert width == max(lengths) <= buckets[bucket.pop()]
        assert len(lengths) <= 16
    assert all(int(w) <= int(b) for b, w in s["batches"]["max_width_per_bucket"].items())
    assert 0 < s["padding_ratio"] < 0.5


def test_merged_batches_stay_within_their_padding_bound_and_lose_nothing(echo):
    # deterministic: the worker is held in a first call while a bucket-16 batch and two bucket-8 requests queue
    gate = threading.Event()
    held = EchoModel(gate=gate)
    engine = InferenceEngine(held, max_batch_size=16, max_wait_ms=0, length_buckets=(8, 16, 32), merge_padding=0.25)
    first = engine.submit({"input_ids": [5] * 3})
    assert held.entered.wait(10)
    futs = [engine.submit({"input_ids": [1] * n}) for n in (16, 15, 14, 8, 7)]
    gate.set()
    assert first.result(10).tolist() == EchoModel.expected([5] * 3)
    assert [f.result(10).tolist() for f in futs] == [EchoModel.expected([1] * n) for n in (16, 15, 14, 8, 7)]
    engine.close()
    # 16+15+14+8 over 4 x 16 rows is 17 % padding, adding 7 makes 25 %: both taken, one call for all five
    assert held.batches[1:] == [(16, [16, 15, 14, 8, 7])]

    # under concurrency: nothing lost or duplicated, and every mixed batch within the bound
    buckets, merge = (8, 16, 32, 64), 0.25
    engine = InferenceEngine(echo, max_batch_size=16, max_wait_ms=1, length_buckets=buckets, merge_padding=merge)
    rng = np.random.default_rng(3)
    reqs = [_ids(rng, int(rng.integers(1, 65))) for _ in range(2000)]
    futs = []

    def client(chunk):
        futs.extend((ids, engine.submit({"input_ids": ids})) for ids in chunk)

    threads = [threading.Thread(target=client, args=(reqs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ids, fut in futs:
        assert fut.result(30).tolist() == EchoModel.expected(ids)
    engine.close()
    assert sum(len(lengths) for _, lengths in echo.batches) == len(reqs)
    bounds = np.array(buckets)
    for width, lengths in echo.batches:
        assert width == max(lengths) <= 64 and len(lengths) <= 16
        home = {int(np.searchsorted(bounds, n)) for n in lengths}
        if len(home) > 1:   # topped up from other buckets: every addition kept the padded share within the bound
            assert width <= buckets[max(home)]
            assert 1 - sum(lengths) / (len(lengths) * width) <= merge + 1e-9
    assert all(int(w) <= int(b) for b, w in engine.stats()["batches"]["max_width_per_bucket"].items())

def _reference(model_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_optim  # noqa: F401

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return np.concatenate([model(**tok([t], return_tensors="pt")).logits.float().numpy() for t in texts])


def _concurrent(engine, texts, n_threads=8):
    futures = [None] * len(texts)

    def client(t):
        for i in range(t, len(texts), n_threads):
            futures[i] = engine.submit(texts[i])

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.stack([f.result(60) for f in futures])


@pytest.mark.parametrize("backend", ["torch-dir", "torch-module", "ort-dir", "ort-session", "optimum-ortmodel",
                                     "quantized-dir"])
def test_batched_results_equal_unbatched(backend, tiny_artifacts, tmp_path):
    texts = make_texts(64, seed=1)
    ref_dir = tiny_artifacts["dir"]
    tok = None
    if backend == "torch-dir":
        model = str(ref_dir)
    elif backend == "torch-module":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(ref_dir)
        tok = AutoTokenizer.from_pretrained(ref_dir)
    elif backend == "ort-dir":
        model = tiny_artifacts["onnx_dir"]
    elif backend == "ort-session":
        import onnxruntime as ort
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        model = ort.InferenceSession(str(tiny_artifacts["onnx_dir"] / "model.onnx"), sess_options=opts,
                                     providers=["CPUExecutionProvider"])
        tok = AutoTokenizer.from_pretrained(ref_dir)
    elif backend == "optimum-ortmodel":
        from hf_optim.compat import has_optimum

        if not has_optimum():
            pytest.skip("Optimum's ORTModel needs the primary stack (optimum-onnx); the ort-session case covers ORT")
        from optimum.onnxruntime import ORTModelForSequenceClassification

        model = ORTModelForSequenceClassification.from_pretrained(tiny_artifacts["onnx_dir"])
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ref_dir)
    else:  # an hf_optim quantized artifact, restored by from_pretrained
        from hf_optim.quantize import QuantizeConfig, quantize_model_
        from hf_optim.testing import tiny_bert, tiny_bert_tokenizer

        q = quantize_model_(tiny_bert(seed=3), QuantizeConfig(model="tiny-bert", scheme="int8_weight_only"))
        q.save_pretrained(tmp_path / "q")
        tiny_bert_tokenizer(tmp_path / "q")
        ref_dir = model = tmp_path / "q"
    expected = _reference(ref_dir, texts)
    with InferenceEngine(model, tok, max_batch_size=8, max_wait_ms=2, length_buckets=(16, 32, 64, 128),
                         ort_threads=1) as engine:
        got = _concurrent(engine, texts)
        s = engine.stats()
    assert s["batches"]["mean_size"] > 1 and s["padding_ratio"] > 0   # padded batches, not batch-1 calls
    tol = 1e-4 if backend.startswith(("torch", "quantized")) else 2e-4
    np.testing.assert_allclose(got, expected, atol=tol, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_real_minilm_on_movie_sentences_batched_equals_unbatched():
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_optim.data import builtin_model, load_task

    path = builtin_model("minilm-l6")
    texts = load_task("movie-sentiment")["test"]["text"][:32]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.inference_mode():
        expected = np.concatenate([model(**tok([t], return_tensors="pt")).logits.numpy() for t in texts])
    with InferenceEngine(model, tok, max_batch_size=16, max_wait_ms=5, length_buckets=(16, 32, 64, 128)) as engine:
        got = engine(texts)
        assert engine.stats()["batches"]["count"] < len(texts)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_poisoned_request_fails_alone():
    gate = threading.Event()
    model = EchoModel(gate=gate, poison=666)
    engine = InferenceEngine(model, max_batch_size=8, max_wait_ms=10_000, length_buckets=(8,))
    good = [[1, 2, 3], [4, 5], [7, 8, 9, 10]]
    futs = [engine.submit({"input_ids": ids}) for ids in good[:2]]
    bad = engine.submit({"input_ids": [1, 666, 2]})
    futs.append(engine.submit({"input_ids": good[2]}))
    for _ in range(4):                       # fill the bucket: all of them run as one batch, which raises
        futs.append(engine.submit({"input_ids": [5]}))
    gate.set()
    with pytest.raises(ValueError, match="poisoned"):
        bad.result(30)
    for ids, f in zip(good + [[5]] * 4, futs):
        assert f.result(30).tolist() == EchoModel.expected(ids)
    engine.close()
    assert model.batches[0][1] == [3, 2, 3, 4, 1, 1, 1, 1]       # it really was one batch first
    s = engine.stats()["requests"]
    assert (s["completed"], s["failed"]) == (7, 1)


def test_out_of_vocabulary_ids_fail_alone_on_a_real_model(tiny_artifacts):
    with InferenceEngine(tiny_artifacts["dir"], max_batch_size=4, max_wait_ms=10_000, length_buckets=(16,)) as engine:
        futs = [engine.submit("good film"), engine.submit({"input_ids": [2, 10**6, 3]}),
                engine.submit("bad plot"), engine.submit("the acting")]
        with pytest.raises(ValueError, match="outside the model's range"):  # caught before it reaches a batch
            futs[1].result(30)
        got = np.stack([futs[i].result(30) for i in (0, 2, 3)])
    np.testing.assert_allclose(got, _reference(tiny_artifacts["dir"], ["good film", "bad plot", "the acting"]),
                               atol=1e-5)


def test_bad_inputs_fail_alone_and_truncation(tiny_artifacts):
    long_text = "the movie " * 40
    with InferenceEngine(tiny_artifacts["dir"], max_wait_ms=1, length_buckets=(16, 32)) as engine:
        futs = {"ok": engine.submit("fun film"), "long": engine.submit(long_text), "type": engine.submit(42),
                "ragged": engine.submit({"input_ids": [1, 2, 3], "attention_mask": [1, 1]}),
                "2d": engine.submit({"input_ids": [[1, 2], [3, 4]]}), "no-ids": engine.submit({"x": [1]})}
        with pytest.raises(InputTooLong, match="more than the largest length bucket"):
            futs["long"].result(10)
        for name, exc in [("type", TypeError), ("ragged", ValueError), ("2d", ValueError), ("no-ids", ValueError)]:
            with pytest.raises(exc):
                futs[name].result(10)
        assert futs["ok"].result(10).shape == (2,)
        assert engine.stats()["requests"]["failed"] == 5
    with InferenceEngine(tiny_artifacts["dir"], max_wait_ms=1, length_buckets=(16, 32), truncation=True) as engine:
        assert engine.submit(long_text).result(10).shape == (2,)
        assert engine.stats()["batches"]["max_width_per_bucket"] == {"32": 32}
    with InferenceEngine(EchoModel()) as engine:                       # no tokenizer: text fails, ids work
        with pytest.raises(ConfigError, match="no tokenizer"):
            engine.submit("text").result(10)
        assert engine.submit({"input_ids": [3, 4]}).result(10).tolist() == [7.0, 2.0]


def test_bucket_bound_above_model_positions_is_refused(tiny_artifacts):
    with pytest.raises(ConfigError, match="128 positions") as e:
        InferenceEngine(tiny_artifacts["dir"], length_buckets=(64, 256))
    assert e.value.field == "length_buckets"


def _blocked_engine(**kw):
    gate = threading.Event()
    model = EchoModel(gate=gate)
    engine = InferenceEngine(model, max_batch_size=1, max_wait_ms=0, length_buckets=(8,), **kw)
    first = engine.submit({"input_ids": [1]})
    assert model.entered.wait(10)            # the worker is inside the model: the queue no longer drains
    return engine, gate, first


def test_bounded_queue_raises_when_full():
    engine, gate, first = _blocked_engine(max_queue=3)
    queued = [engine.submit({"input_ids": [i]}) for i in range(2, 5)]
    with pytest.raises(QueueFull, match="queue is full.*on_full='block'"):
        engine.submit({"input_ids": [9]})
    gate.set()
    assert [f.result(10)[0] for f in [first, *queued]] == [1, 2, 3, 4]
    engine.close()
    assert engine.stats()["requests"]["submitted"] == 4


def test_bounded_queue_blocks_until_room_or_timeout():
    engine, gate, first = _blocked_engine(max_queue=2, on_full="block", submit_timeout_s=0.05)
    queued = [engine.submit({"input_ids": [i]}) for i in (2, 3)]
    with pytest.raises(QueueFull, match="within 0.05 s"):
        engine.submit({"input_ids": [9]})
    gate.set()
    engine.close()
    engine, gate, first = _blocked_engine(max_queue=2, on_full="block")
    queued = [engine.submit({"input_ids": [i]}) for i in (2, 3)]
    result = {}
    blocked = threading.Thread(target=lambda: result.setdefault("f", engine.submit({"input_ids": [4]})))
    blocked.start()
    blocked.join(0.05)
    assert blocked.is_alive()                # waiting for room, not failing
    gate.set()
    blocked.join(10)
    assert result["f"].result(10)[0] == 4 and [f.result(10)[0] for f in queued] == [2, 3]
    engine.close()


def test_close_wakes_blocked_submitters_with_engine_closed():
    engine, gate, first = _blocked_engine(max_queue=1, on_full="block")
    engine.submit({"input_ids": [2]})
    errors = []

    def submitter():
        try:
            engine.submit({"input_ids": [3]})
        except EngineClosed as e:
            errors.append(e)

    t = threading.Thread(target=submitter)
    t.start()
    t.join(0.05)
    closer = threading.Thread(target=engine.close, kwargs={"cancel_pending": True})
    closer.start()
    t.join(10)
    gate.set()
    closer.join(10)
    assert len(errors) == 1 and not t.is_alive() and engine.closed


def test_close_drains_pending_work_without_waiting_for_deadlines(echo):
    engine = InferenceEngine(echo, max_batch_size=64, max_wait_ms=60_000, length_buckets=(4, 8))
    futs = [engine.submit({"input_ids": [i] * (1 + i % 8)}) for i in range(1, 40)]
    assert not any(f.done() for f in futs)      # nothing is full and the deadline is a minute away
    assert engine.close(timeout=30)
    assert [f.result(0)[0] for f in futs] == [float(i * (1 + i % 8)) for i in range(1, 40)]
    with pytest.raises(EngineClosed):
        engine.submit({"input_ids": [1]})
    assert engine.close() is True                # idempotent


def test_close_under_load_every_future_resolves_exactly_once():
    model = EchoModel()
    engine = InferenceEngine(model, max_batch_size=8, max_wait_ms=2, length_buckets=(8, 16), max_queue=100_000)
    accepted = [[] for _ in range(8)]
    started = threading.Barrier(9)
    refused = []

    def client(t):
        rng = np.random.default_rng(t)
        started.wait()
        while True:
            ids = _ids(rng, int(rng.integers(1, 17)))
            try:
                accepted[t].append((ids, engine.submit({"input_ids": ids})))
            except EngineClosed:
                refused.append(t)
                return

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    started.wait()
    while sum(map(len, accepted)) < 2000:
        threading.Event().wait(0.001)
    assert engine.close(cancel_pending=True, timeout=30)
    for t in threads:
        t.join(10)
    assert sorted(refused) == list(range(8))
    done = cancelled = 0
    for reqs in accepted:
        for ids, f in reqs:
            assert f.done()
            if f.cancelled():
                cancelled += 1
                with pytest.raises(CancelledError):
                    f.result(0)
            else:
                assert f.result(0).tolist() == EchoModel.expected(ids)
                done += 1
    s = engine.stats()["requests"]
    assert done + cancelled == s["submitted"] == sum(map(len, accepted))
    assert (s["completed"], s["cancelled"]) == (done, cancelled)
    assert sum(len(lengths) for _, lengths in model.batches) == done   # cancelled work never ran


def test_a_cancelled_future_is_skipped(echo):
    engine = InferenceEngine(echo, max_batch_size=8, max_wait_ms=60_000, length_buckets=(8,))
    a, b = engine.submit({"input_ids": [1]}), engine.submit({"input_ids": [2]})
    assert b.cancel()
    engine.close()
    assert a.result(0)[0] == 1 and b.cancelled()
    assert echo.batches == [(1, [1])] and engine.stats()["requests"]["cancelled"] == 1


def test_cache_hits_skip_the_model_and_identical_queued_inputs_share_a_row(echo):
    engine = InferenceEngine(echo, max_batch_size=64, max_wait_ms=60_000, length_buckets=(8,), cache=True,
                             model_id="echo")
    first = [engine.submit({"input_ids": [i % 5 + 1]}) for i in range(20)]   # 5 distinct inputs, 20 requests
    engine.close()
    assert [f.result(0)[0] for f in first] == [float(i % 5 + 1) for i in range(20)]
    assert echo.batches == [(1, [1] * 5)]
    s = engine.stats()
    assert s["requests"]["coalesced"] == 15 and s["requests"]["completed"] == 20
    engine = InferenceEngine(echo, max_wait_ms=1, length_buckets=(8,), cache=engine.cache, model_id="echo")
    again = engine([{"input_ids": [i % 5 + 1]} for i in range(10)])
    engine.close()
    assert again[:, 0].tolist() == [float(i % 5 + 1) for i in range(10)]
    assert echo.calls == 1                                   # all served from the cache
    s = engine.stats()
    assert s["requests"]["cache_hits"] == 10 and s["cache"]["hits"] == 10
    with pytest.raises(ValueError):
        again_row = engine.cache.get("echo|logits", next(iter(engine.cache._data))[1])
        again_row[0] = 0.0                                   # cached results are read-only


def test_shared_cache_never_crosses_models(tmp_path):
    from hf_optim.testing import save_tiny_bert

    a, b = save_tiny_bert(tmp_path / "a", seed=0), save_tiny_bert(tmp_path / "b", seed=1)
    texts = make_texts(30, seed=5)
    cache = InferenceCache()
    results = {}
    for name, d in (("a", a), ("b", b), ("a2", a)):
        with InferenceEngine(d, max_wait_ms=1, cache=cache) as engine:
            results[name] = engine(texts)
            results[name + "-stats"] = engine.stats()["requests"]
    np.testing.assert_allclose(results["a"], _reference(a, texts), atol=1e-5)
    np.testing.assert_allclose(results["b"], _reference(b, texts), atol=1e-5)
    assert np.abs(results["a"] - results["b"]).max() > 1e-3
    assert results["b-stats"]["cache_hits"] == 0               # b never saw a's answers
    assert results["a2-stats"]["cache_hits"] == len(texts)     # the same artifact again hits
    np.testing.assert_array_equal(results["a2"], results["a"])


def test_ttl_expiry_recomputes_on_an_injected_clock(echo):
    now = [0.0]
    cache = InferenceCache(ttl_s=60, clock=lambda: now[0])
    with InferenceEngine(echo, max_wait_ms=0, length_buckets=(8,), cache=cache, model_id="echo") as engine:
        engine([{"input_ids": [1, 2]}])
        engine([{"input_ids": [1, 2]}])
        assert echo.calls == 1
        now[0] += 61
        assert engine([{"input_ids": [1, 2]}])[0].tolist() == [3.0, 2.0]
        assert echo.calls == 2 and cache.stats().expired == 1


def test_call_reraises_the_first_failure_naming_its_position(tiny_artifacts):
    with InferenceEngine(tiny_artifacts["dir"], max_wait_ms=1, length_buckets=(16,)) as engine:
        with pytest.raises(InputTooLong) as e:
            engine(["fine", "the film " * 20])
    assert "request 1 of 2" in " ".join(e.value.__notes__)


def test_config_round_trip_overrides_and_validation(tmp_path):
    import json

    import yaml

    from hf_optim.config import config_from_dict

    cfg = InferenceConfig(max_batch_size=16, length_buckets=[8, 24], on_full="block", cache_entries=100,
                          cache_ttl_s=30)
    assert cfg.length_buckets == (8, 24)
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    assert InferenceConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    with pytest.warns(UserWarning, match="max_batch"):
        assert InferenceConfig.from_dict({**cfg.to_dict(), "max_batch": 3}) == cfg
    for bad in [{"max_batch_size": 0}, {"length_buckets": [32, 16]}, {"on_full": "drop"}, {"max_wait_ms": -1},
                {"cache_ttl_s": 0}, {"max_queue": 0}]:
        with pytest.raises(ConfigError) as e:
            InferenceConfig(**bad)
        assert e.value.field == next(iter(bad))
    engine = InferenceEngine(EchoModel(), config=cfg, model_id="echo", max_wait_ms=1)       # keyword overrides, the config is untouched
    assert engine.config.max_wait_ms == 1 and cfg.max_wait_ms == 5.0 and engine.config.max_batch_size == 16
    assert engine.cache is not None and engine.cache.max_entries == 100 and engine.cache.ttl_s == 30
    engine.close()
    with pytest.raises(TypeError):
        InferenceEngine(EchoModel(), max_batchsize=3)
    with pytest.raises(TypeError, match="config="):
        InferenceEngine(EchoModel(), cfg)


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_a_model_raising_systemexit_fails_its_batch_and_the_engine_keeps_answering(exc):
    class Exits(EchoModel):
        def __call__(self, input_ids, attention_mask, **kwargs):
            if (input_ids == 99).any():
                raise exc
            return super().__call__(input_ids, attention_mask, **kwargs)

    engine = InferenceEngine(Exits(), max_batch_size=1, max_wait_ms=0, length_buckets=(8,))
    bad = engine.submit({"input_ids": [1, 99]})
    with pytest.raises(RuntimeError, match=f"the model raised {type(exc).__name__}") as info:
        bad.result(30)
    assert info.value.__cause__ is exc
    assert engine.submit({"input_ids": [4, 5]}).result(30).tolist() == EchoModel.expected([4, 5])
    assert engine.close(timeout=30)
    assert engine.stats()["requests"]["failed"] == 1


def test_a_dead_worker_refuses_new_requests_instead_of_leaving_them_pending(echo):
    engine = InferenceEngine(echo, max_wait_ms=0, length_buckets=(8,))
    engine._thread = threading.Thread(target=lambda: None)  # a worker that has stopped
    engine._thread.start()
    engine._thread.join()
    with pytest.raises(EngineClosed, match="worker has stopped"):
        engine.submit({"input_ids": [1]})


def test_cache_keys_are_unambiguous():
    from hf_optim.inference.cache import input_key as _cache_key

    def old_key(encoded):  # the former "name=bytes;" concatenation
        return b"".join(k.encode() + b"=" + encoded[k].tobytes() + b";" for k in sorted(encoded))

    # input_ids whose bytes spell ";token_type_ids=" plus another request's token_type_ids
    x, t, mask = np.arange(1, 3, dtype=np.int64), np.zeros(2, np.int64), np.ones(2, np.int64)
    spelled = np.frombuffer(x.tobytes() + b";token_type_ids=" + t.tobytes(), dtype=np.int64)
    a = {"input_ids": x, "attention_mask": mask, "token_type_ids": t}
    b = {"input_ids": spelled, "attention_mask": mask}
    assert old_key(a) == old_key(b)          # the collision: one request answered with the other's result
    assert _cache_key(a) != _cache_key(b)
    assert _cache_key({"input_ids": np.arange(4)}) != _cache_key({"input_ids": np.arange(4).reshape(2, 2)})
    assert _cache_key({"input_ids": np.arange(4, dtype=np.int64)}) != _cache_key({"input_ids": np.arange(4, dtype=np.int32)})
    assert _cache_key(dict(a)) == _cache_key(a)
