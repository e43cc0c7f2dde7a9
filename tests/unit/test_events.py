"""Event encoding: exact round trips, a table of bad inputs, and bytes that never crash decode."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import (
    DecodeError,
    Feedback,
    Impression,
    decode,
    dead_letter_headers,
    encode,
)


def imp(**kw):
    base = dict(event_id="e1", ts=1.5, user_id="u1", items=("a", "b"), propensities=(0.5, 0.25),
                policy_version="3", context={"device": "ios"}, features={"candidates": ["a", "b", "c"]})
    base.update(kw)
    return Impression(**base)


def test_round_trip_impression_and_feedback():
    i = imp()
    assert decode(encode(i)) == i
    f = Feedback(event_id="e1", ts=2.0, user_id="u1", item_id="b", type="purchase", value=3.0)
    assert decode(encode(f)) == f


def _raw(**kw):
    d = json.loads(encode(imp()))
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1,2]", "expected a JSON object, got list"),
        (_raw(schema="streamrec.impression.v9"),
         "unknown schema 'streamrec.impression.v9' (known: streamrec.impression.v1, streamrec.feedback.v1)"),
        (_raw(user_id=...), "missing field 'user_id'"),
        (_raw(user_id=7), "field 'user_id' must be a string, got int"),
        (_raw(ts="noon"), "field 'ts' must be a number, got str"),
        (b'{"schema":"streamrec.feedback.v1","event_id":"e","ts":1,"user_id":"u","item_id":"i","value":NaN}',
         "field 'value' must be finite, got nan"),
        (_raw(propensities=[0.5]), "field 'propensities' has 1 entries for 2 items"),
        (_raw(propensities=[0.5, 0]), "field 'propensities' must hold probabilities in (0, 1], got 0"),
        (_raw(items=[]), "field 'items' must be a non-empty list"),
        (_raw(items=["a", "a"]), "field 'items' repeats an item"),
        (_raw(context=[1]), "field 'context' must be an object, got list"),
        (b'{"schema":"streamrec.feedback.v1","event_id":"e","ts":1,"user_id":"u","item_id":"i","type":"poke"}',
         "field 'type' must be one of click, purchase, like, dislike, dwell, skip, got 'poke'"),
        (b"x" * 2_000_001, "payload of 2000001 bytes exceeds the 1000000-byte limit"),
        (None, "empty payload (tombstone)"),
    ],
)
def test_bad_events_decode_to_a_reason(raw, reason):
    out = decode(raw)
    assert isinstance(out, DecodeError)
    assert out.reason == reason


def test_event_on_the_wrong_topic():
    out = decode(encode(imp()), expect="feedback")
    assert isinstance(out, DecodeError) and out.reason == "a impression event on the feedback topic"


def test_dead_letter_headers_name_error_and_source():
    h = dict(dead_letter_headers(DecodeError("bad", "not_json"), "streamrec.feedback", 2, 41))
    assert h == {"streamrec.error": b"bad", "streamrec.error_kind": b"not_json",
                 "streamrec.source_topic": b"streamrec.feedback", "streamrec.source_partition": b"2",
                 "streamrec.source_offset": b"41"}


ids = st.text(min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@settings(max_examples=200, deadline=None)
@given(eid=ids, ts=finite, uid=ids, items=st.lists(ids, min_size=1, max_size=10, unique=True),
       p=st.floats(min_value=1e-9, max_value=1.0), ver=ids,
       ctx=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(min_value=-2**63, max_value=2**63 - 1), st.text(max_size=10), st.booleans())))
def test_property_impression_round_trip(eid, ts, uid, items, p, ver, ctx):
    i = Impression(event_id=eid, ts=ts, user_id=uid, items=tuple(items), propensities=tuple([p] * len(items)),
                   policy_version=ver, context=ctx)
    assert decode(encode(i)) == i


@settings(max_examples=200, deadline=None)
@given(eid=ids, ts=finite, uid=ids, item=ids, value=finite)
def test_property_feedback_round_trip(eid, ts, uid, item, value):
    f = Feedback(event_id=eid, ts=ts, user_id=uid, item_id=item, value=value)
    assert decode(encode(f)) == f


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_property_arbitrary_bytes_never_crash(raw):
    out = decode(raw)
    assert isinstance(out, (DecodeError, Impression, Feedback))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20),
       st.sampled_from(["streamrec.impression.v1", "streamrec.feedback.v1"]))
def test_property_arbitrary_json_never_crashes(obj, schema):
    if isinstance(obj, dict):
        obj["schema"] = schema
    out = decode(json.dumps(obj).encode())
    assert isinstance(out, (DecodeError, Impression, Feedback))
