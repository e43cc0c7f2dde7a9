"""SampleBuffer's logic (the class behind the Ray actor): dedup by event_id, capacity, order, lazy decoding."""

from __future__ import annotations

import pytest

from actors.sample_buffer import SampleQueue as Buffer
from streamrec.events import TrainingSample, encode_samples


def sample(i: int) -> TrainingSample:
    return TrainingSample(event_id=f"e{i}", ts=float(i), user_id="u", items=("a", "b"), propensities=(0.5, 0.5),
                          policy_version=1, rewards=(0.0, 1.0 * (i % 2)), source=("t", 0, i))


def put_encoded(buf, samples):
    return buf.put(encode_samples(samples), [s.event_id for s in samples])


def test_encoded_and_plain_batches_come_out_in_order_without_duplicates():
    buf = Buffer(capacity=100)
    assert put_encoded(buf, [sample(i) for i in range(5)]) == {"accepted": 5, "duplicates": 0, "full": False}
    assert buf.put([sample(i) for i in range(3, 8)]) == {"accepted": 3, "duplicates": 2, "full": False}
    # a redelivered encoded batch with one new sample among duplicates
    assert put_encoded(buf, [sample(6), sample(8), sample(2)]) == {"accepted": 1, "duplicates": 2, "full": False}
    assert buf.size() == 9
    assert buf.take(4) == [sample(i) for i in range(4)]  # splits an encoded batch
    assert buf.size() == 5
    assert buf.take() == [sample(i) for i in range(4, 9)]
    assert buf.size() == 0 and buf.take() == []


def test_a_batch_that_does_not_fit_is_refused_whole_and_its_ids_stay_unseen():
    buf = Buffer(capacity=4)
    put_encoded(buf, [sample(i) for i in range(3)])
    assert put_encoded(buf, [sample(i) for i in range(3, 5)])["full"] is True
    assert buf.size() == 3
    buf.take()
    assert put_encoded(buf, [sample(i) for i in range(3, 5)]) == {"accepted": 2, "duplicates": 0, "full": False}
    assert [s.event_id for s in buf.take()] == ["e3", "e4"]


def test_an_empty_buffer_takes_any_batch():
    buf = Buffer(capacity=2)
    assert put_encoded(buf, [sample(i) for i in range(5)])["accepted"] == 5


def test_undecodable_bytes_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="not a msgpack batch"):
        Buffer().put(b"\x00garbage")
