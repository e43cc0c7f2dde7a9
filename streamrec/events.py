"""Event contracts on Kafka: versioned JSON, decoded into typed records or a typed error.

=========================  =============================  =====================================
topic                      record                         ``schema`` field
=========================  =============================  =====================================
``streamrec.impressions``  :class:`Impression`            ``streamrec.impression.v1``
``streamrec.feedback``     :class:`Feedback`              ``streamrec.feedback.v1``
(trainer input)            :class:`TrainingSample`        ``streamrec.sample.v1``
``streamrec.dlq``          original bytes + headers       (see :func:`dead_letter_headers`)
=========================  =============================  =====================================

Keys are the ``user_id`` (UTF-8), so one user's impressions and feedback share a partition
number and one ingest actor sees both. :func:`decode` never raises: anything that is not a
valid event comes back as a :class:`DecodeError` naming what was wrong, ready for the DLQ.
"""

from __future__ import annotations

import json
import math

import msgspec
import orjson
from dataclasses import dataclass
from msgspec import Meta
from typing import Annotated, Any, Literal, NamedTuple, Sequence, Union, get_args

__all__ = [
    "IMPRESSION_SCHEMA",
    "FEEDBACK_SCHEMA",
    "SAMPLE_SCHEMA",
    "Impression",
    "Feedback",
    "TrainingSample",
    "DecodeError",
    "decode",
    "decode_batch",
    "encode",
    "dead_letter_headers",
    "encode_samples",
    "decode_samples",
    "FEEDBACK_TYPES",
]

IMPRESSION_SCHEMA = "streamrec.impression.v1"
FEEDBACK_SCHEMA = "streamrec.feedback.v1"
SAMPLE_SCHEMA = "streamrec.sample.v1"
MAX_SLATE = 100
MAX_ID_CHARS = 256

# Field types with their constraints: the fast decoder (msgspec, C) enforces them while parsing.
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
Probability = Annotated[float, Meta(gt=0.0, le=1.0)]
Slate = Annotated[tuple[Id, ...], Meta(min_length=1, max_length=MAX_SLATE)]
FeedbackType = Literal["click", "purchase", "like", "dislike", "dwell", "skip"]
FEEDBACK_TYPES: tuple[str, ...] = get_args(FeedbackType)


class Impression(msgspec.Struct, gc=False):
    """One served slate: what the policy showed, and with what probability.

    A msgspec Struct outside the cyclic GC (it holds no reference back to itself): the ingest
    keeps one per pending impression for the reward window, and a tracked object costs a scan in
    every collection it lives through (with dataclasses the collector took a quarter of the loop).
    """

    event_id: Id
    ts: float
    """Unix seconds at serving time."""
    user_id: Id
    items: Slate
    """Shown item ids, best position first (K)."""
    propensities: tuple[Probability, ...]
    """(K,) probability of each shown item at its position under the serving policy, in (0, 1]."""
    policy_version: Annotated[int, Meta(ge=1)]
    """The policy version that chose the slate (the store's version number)."""
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    """Typed request context and free text."""
    features: dict[str, Any] = msgspec.field(default_factory=dict)
    """What the trainer needs to rebuild the serving-time policy input: an
    :class:`rl.logged.ImpressionFeatures` as a JSON object (candidate ids, user vector, scores)."""
    schema: str = IMPRESSION_SCHEMA


class Feedback(msgspec.Struct, gc=False):
    """A user's reaction to one served item, joined to its impression by ``event_id``."""

    event_id: Id
    ts: float
    user_id: Id
    item_id: Id
    type: FeedbackType = "click"
    value: float = 1.0
    schema: str = FEEDBACK_SCHEMA


class TrainingSample(NamedTuple):
    """An impression whose reward window closed, with the feedback it got (reward 0 if none).

    A NamedTuple: built at C speed and msgpack-encoded (:func:`encode_samples`) on the hot path.
    """

    event_id: str
    ts: float
    user_id: str
    items: tuple[str, ...]
    propensities: tuple[float, ...]
    policy_version: int
    rewards: tuple[float, ...]
    """(K,) summed reward at each position (:class:`streamrec.rewards.RewardTable` of each feedback)."""
    context: dict[str, Any] = {}
    features: dict[str, Any] = {}
    feedback_types: tuple[str, ...] = ()
    """The types of the joined feedback, in arrival order."""
    source: tuple[str, int, int] | None = None
    """(topic, partition, offset) of the impression."""
    schema: str = SAMPLE_SCHEMA

    @property
    def clicked(self) -> bool:
        return any(r > 0 for r in self.rewards)


@dataclass(frozen=True)
class DecodeError:
    """Why bytes are not a valid event; ``reason`` is what the DLQ header says."""

    reason: str
    kind: str = "invalid"
    """``too_large``, ``not_json``, ``unknown_schema`` or ``invalid``."""


Event = Union[Impression, Feedback]
_KINDS = {IMPRESSION_SCHEMA: "impression", FEEDBACK_SCHEMA: "feedback"}


