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


class _Stub:
    """The routes' handlers, answering what the guard let through (the HTTP layer alone)."""

    async def experiment(self, action, *args):
        from fastapi.responses import JSONResponse

        return JSONResponse({"experiment": {"action": action, "args": list(args)}, "figures": None})

    def not_ready(self):
        return None


@pytest.mark.parametrize("path, method, key, status", [
    ("/v1/admin/experiment", "GET", "api-key-0001", 401),    # admin keys set: an API key is not enough
    ("/v1/admin/experiment", "GET", None, 401),
    ("/v1/admin/experiment", "GET", "admin-key-02", 200),
    ("/healthz", "GET", None, 200),
    ("/dashboard", "GET", None, 200),                      # the page holds no data
    ("/v1/dashboard", "GET", "admin-key-01", 401),         # an admin key is not an API key
])
def test_admin_routes_take_only_admin_keys_when_set(path, method, key, status):
    from fastapi.testclient import TestClient

    from serve.api import GuardState
    from serve.http import make_api

    guard = GuardState([b"api-key-0001"], admin_keys=[b"admin-key-01", b"admin-key-02"])
    client = TestClient(make_api(_Stub(), guard))
    r = client.request(method, path, headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == status, r.text
    if status == 401:
        assert "error" in r.json()


def test_admin_calls_name_the_operator_and_the_keys_position_never_the_key():
    from fastapi.testclient import TestClient

    from serve.api import GuardState
    from serve.http import make_api

    client = TestClient(make_api(_Stub(), GuardState([b"api-key-0001"], admin_keys=[b"admin-key-01", b"admin-key-02"])))
    r = client.delete("/v1/admin/experiment", params={"reason": "done"},
                      headers={"Authorization": "Bearer admin-key-02", "X-Streamrec-Operator": "alice"})
    assert r.json()["experiment"]["args"] == ["done", "alice (admin key 2)"]
    bad = client.put("/v1/admin/experiment", json={"name": "e", "arms": [{"name": "b", "version": "1", "share": 0.1}]},
                     headers={"Authorization": "Bearer admin-key-01"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("body.arms.0.version:")
    open_api = TestClient(make_api(_Stub(), GuardState()))
    assert open_api.get("/v1/admin/experiment").json()["experiment"]["action"] == "status"
    r = open_api.put("/v1/admin/experiment", json={"name": "e", "arms": [{"name": "b", "version": 1, "share": 0.1}]})
    assert r.json()["experiment"]["args"][1] == "an operator on an API without keys"
