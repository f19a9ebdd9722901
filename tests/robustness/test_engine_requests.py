"""Poisoned requests to the inference engine: each fails alone with its own exception, the engine keeps
answering the others, and no future is left pending."""

from __future__ import annotations

import pytest

from hf_optim.inference import InferenceEngine, InputTooLong

CASES = [
    ("empty-text", "", None),
    ("blank-text", "   ", None),
    ("megabyte-word", "a" * 1_000_000, None),  # one long unknown word: one [UNK] token
    ("huge-input", "good film " * 100, InputTooLong),
    ("int", 42, TypeError),
    ("none", None, TypeError),
    ("bytes", b"good film", TypeError),
    ("list-of-str", ["good", "film"], TypeError),
    ("float-nan", float("nan"), TypeError),
    ("object", object(), TypeError),
    ("lone-surrogate", "good \ud800 film", TypeError),
    ("ids-a-string", {"input_ids": "abc"}, ValueError),
    ("ids-empty", {"input_ids": []}, ValueError),
    ("ids-float", {"input_ids": [1.5, 2.0]}, ValueError),
    ("ids-beyond-int64", {"input_ids": [10 ** 30]}, ValueError),
    ("ids-negative", {"input_ids": [2, -1, 3]}, ValueError),
    ("ids-out-of-vocabulary", {"input_ids": [2, 10 ** 6, 3]}, ValueError),
    ("ids-2d", {"input_ids": [[1, 2], [3, 4]]}, ValueError),
    ("ids-ragged-mask", {"input_ids": [1, 2, 3], "attention_mask": [1, 1]}, ValueError),
    ("no-input-ids", {"x": [1]}, ValueError),
    ("token-types-out-of-range", {"input_ids": [1, 2], "token_type_ids": [5, 5]}, ValueError),
]


@pytest.fixture(scope="module")
def engine(sources):
    with InferenceEngine(sources.get("bert"), max_wait_ms=1, length_buckets=(16, 32)) as engine:
        yield engine


@pytest.mark.parametrize("request_, raises", [pytest.param(r, e, id=i) for i, r, e in CASES])
def test_a_poisoned_request_fails_alone(engine, request_, raises):
    good = engine.submit("good fun film")
    bad = engine.submit(request_)
    if raises is None:
        assert bad.result(30).shape == (2,)
    else:
        with pytest.raises(raises) as info:
            bad.result(30)
        assert len(str(info.value)) < 500
    assert good.result(30).shape == (2,)  # the request next to it is answered
    assert engine.submit("bad dull plot").result(30).shape == (2,)  # and so is the next one


@pytest.mark.parametrize("request_, named", [({"input_ids": [2, -1, 3]}, "-1"),
                                             ({"input_ids": [2, 10 ** 6, 3]}, "1000000"),
                                             ({"input_ids": [1, 2], "token_type_ids": [5, 5]}, "'token_type_ids'")])
def test_token_ids_outside_the_model_are_named_with_the_range(engine, request_, named):
    with pytest.raises(ValueError, match="outside the model's range") as info:
        engine.submit(request_).result(30)
    assert named in str(info.value)