def encode(event: Impression | Feedback | TrainingSample) -> bytes:
    """Compact JSON bytes with the ``schema`` field."""
    d = event._asdict() if isinstance(event, TrainingSample) else msgspec.structs.asdict(event)
    try:
        return orjson.dumps(d)
    except TypeError:  # e.g. an integer beyond 64 bits in the context: the stdlib writes it
        return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()


_SAMPLES_ENCODER = msgspec.msgpack.Encoder()
_SAMPLES_DECODER = msgspec.msgpack.Decoder(list[TrainingSample])


def encode_samples(samples: list[TrainingSample]) -> bytes:
    """A batch of samples as msgpack (one record of the samples topic): C speed, no pickle."""
    return _SAMPLES_ENCODER.encode(samples)


def decode_samples(blob: bytes) -> list[TrainingSample]:
    """Inverse of :func:`encode_samples`; raises ``ValueError`` naming the problem on bad bytes."""
    try:
        return _SAMPLES_DECODER.decode(blob)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a msgpack batch of TrainingSamples: {e}") from None


class _Invalid(Exception):
    pass


def _str(d: dict, key: str, *, max_chars: int = MAX_ID_CHARS) -> str:
    if key not in d:
        raise _Invalid(f"missing field '{key}'")
    v = d[key]
    if not isinstance(v, str):
        raise _Invalid(f"field '{key}' must be a string, got {type(v).__name__}")
    if not v or len(v) > max_chars:
        raise _Invalid(f"field '{key}' must be 1-{max_chars} characters")
    return v


