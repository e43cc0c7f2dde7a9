"""Event encoding: exact round trips, a table of bad inputs, and bytes that never crash decode."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import (
    DecodeError,
    Feedback,
    Impression,
    TrainingSample,
    _fast,
    decode,
    decode_batch,
    decode_samples,
    dead_letter_headers,
    encode,
    encode_samples,
)


def imp(**kw):
    base = dict(event_id="e1", ts=1.5, user_id="u1", items=("a", "b"), propensities=(0.5, 0.25),
                policy_version=3, context={"device": "ios"}, features={"candidates": ["a", "b", "c"]})
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
        (_raw(policy_version="3"), "field 'policy_version' must be an integer >= 1, got '3'"),
        (_raw(policy_version=0), "field 'policy_version' must be an integer >= 1, got 0"),
        (_raw(policy_version=True), "field 'policy_version' must be an integer >= 1, got True"),
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
    # the topic's fast path (msgspec) refuses it too, and the message is the same
    kind = "feedback" if raw is not None and b"feedback.v1" in raw[:200] else "impression"
    assert decode(raw, expect=kind) == out


@pytest.mark.parametrize("chars, ok", [(1, True), (256, True), (257, False)])
def test_id_length_counts_characters_on_both_paths(chars, ok):
    raw = encode(imp(user_id="\U0001F600" * chars))  # 4 UTF-8 bytes per character
    for out in (decode(raw), decode(raw, expect="impression")):
        assert isinstance(out, Impression) is ok, out


def test_fast_path_needs_the_schema_field():
    d = json.loads(encode(imp()))
    del d["schema"]
    assert _fast(json.dumps(d).encode(), "impression") is None
    out = decode(json.dumps(d).encode(), expect="impression")
    assert isinstance(out, DecodeError) and out.kind == "unknown_schema"


def test_valid_events_take_the_one_pass_fast_path():
    """The ingest hot path: a valid event is accepted by the C decoder alone (the schema-presence
    check relies on msgspec filling a missing field with the default object itself)."""
    assert _fast(encode(imp()), "impression") == imp()
    fb = Feedback(event_id="e1", ts=1.0, user_id="u1", item_id="i1")
    assert _fast(encode(fb), "feedback") == fb


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
       p=st.floats(min_value=1e-9, max_value=1.0), ver=st.integers(min_value=1, max_value=2**63 - 1),
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


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=8)
VALID = {
    "impression": json.loads(encode(imp())),
    "feedback": json.loads(encode(Feedback(event_id="e1", ts=2.0, user_id="u1", item_id="b", value=2.0))),
}


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["impression", "feedback"]), data=st.data())
def test_property_fast_path_agrees_with_the_explaining_path(kind, data):
    """Break a valid event field by field: the topic's C path and the Python path give the same answer."""
    d = dict(VALID[kind])
    for key in data.draw(st.lists(st.sampled_from(sorted(d)), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del d[key]
        else:
            d[key] = data.draw(json_values)
    raw = json.dumps(d).encode()
    slow = decode(raw)
    fast = decode(raw, expect=kind)
    assert decode_batch([raw], kind) == ([fast], [0] if isinstance(fast, DecodeError) else [])
    if isinstance(slow, DecodeError) or type(slow).__name__.lower() == kind:
        assert fast == slow
    else:
        assert isinstance(fast, DecodeError) and "topic" in fast.reason


def test_sample_batches_round_trip_and_bad_bytes_are_named():
    s = TrainingSample(event_id="e1", ts=1.5, user_id="u1", items=("a", "b"), propensities=(0.5, 0.25),
                       policy_version=3, rewards=(0.0, 1.0), context={"hour": 3}, features={"c": [1, 2]},
                       feedback_types=("click",), source=("t", 1, 7))
    assert decode_samples(encode_samples([s, s._replace(event_id="e2")])) == [s, s._replace(event_id="e2")]
    with pytest.raises(ValueError, match="not a msgpack batch of TrainingSamples"):
        decode_samples(b"\x93\x01")


def test_a_batch_decodes_each_record_like_decode_and_points_at_the_bad_ones():
    good = encode(imp())
    nan_ts = good.replace(b"\"ts\":1.5", b"\"ts\":NaN")
    raws = [good, b"not json", None, good, b"x" * 2_000, encode(Feedback(event_id="e", ts=1.0, user_id="u", item_id="i")),
            nan_ts, good]
    events, bad = decode_batch(raws, "impression", max_bytes=1_000)
    assert events == [decode(r, max_bytes=1_000, expect="impression") for r in raws]
    assert bad == [1, 2, 4, 5, 6]
    assert [events[i].kind for i in bad] == ["not_json", "invalid", "too_large", "invalid", "invalid"]
    assert decode_batch([good] * 3, "impression") == ([imp()] * 3, [])
    assert decode_batch([], "feedback") == ([], [])
