"""Length buckets, the bucket queue's flush policy (on explicit clock values) and padding."""

from __future__ import annotations

import numpy as np
import pytest

from hf_optim.errors import ConfigError
from hf_optim.inference import BucketQueue, InputTooLong, LengthBuckets, pad_batch


class Req:
    def __init__(self, length, t):
        self.length, self.enqueued_at = length, t


def test_bucket_index_bounds_are_inclusive():
    b = LengthBuckets([16, 32, 64])
    assert [b.index(n) for n in (1, 16, 17, 32, 33, 64)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(InputTooLong, match="65 tokens.*truncation=True"):
        b.index(65)


@pytest.mark.parametrize("bounds", [[], [32, 16], [16, 16], [0, 8], [8.5]])
def test_bad_bounds(bounds):
    with pytest.raises(ConfigError) as e:
        LengthBuckets(bounds)
    assert e.value.field == "length_buckets"


def test_full_bucket_flushes_at_once_and_others_wait_for_deadline():
    q = BucketQueue(LengthBuckets([8, 16]), max_batch_size=3, max_wait_s=0.010)
    assert not q.push(Req(5, 0.000))
    assert not q.push(Req(12, 0.001))
    assert not q.push(Req(6, 0.002))
    assert q.pop_ready(now=0.005) is None               # nothing full, nothing past its deadline
    assert q.next_deadline() == pytest.approx(0.010)
    assert q.push(Req(7, 0.006))                        # bucket 0 becomes full
    bucket, items = q.pop_ready(now=0.006)
    assert bucket == 0 and [r.length for r in items] == [5, 6, 7]   # FIFO
    assert q.pop_ready(now=0.010) is None               # bucket 1's head is only 9 ms old
    bucket, items = q.pop_ready(now=0.0115)
    assert bucket == 1 and [r.length for r in items] == [12]
    assert len(q) == 0 and q.next_deadline() is None


def test_oldest_expired_bucket_goes_first_and_batches_are_capped():
    q = BucketQueue(LengthBuckets([8, 16, 32]), max_batch_size=2, max_wait_s=0.0)
    q.push(Req(20, 0.3))
    q.push(Req(10, 0.1))
    q.push(Req(3, 0.2))
    order = [q.pop_ready(now=1.0)[0] for _ in range(3)]
    assert order == [1, 0, 2]
    for t in range(5):
        q.push(Req(4, t))
    sizes = []
    while (r := q.pop_ready(now=10.0)) is not None:
        sizes.append(len(r[1]))
    assert sizes == [2, 2, 1]


def test_full_bucket_beats_an_older_expired_one_and_drain_takes_everything():
    q = BucketQueue(LengthBuckets([8, 16]), max_batch_size=2, max_wait_s=1.0)
    q.push(Req(12, 0.0))
    q.push(Req(3, 0.5))
    q.push(Req(3, 0.6))
    assert q.pop_ready(now=2.0)[0] == 0
    assert q.pop_ready(now=0.7) is None
    assert q.pop_ready(now=0.7, drain=True)[0] == 1
    q.push(Req(3, 5.0))
    assert len(q.drain_all()) == 1 and len(q) == 0 and q.sizes() == [0, 0]


def test_pad_batch_pads_to_longest_member_only():
    rows = [{"input_ids": np.array([5, 6, 7]), "token_type_ids": np.array([0, 0, 1])},
            {"input_ids": np.array([9])}]
    out, width = pad_batch(rows, pad_token_id=0)
    assert width == 3
    assert out["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert all(a.dtype == np.int64 for a in out.values())
    left, _ = pad_batch(rows, pad_token_id=99, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [99, 99, 9]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_merge_padding_tops_up_from_the_nearest_buckets_within_the_padding_bound():
    q = BucketQueue(LengthBuckets([8, 16, 32, 64]), max_batch_size=4, max_wait_s=0.0, merge_padding=0.3)
    q.push(Req(14, 0.0))      # bucket 1, the oldest: it is run first
    q.push(Req(7, 0.1))       # bucket 0: 14 + 7 over 2 x 14 -> 25 % padding: taken
    q.push(Req(2, 0.2))       # bucket 0: 23 over 3 x 14 -> 45 % padding: left
    q.push(Req(18, 0.3))      # bucket 2: 41 over 3 x 18 -> 24 %: taken, the batch now belongs to bucket 2
    q.push(Req(60, 0.4))      # bucket 3: far too wide
    bucket, items = q.pop_ready(now=1.0)
    assert bucket == 2 and [r.length for r in items] == [14, 7, 18]
    width = max(r.length for r in items)
    assert 1 - sum(r.length for r in items) / (len(items) * width) <= 0.3 and width <= 32
    assert len(q) == 2 and q.sizes() == [1, 0, 0, 1]
    assert [r.length for r in q.pop_ready(now=1.0)[1]] == [2]   # the next oldest head, alone
    assert [r.length for r in q.pop_ready(now=1.0)[1]] == [60]


def test_merge_padding_never_grows_a_full_batch_and_zero_never_mixes_buckets():
    for merge in (0.0, 0.9):
        q = BucketQueue(LengthBuckets([8, 16]), max_batch_size=2, max_wait_s=0.0, merge_padding=merge)
        for n, t in ((10, 0.0), (12, 0.1), (8, 0.2)):
            q.push(Req(n, t))
        assert [r.length for r in q.pop_ready(now=1.0)[1]] == [10, 12]     # full: nothing added
        q.push(Req(15, 0.3))
        bucket, items = q.pop_ready(now=1.0)
        assert [r.length for r in items] == ([8] if merge == 0 else [8, 15])
    with pytest.raises(ConfigError, match="merge_padding"):
        BucketQueue(LengthBuckets([8]), 2, 0.0, merge_padding=1.0)