def _num(d: dict, key: str, default: float | None = None) -> float:
    if key not in d:
        if default is not None:
            return default
        raise _Invalid(f"missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f"field '{key}' must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise _Invalid(f"field '{key}' must be finite, got {v}")
    return v


def _obj(d: dict, key: str) -> dict:
    v = d.get(key, {})
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Invalid(f"field '{key}' must be an object, got {type(v).__name__}")
    return v


def _impression(d: dict) -> Impression:
    items = d.get("items")
    if not isinstance(items, list) or not items:
        raise _Invalid("missing field 'items'" if items is None else "field 'items' must be a non-empty list")
    if len(items) > MAX_SLATE:
        raise _Invalid(f"field 'items' has {len(items)} entries, at most {MAX_SLATE}")
    for i in items:
        if type(i) is not str or not 0 < len(i) <= MAX_ID_CHARS:
            raise _Invalid("field 'items' must hold item id strings")
    if len(set(items)) != len(items):
        raise _Invalid("field 'items' repeats an item")
    props = d.get("propensities")
    if not isinstance(props, list):
        raise _Invalid("missing field 'propensities'" if props is None else "field 'propensities' must be a list")
    if len(props) != len(items):
        raise _Invalid(f"field 'propensities' has {len(props)} entries for {len(items)} items")
    out = []
    for p in props:
        tp = type(p)
        if (tp is not float and tp is not int) or not 0 < p <= 1:  # NaN fails the comparison
            raise _Invalid(f"field 'propensities' must hold probabilities in (0, 1], got {p!r}")
        out.append(float(p))
    version = d.get("policy_version")
    if type(version) is not int or version < 1:
        raise _Invalid("missing field 'policy_version'" if version is None
                       else f"field 'policy_version' must be an integer >= 1, got {version!r}")
    return Impression(
        event_id=_str(d, "event_id"), ts=_num(d, "ts"), user_id=_str(d, "user_id"), items=tuple(items),
        propensities=tuple(out), policy_version=version, context=_obj(d, "context"), features=_obj(d, "features"),
    )


def _feedback(d: dict) -> Feedback:
    ftype = _str(d, "type") if "type" in d else "click"
    if ftype not in FEEDBACK_TYPES:
        raise _Invalid(f"field 'type' must be one of {', '.join(FEEDBACK_TYPES)}, got {ftype!r}")
    return Feedback(event_id=_str(d, "event_id"), ts=_num(d, "ts"), user_id=_str(d, "user_id"),
                    item_id=_str(d, "item_id"), type=ftype, value=_num(d, "value", 1.0))


_FAST = {"impression": (msgspec.json.Decoder(Impression), IMPRESSION_SCHEMA),
         "feedback": (msgspec.json.Decoder(Feedback), FEEDBACK_SCHEMA)}


def _impression_ok(ev: Impression) -> bool:
    """The cross-field rules msgspec cannot state, on an impression it parsed (see :func:`_fast`)."""
    items = ev.items
    # The Structs default ``schema``, so a payload without it decodes too. msgspec fills a
    # missing field with the default object itself, and a present one with a new string: the
    # identity test tells them apart without a second parse (were msgspec ever to share the
    # object, valid events would take the slow path: slower, still correct).
    return (ev.schema is not IMPRESSION_SCHEMA and ev.schema == IMPRESSION_SCHEMA and _isfinite(ev.ts)
            and len(ev.propensities) == len(items) and len(set(items)) == len(items))


def _feedback_ok(ev: Feedback) -> bool:
    return (ev.schema is not FEEDBACK_SCHEMA and ev.schema == FEEDBACK_SCHEMA and _isfinite(ev.ts)
            and _isfinite(ev.value))


_isfinite = math.isfinite
_FAST = {"impression": (msgspec.json.Decoder(Impression).decode, _impression_ok),
         "feedback": (msgspec.json.Decoder(Feedback).decode, _feedback_ok)}


def _fast(raw: bytes, kind: str) -> Event | None:
    """The hot path: parse and check types and ranges in C (msgspec), then the cross-field rules.

    Accepts only what :func:`_impression` / :func:`_feedback` accept; anything else (including
    inputs they would repair, like an integer ``policy_version``) returns None for the slow path,
    which names the problem."""
    parse, ok = _FAST[kind]
    try:
        ev = parse(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return ev if ok(ev) else None


def decode_batch(raws: Sequence[bytes | None], kind: Literal["impression", "feedback"], *,
                 max_bytes: int = 1_000_000) -> tuple[list[Event | DecodeError], list[int]]:
    """``[decode(raw, expect=kind) for raw in raws]``, and the indices of the DecodeErrors in it.

    The ingest's hot path, one call per polled partition batch: the size limit is checked once
    for the batch, and each valid event costs one C parse and the cross-field rules, without a
    function call of its own. Anything else takes :func:`decode`'s explaining path, which names the
    problem."""
    out: list[Event | DecodeError] = []
    bad: list[int] = []
    try:
        fits = max(map(len, raws), default=0) <= max_bytes
    except TypeError:  # a tombstone (None) among them
        fits = False
    if not fits:
        for i, raw in enumerate(raws):
            ev = decode(raw, max_bytes=max_bytes, expect=kind)
            if type(ev) is DecodeError:
                bad.append(i)
            out.append(ev)
        return out, bad
    parse, ok = _FAST[kind]
    append = out.append
    for raw in raws:
        try:
            ev = parse(raw)
            if ok(ev):
                append(ev)
                continue
        except (msgspec.DecodeError, RecursionError, TypeError):
            pass
        ev = _explained(raw, kind)  # the size is checked: only the explaining parse is left
        if type(ev) is DecodeError:
            bad.append(len(out))
        append(ev)
    return out, bad


def decode(raw: bytes | None, *, max_bytes: int = 1_000_000,
           expect: Literal["impression", "feedback", None] = None) -> Event | DecodeError:
    """Bytes -> Impression | Feedback, or DecodeError; never raises.

    With ``expect`` (the topic says what should be there), a valid event is parsed and checked in
    one C pass; only events that fail it take the Python path that explains why."""
    if raw is None:
        return DecodeError("empty payload (tombstone)", "invalid")
    try:
        n = len(raw)
    except TypeError:
        return DecodeError(f"payload must be bytes, got {type(raw).__name__}", "invalid")
    if n > max_bytes:
        return DecodeError(f"payload of {n} bytes exceeds the {max_bytes}-byte limit", "too_large")
    if expect is not None and type(raw) is bytes:
        ev = _fast(raw, expect)
        if ev is not None:
            return ev
    return _explained(raw, expect)


def _explained(raw: bytes, expect: Literal["impression", "feedback", None]) -> Event | DecodeError:
    """The Python path of :func:`decode` (size already checked): the event, or why it is not one."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # orjson is strict RFC 8259; the stdlib names the problem and accepts NaN (caught below)
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return DecodeError(f"not JSON: {str(e)[:200]}", "not_json")
    except (TypeError, RecursionError) as e:
        return DecodeError(f"not JSON: {str(e)[:200]}", "not_json")
    if not isinstance(d, dict):
        return DecodeError(f"expected a JSON object, got {type(d).__name__}", "invalid")
    schema = d.get("schema")
    kind = _KINDS.get(schema) if isinstance(schema, str) else None
    if kind is None:
        known = ", ".join(_KINDS)
        return DecodeError(f"unknown schema {schema!r} (known: {known})", "unknown_schema")
    if expect is not None and kind != expect:
        return DecodeError(f"a {kind} event on the {expect} topic", "invalid")
    try:
        return _impression(d) if kind == "impression" else _feedback(d)
    except _Invalid as e:
        return DecodeError(str(e), "invalid")
    except Exception as e:  # defensive: nothing a producer sends may crash the loop
        return DecodeError(f"{type(e).__name__}: {e}", "invalid")


def dead_letter_headers(error: DecodeError | str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter: the reason and where the original bytes came from."""
    reason = error.reason if isinstance(error, DecodeError) else str(error)
    kind = error.kind if isinstance(error, DecodeError) else "invalid"
    return [
        ("streamrec.error", reason.encode()[:1000]),
        ("streamrec.error_kind", kind.encode()),
        ("streamrec.source_topic", topic.encode()),
        ("streamrec.source_partition", str(partition).encode()),
        ("streamrec.source_offset", str(offset).encode()),
    ]
