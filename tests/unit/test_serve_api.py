"""The HTTP contract without a server: request models, keys, the loopback rule, Prometheus text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.api import (AuthConfigError, FeedbackRequest, Metrics, RecommendRequest, check_bearer, is_loopback,
                       require_keys_off_loopback, validation_message)
from serve.context_encoder import LRU


def _message(model, data) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return validation_message([{**err, "loc": ("body", *err["loc"])} for err in e.value.errors()])


@pytest.mark.parametrize("data, message", [
    ({}, "body.user_id: Field required"),
    ({"user_id": "u", "k": 101}, "body.k: Input should be less than or equal to 100"),
    ({"user_id": "u", "extra": 1}, "body.extra: unknown field"),
    ({"user_id": "u", "context": {"text": "x" * 4097}}, "body.context.text: String should have at most 4096 characters"),
    ({"user_id": "u", "context": {"text": "é" * 2049}}, "body.context.text: text must be at most 4096 bytes of UTF-8"),
    ({"user_id": "u", "context": {"device": "fridge"}}, "body.context.device: Input should be"),
    ({"user_id": "u", "exclude": ["a"] * 10_001}, "body.exclude: List should have at most 10000 items"),
    ({"user_id": "x" * 257}, "body.user_id: String should have at most 256 characters"),
])
def test_recommend_request_table(data, message):
    assert message in _message(RecommendRequest, data)


def test_feedback_requires_the_user_and_a_finite_value():
    assert "body.user_id: Field required" in _message(FeedbackRequest, {"event_id": "e", "item_id": "i"})
    assert "value must be a finite number" in _message(
        FeedbackRequest, {"event_id": "e", "user_id": "u", "item_id": "i", "value": float("inf")})
    ok = FeedbackRequest.model_validate({"event_id": "e", "user_id": "u", "item_id": "i"})
    assert ok.type == "click" and ok.value == 1.0


@pytest.mark.parametrize("header, ok", [
    (None, False), ("", False), ("Bearer", False), ("Basic abcdefgh", False), ("Bearer nope-nope", False),
    ("Bearer key-number-two", True), ("Bearer key-number-one ", True),
])
def test_bearer_keys(header, ok):
    assert check_bearer(header, [b"key-number-one", b"key-number-two"]) is ok


def test_no_keys_means_open_and_loopback_rule():
    assert check_bearer(None, [])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    require_keys_off_loopback("127.0.0.1", [])
    require_keys_off_loopback("0.0.0.0", ["a-long-key"])
    with pytest.raises(AuthConfigError, match="http host '0.0.0.0' is not loopback: set STREAMREC_API_KEYS"):
        require_keys_off_loopback("0.0.0.0", [])


def test_prometheus_text():
    m = Metrics()
    m.observe("/v1/recommend", 200, 0.02)
    m.observe("/v1/recommend", 503, 0.001)
    m.set("policy_version", 7)
    text = m.render({"events_dropped": 3})
    assert 'streamrec_requests_total{route="/v1/recommend",status="200"} 1' in text
    assert 'streamrec_recommend_seconds_bucket{le="0.025"} 2' in text  # cumulative buckets
    assert 'streamrec_recommend_seconds_bucket{le="0.01"} 1' in text  # the 1 ms one
    assert "streamrec_recommend_seconds_count 2" in text
    assert "streamrec_policy_version 7.0" in text and "streamrec_events_dropped 3" in text


def test_lru_cache():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)  # evicts b, the least recently used
    assert c.get("b") is None and c.get("c") == 3 and (c.hits, c.misses) == (2, 1)
