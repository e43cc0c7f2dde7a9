"""The one I/O boundary to Kafka: the event sinks (produce), :class:`KafkaEventSource` (ingest's
group consumer) and :class:`KafkaLogReader` (the trainer's reader of the samples topic).

Everything above these classes (ingest, join, serving, the trainer's ``SampleLog``) sees plain
records and never imports a Kafka client, so it is testable without a broker. Two sinks keep one promise (:class:`EventSink`):
:class:`RdKafkaEventSink` on librdkafka (serving's default, ``kafka.producer_client``) and
:class:`KafkaEventSink` on kafka-python. The source consumes with librdkafka (confluent-kafka),
whose C fetch/parse path keeps up with the ingest loop. Clients are imported lazily.

``send`` never blocks the caller: events go to a bounded buffer (librdkafka's queue, or an
in-process queue that a background thread hands to kafka-python's producer) with ``acks=all``,
retries and delivery callbacks. ``on_done`` tells the caller when the broker acknowledged its
event (serving waits for it, bounded, before answering: ``serve.event_ack_timeout_s``). When the
broker is unreachable the buffer fills up to its bound, then further events are dropped and
counted, and the request that produced them is served all the same.

``kafka.security`` (TLS, SASL) is mapped once per client library (:func:`librdkafka_security`,
:func:`kafka_python_security`) and passed to every client: producers, the consumer, admin.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Protocol, Sequence

__all__ = [
    "EventSink",
    "KafkaEventSink",
    "SinkStats",
    "PartitionBatch",
    "RdKafkaEventSink",
    "make_event_sink",
    "KafkaEventSource",
    "KafkaLogReader",
    "OffsetHoles",
    "DeliveryFrontier",
    "reset_group_offsets",
    "group_lag",
    "librdkafka_security",
    "kafka_python_security",
]

log = logging.getLogger(__name__)

_PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF
_is_not_none = functools.partial(operator.is_not, None)


#: Called once with True when the broker acknowledged the event, False when it was not delivered
#: (in the sink's own thread: hand the result over, never block there).
OnDone = Callable[[bool], None]


class EventSink(Protocol):
    def send(self, topic: str, key: str | bytes | None, value: bytes,
             headers: Sequence[tuple[str, bytes]] | None = None, on_done: OnDone | None = None) -> bool: ...

    def flush(self, timeout_s: float = 10.0) -> bool: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


@dataclass
class SinkStats:
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    """Given to the producer but not acknowledged after its retries."""
    dropped: int = 0
    """Refused because the buffer was full (broker unreachable or too slow)."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


def librdkafka_security(security) -> dict[str, Any]:
    """``kafka.security`` (:class:`streamrec.config.KafkaSecurity`, or None) as librdkafka settings."""
    return _security(security, {"protocol": "security.protocol", "mechanism": "sasl.mechanism",
                                "username": "sasl.username", "password": "sasl.password", "ca": "ssl.ca.location"})


def kafka_python_security(security) -> dict[str, Any]:
    """``kafka.security`` as kafka-python keyword arguments (SCRAM takes the ``sasl_plain_*`` pair too)."""
    return _security(security, {"protocol": "security_protocol", "mechanism": "sasl_mechanism",
                                "username": "sasl_plain_username", "password": "sasl_plain_password",
                                "ca": "ssl_cafile"})


def _security(security, names: dict[str, str]) -> dict[str, Any]:
    if security is None or security.protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {names["protocol"]: security.protocol}
    if security.protocol == "SASL_SSL":
        out.update({names["mechanism"]: security.sasl_mechanism, names["username"]: security.username,
                    names["password"]: security.password.get_secret_value()})
    if security.ca_file:
        if not os.path.isfile(security.ca_file) or not os.access(security.ca_file, os.R_OK):
            raise ValueError(f"kafka.security.ca_file: {security.ca_file} is not a readable file on this node")
        out[names["ca"]] = security.ca_file
    return out


class KafkaEventSink:
    """Non-blocking, bounded, at-least-once producer (``acks=all``, retries, idempotent if asked)."""

    def __init__(self, bootstrap: str, *, buffer_events: int = 10_000, idempotent: bool = False,
                 client_id: str = "streamrec-sink", request_timeout_ms: int = 10_000,
                 linger_ms: int = 5, max_request_size: int = 16 * 1024 * 1024, producer_factory: Callable[[], Any] | None = None,
                 security=None):
        self.bootstrap = bootstrap
        self.stats = SinkStats()
        self._q: queue.Queue = queue.Queue(maxsize=buffer_events)
        self._lock = threading.Lock()
        self._inflight = 0
        self._stop = threading.Event()
        self._producer = None
        #: kafka-python's producer settings (security included)
        self.config = dict(
            bootstrap_servers=bootstrap.split(","), client_id=client_id, acks="all", retries=5,
            linger_ms=linger_ms, request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=max(30_000, request_timeout_ms + linger_ms + 1),
            max_block_ms=5_000, enable_idempotence=idempotent, max_request_size=max_request_size,
            **kafka_python_security(security),
        )
        self._factory = producer_factory or self._make_producer
        self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
        self._thread.start()

    def _make_producer(self):
        from kafka import KafkaProducer

        return KafkaProducer(**self.config)

    # -- caller side: never blocks ------------------------------------------------------------
    def send(self, topic: str, key: str | bytes | None, value: bytes,
             headers: Sequence[tuple[str, bytes]] | None = None, on_done: OnDone | None = None) -> bool:
        """Queue one event; False when the buffer is full (counted as dropped unless the caller
        retries; ``on_done`` is then never called)."""
        try:
            self._q.put_nowait((topic, _key_bytes(key), value, list(headers) if headers else None, on_done))
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
            return False
        with self._lock:
            self.stats.queued += 1
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is acknowledged or failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._q.empty() and self._inflight == 0
            if idle:
                return True
            time.sleep(0.005)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception:
                pass

    def metrics(self) -> dict[str, int]:
        with self._lock:
            d = self.stats.as_dict()
            d["buffered"] = self._q.qsize() + self._inflight
        return d

    # -- background: the only place that may wait on Kafka -----------------------------------
    def _done(self, ok: bool, on_done: OnDone | None):
        def cb(_):
            with self._lock:
                self._inflight -= 1
                if ok:
                    self.stats.delivered += 1
                else:
                    self.stats.failed += 1
            if on_done is not None:
                on_done(ok)
        return cb

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            if self._producer is None:
                try:
                    self._producer = self._factory()
                    backoff = 0.2
                except Exception as e:  # broker unreachable: keep events queued, try again
                    log.warning("event sink: cannot reach Kafka at %s (%s); retrying", self.bootstrap, e)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            topic, key, value, headers, on_done = item
            with self._lock:
                self._inflight += 1
            try:
                fut = self._producer.send(topic, key=key, value=value, headers=headers)
                fut.add_callback(self._done(True, on_done))
                fut.add_errback(self._done(False, on_done))
            except Exception as e:  # metadata timeout etc.: counted as failed
                log.warning("event sink: send to %s failed: %s", topic, e)
                self._done(False, on_done)(e)


class RdKafkaEventSink:
    """The same promise as :class:`KafkaEventSink` on librdkafka (confluent-kafka): serving's sink.

    ``send`` is one C call that queues the record (``BufferError`` when ``buffer_events`` are
    held: dropped and counted); batching, retries, ``acks=all`` and the sockets run in
    librdkafka's threads without the GIL, and a thread of ours waits in ``poll`` to count the
    deliveries. kafka-python's producer runs all of that in Python threads of the serving
    replica, where it cost CPU and GIL hand-offs on every request (docs/architecture.md, "Serving").
    """

    def __init__(self, bootstrap: str, *, buffer_events: int = 10_000, idempotent: bool = False,
                 client_id: str = "streamrec-sink", request_timeout_ms: int = 10_000,
                 linger_ms: int = 5, max_request_size: int = 16 * 1024 * 1024, delivery_timeout_ms: int = 30_000,
                 security=None):
        from confluent_kafka import Producer

        self.bootstrap = bootstrap
        self.stats = SinkStats()
        self._lock = threading.Lock()
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all",
            "enable.idempotence": idempotent, "linger.ms": linger_ms,
            "queue.buffering.max.messages": buffer_events, "message.max.bytes": max_request_size,
            "request.timeout.ms": request_timeout_ms, "message.timeout.ms": delivery_timeout_ms,
            "message.send.max.retries": 5, "logger": log, **librdkafka_security(security),
        })
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_callbacks, name="event-sink", daemon=True)
        self._thread.start()

    def send(self, topic: str, key: str | bytes | None, value: bytes,
             headers: Sequence[tuple[str, bytes]] | None = None, on_done: OnDone | None = None) -> bool:
        """Queue one event; False when the buffer is full (counted as dropped) or the record is
        refused (``on_done`` is then never called)."""
        delivered = self._delivered if on_done is None else functools.partial(self._delivered, on_done=on_done)
        try:
            self._producer.produce(topic, value, _key_bytes(key), headers=list(headers) if headers else None,
                                   on_delivery=delivered)
        except BufferError:
            with self._lock:
                self.stats.dropped += 1
            return False
        except Exception as e:  # e.g. larger than max_request_size: never raised into a request
            log.warning("event sink: %s refused: %s", topic, e)
            with self._lock:
                self.stats.queued += 1
                self.stats.failed += 1
            return False
        with self._lock:
            self.stats.queued += 1
        return True

    def _delivered(self, err, _msg, on_done: OnDone | None = None) -> None:
        with self._lock:
            if err is None:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
        if on_done is not None:
            on_done(err is None)

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)  # waits in C, GIL released

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is acknowledged or failed; False on timeout."""
        return self._producer.flush(timeout_s) == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is buffered within ``timeout_s``; the rest is purged and counted as failed."""
        if not self.flush(timeout_s):
            self._producer.purge()
            self._producer.flush(1.0)  # serves the purged records' callbacks
        self._stop.set()
        self._thread.join(timeout_s)

    def metrics(self) -> dict[str, int]:
        with self._lock:
            d = self.stats.as_dict()
        d["buffered"] = d["queued"] - d["delivered"] - d["failed"]  # not yet called back
        return d


def make_event_sink(kafka, client_id: str = "streamrec-sink", *, linger_ms: int = 5) -> EventSink:
    """The sink ``kafka.producer_client`` names, configured from :class:`~streamrec.config.KafkaSettings`.

    ``linger_ms``: how long the producer waits to batch; 0 for a caller that waits on the ack."""
    cls = RdKafkaEventSink if kafka.producer_client == "librdkafka" else KafkaEventSink
    return cls(kafka.bootstrap_servers, buffer_events=kafka.producer_buffer_events, idempotent=kafka.idempotent_producer,
               client_id=client_id, security=kafka.security, linger_ms=linger_ms)


class PartitionBatch(NamedTuple):
    """The records one poll got from one partition, in offset order, as parallel lists.

    Columns rather than a tuple a record: they are taken from librdkafka's messages in C (``map``
    over the Message methods), and the hot path hands them on whole."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]


class DeliveryFrontier:
    """Which of the records handed to a producer the broker acknowledged, as one number.

    Records are numbered in the order they were queued (:meth:`queued`); acknowledgements come
    back in any order (partitions, retries, topics). :meth:`confirmed_before` says whether every
    record numbered below a mark is acknowledged, so a consumer can commit the input offsets that
    were safe when the mark was taken without waiting on the producer (a flush per commit stopped
    the ingest loop for a broker round trip). Thread-safe: acknowledgements arrive on the
    producer's callback thread."""

    def __init__(self) -> None:
        self._next = 0
        self._open: set[int] = set()
        self._lock = threading.Lock()

    def queued(self) -> int:
        """Number the next record (call before handing it to the producer)."""
        with self._lock:
            seq = self._next
            self._next += 1
            self._open.add(seq)
        return seq

    def confirmed(self, seq: int) -> None:
        """The broker acknowledged record ``seq`` (or it failed for good: the producer's failure
        count says so, and the caller acts on it)."""
        with self._lock:
            self._open.discard(seq)

    @property
    def mark(self) -> int:
        """The records queued so far: every one numbered below this."""
        return self._next

    def confirmed_before(self, mark: int) -> bool:
        with self._lock:
            return min(self._open, default=mark) >= mark


class OffsetHoles:
    """Holds back a partition's records that come after a hole in its offsets, until the hole fills
    or ``wait_s`` has passed.

    A partition's records reach a consumer in offset order, and the offsets of a topic written
    without transactions or compaction (all of streamrec's) have no holes. The embedded Tansu
    broker can make a record visible before one appended concurrently with a lower offset (two
    producers on one partition): a consumer that fetched past that hole would never read the
    records in it, and ingest would commit past an impression it never saw. The consumer instead
    hands out the records before the hole, seeks back to its first offset and reads again; a hole
    that stays (transaction markers or compaction on a broker that has them) is accepted after
    ``wait_s``. ``wait_s`` 0 hands everything out as it comes (``kafka.hole_wait_s``).
    """

    def __init__(self, wait_s: float = 0.5):
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.wait_s = wait_s
        self._since: dict[Any, float] = {}  # partition -> when its hole was first seen
        self.counts = {"held": 0, "filled": 0, "accepted": 0}

    def admit(self, key, expected: int | None, offsets: Sequence[int], now: float) -> int:
        """How many of ``offsets`` (a partition's next records, increasing) to hand out now;
        ``expected``: the offset after the last record handed out (None: not known). When fewer
        than all, the caller reads the partition again from the offset after those."""
        n = len(offsets)
        if not n:
            return 0
        first = offsets[0]
        if expected is not None and first > expected and self.wait_s > 0:
            since = self._since.get(key)
            if since is None:
                self._since[key] = now
                self.counts["held"] += 1
                return 0
            if now - since < self.wait_s:
                return 0
            self.counts["accepted"] += 1
        if self._since.pop(key, None) is not None and (expected is None or first <= expected):
            self.counts["filled"] += 1
        if offsets[-1] - first == n - 1 or self.wait_s <= 0:  # no hole inside (the common case: O(1))
            return n
        return next(i for i in range(1, n) if offsets[i] != offsets[i - 1] + 1)

    def forget(self, keys: Iterable) -> None:
        for k in keys:
            self._since.pop(k, None)


def _tp_set(parts) -> set[tuple[str, int]]:
    return {(tp.topic, tp.partition) for tp in parts}


class KafkaEventSource:
    """A group consumer with manual commits, pause/resume, and a hook on partition revoke.

    Consumes through librdkafka (confluent-kafka): fetching and record parsing run in C threads
    outside the GIL instead of in the ingest's Python loop (docs/architecture.md).
    Producing: :class:`RdKafkaEventSink` or :class:`KafkaEventSink`.

    "Caught up" (for the join's watermark): a partition-EOF event, our position at the high
    watermark of the last fetch, or no record from it for ``quiet_caught_up_s`` of polling (see
    :meth:`progress`).
    """

    def __init__(self, bootstrap: str, topics: Sequence[str], group_id: str, *,
                 on_revoke: Callable[[set[tuple[str, int]]], None] | None = None,
                 on_assign: Callable[[set[tuple[str, int]]], None] | None = None,
                 session_timeout_ms: int = 10_000, max_poll_interval_ms: int = 300_000,
                 max_poll_records: int = 2_000, client_id: str = "streamrec-ingest",
                 auto_offset_reset: str = "earliest", security=None, quiet_caught_up_s: float = 5.0,
                 hole_wait_s: float = 0.5):
        from confluent_kafka import Consumer, Message

        self._message = Message  # its methods, mapped over a poll's messages in C
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": client_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset, "enable.partition.eof": True,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(1_000, session_timeout_ms // 4),
            "max.poll.interval.ms": max_poll_interval_ms,
            "fetch.wait.max.ms": 100, "max.partition.fetch.bytes": 4 * 1024 * 1024,
            # a partition whose prefetch queue is full waits this long before its next fetch
            # (librdkafka's default, 1 s, let a backlog's queue run dry between fetches: a quarter
            # of the ingest loop went to waiting in consume)
            "fetch.queue.backoff.ms": 10,
            "logger": log, **librdkafka_security(security),
        })
        self._max_records = max_poll_records
        self._reset = auto_offset_reset
        self._next: dict[tuple[str, int], int] = {}  # next offset to hand out, per owned partition
        self._eof: set[tuple[str, int]] = set()
        self._heard: dict[tuple[str, int], float] = {}  # monotonic time of each owned partition's last record (or assignment)
        self._quiet_s = quiet_caught_up_s
        self._held: list = []  # records a poll returned while paused, handed out after resume
        self.holes = OffsetHoles(hole_wait_s)
        self._paused = False
        self._on_revoke_cb, self._on_assign_cb = on_revoke, on_assign
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    # librdkafka calls these from inside consume(); it assigns/unassigns itself afterwards
    def _assigned(self, consumer, parts) -> None:
        # where each partition starts: its committed offset, else the reset point
        try:
            committed = consumer.committed(parts, timeout=10)
        except Exception as e:  # progress() then waits for the first record of that partition
            log.warning("kafka consumer: committed offsets unavailable on assign: %s", e)
            committed = []
        for tp in committed:
            offset = tp.offset
            if offset < 0:
                try:
                    lo, hi = consumer.get_watermark_offsets(tp, timeout=5)
                except Exception:
                    continue
                offset = lo if self._reset == "earliest" else hi
            self._next[(tp.topic, tp.partition)] = offset
        now = time.monotonic()
        for key in _tp_set(parts):
            self._heard[key] = now
        if self._on_assign_cb:
            self._on_assign_cb(_tp_set(parts))

    def _revoked(self, _consumer, parts) -> None:
        gone = _tp_set(parts)
        if self._on_revoke_cb:
            self._on_revoke_cb(gone)
        self.holes.forget(gone)
        for key in gone:
            self._next.pop(key, None)
            self._heard.pop(key, None)
            self._eof.discard(key)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]

    def poll(self, timeout_ms: int = 100, max_records: int | None = None) -> list[PartitionBatch]:
        msgs = self._consumer.consume(max_records or self._max_records, timeout_ms / 1000)
        if self._paused:
            self._held.extend(m for m in msgs if m.error() is None)
            return []
        if self._held:
            msgs, self._held = self._held + msgs, []
        if not msgs:
            return []
        msg_cls = self._message
        errors = list(map(msg_cls.error, msgs))
        at_end: set[tuple[str, int]] = set()
        if any(map(_is_not_none, errors)):  # (not errors.count(None): KafkaError's == breaks on None)
            msgs, at_end = self._drop_errors(msgs, errors)
            if not msgs:
                self._eof.update(at_end)
                return []
        topics = list(map(msg_cls.topic, msgs))
        parts = list(map(msg_cls.partition, msgs))
        offsets = list(map(msg_cls.offset, msgs))
        keys = list(map(msg_cls.key, msgs))
        values = list(map(msg_cls.value, msgs))
        # consume() returns each partition's messages in order, in runs: one batch a run
        tps = list(zip(topics, parts))
        starts = [0, *itertools.compress(range(1, len(tps)), map(operator.ne, tps, tps[1:])), len(tps)]
        out = []
        now = time.monotonic()
        reread: set[tuple[str, int]] = set()  # partitions read again from a hole: their later runs wait
        for a, b in zip(starts, starts[1:]):
            tp = tps[a]
            if tp in reread:
                continue
            run = offsets[a:b]
            n = self.holes.admit(tp, self._next.get(tp), run, now)
            if n < len(run) and self._seek(tp, run[n - 1] + 1 if n else self._next[tp]):
                reread.add(tp)
                b = a + n
                if not n:
                    continue
            self._heard[tp] = now
            self._next[tp] = offsets[b - 1] + 1
            self._eof.discard(tp)
            out.append(PartitionBatch(tp[0], tp[1], offsets[a:b], keys[a:b], values[a:b]))
        self._eof.update(at_end - reread)
        return out

    def _seek(self, tp: tuple[str, int], offset: int) -> bool:
        """Fetch ``tp`` again from ``offset`` (:class:`OffsetHoles`); False when the client refused."""
        from confluent_kafka import TopicPartition

        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], offset))
            return True
        except Exception as e:  # not fetching it (yet): hand the records out as they came
            log.warning("kafka consumer: cannot read %s/%d again from %d: %s", tp[0], tp[1], offset, e)
            return False

    @staticmethod
    def _drop_errors(msgs: list, errors: list) -> tuple[list, set[tuple[str, int]]]:
        """The messages that carry records, and the partitions whose last event here is an EOF.

        A fatal error raises; others are logged."""
        ends_with_eof: dict[tuple[str, int], bool] = {}
        for err, m in zip(errors, msgs):
            tp = (m.topic(), m.partition())
            if err is None:
                ends_with_eof[tp] = False
            elif err.code() == _PARTITION_EOF:
                ends_with_eof[tp] = True
            elif err.fatal():
                raise RuntimeError(f"kafka consumer: {err.str()}")
            else:
                log.warning("kafka consumer: %s", err.str())
        records = [m for m, err in zip(msgs, errors) if err is None]
        return records, {tp for tp, eof in ends_with_eof.items() if eof}

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit the given next-offsets (only for partitions this consumer still owns)."""
        from confluent_kafka import TopicPartition

        owned = self.assignment()
        payload = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        if payload:
            self._consumer.commit(offsets=payload, asynchronous=False)

    def pause(self) -> None:
        if not self._paused:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
            now = time.monotonic()  # silence while paused says nothing about a partition's end
            self._heard = dict.fromkeys(self._heard, now)

    def assignment(self) -> set[tuple[str, int]]:
        return _tp_set(self._consumer.assignment())

    def _high_watermarks(self, parts) -> dict[tuple[str, int], int]:
        """The high watermark of each of ``parts`` (owned TopicPartitions) as of its last fetch (no broker call)."""
        out = {}
        for tp in parts:
            try:
                _, hi = self._consumer.get_watermark_offsets(tp, cached=True)
            except Exception:
                continue
            if hi is not None and hi >= 0:
                out[(tp.topic, tp.partition)] = hi
        return out

    def progress(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """(owned partitions, those caught up: at the end of the partition as last fetched).

        A partition-EOF event says so on any broker; the position at the fetched high watermark
        says so too (the embedded Tansu reports the last batch's base offset as its high watermark,
        so librdkafka never raises EOF there). So does a partition that handed out no record for
        ``quiet_caught_up_s`` while this consumer kept polling unpaused: librdkafka fetches every
        owned partition, so one with records to give gives them within a fetch or two. Without
        that rule, a partition whose position or high watermark never became known (committed
        offsets unavailable during a rebalance, no fetch answered yet) would hold the join's
        watermark, and with it every pending impression, until its next record."""
        parts = self._consumer.assignment()
        owned = _tp_set(parts)
        done = self._eof & owned
        nxt = self._next
        for key, hi in self._high_watermarks(parts).items():
            pos = nxt.get(key)
            if pos is not None and pos >= hi:
                done.add(key)
        if not self._paused:
            quiet_since = time.monotonic() - self._quiet_s
            done.update(k for k in owned - done if self._heard.get(k, quiet_since + 1) <= quiet_since)
        return owned, done

    def lag(self) -> dict[str, int]:
        """Per ``topic/partition``: the high watermark from the last fetch minus our position."""
        hws = self._high_watermarks(self._consumer.assignment())
        return {f"{t}/{p}": max(0, hi - self._next.get((t, p), hi)) for (t, p), hi in hws.items()}

    def close(self) -> None:
        self._consumer.close()


class KafkaLogReader:
    """Reads one topic from positions it is given: every partition assigned to this one reader (no
    group rebalancing), positions committed under ``group_id`` only when asked (lag figures)."""

    def __init__(self, bootstrap: str, topic: str, group_id: str, *, client_id: str = "streamrec-reader",
                 max_fetch_bytes: int = 16 * 1024 * 1024, security=None, hole_wait_s: float = 0.5):
        from confluent_kafka import Consumer

        self.topic = topic
        self.holes = OffsetHoles(hole_wait_s)
        self._next: dict[int, int] = {}  # partition -> the offset after the last record handed out
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": client_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": False, "fetch.wait.max.ms": 100, "max.partition.fetch.bytes": max_fetch_bytes,
            "logger": log, **librdkafka_security(security),
        })

    def assign(self, start: dict[int, int] | None) -> dict[int, int] | None:
        """Read every partition from ``start`` (partition -> offset); partitions it does not name start
        at the group's committed offset, else at the beginning. The offsets used, or None while the
        topic does not exist."""
        from confluent_kafka import TopicPartition

        parts = self._partitions()
        if not parts:
            return None
        out = {p: o for p, o in (start or {}).items() if p in parts}
        missing = [TopicPartition(self.topic, p) for p in parts if p not in out]
        if missing:
            out.update({tp.partition: tp.offset for tp in self._consumer.committed(missing, timeout=10) if tp.offset >= 0})
        for p in parts:
            if p not in out:
                out[p] = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)[0]
        self._consumer.assign([TopicPartition(self.topic, p, out[p]) for p in parts])
        self._next = dict(out)
        self.holes.forget(parts)
        return out

    def _partitions(self) -> list[int]:
        """The topic's partitions; [] while it does not exist or its metadata is unavailable."""
        try:
            meta = self._consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        except Exception as e:
            log.warning("kafka reader %s: metadata unavailable: %s", self.topic, e)
            return []
        return [] if meta is None or meta.error is not None else sorted(meta.partitions)

    def unassign(self) -> None:
        self._consumer.unassign()
        self._next.clear()

    def offsets_for_time(self, ts_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose record was written at or after ``ts_ms`` (the end
        offset when none was); {} while the topic does not exist."""
        from confluent_kafka import TopicPartition

        parts = self._partitions()
        if not parts:
            return {}
        found = self._consumer.offsets_for_times([TopicPartition(self.topic, p, ts_ms) for p in parts], timeout=10)
        ends = self.high_watermarks(parts)
        return {tp.partition: tp.offset if tp.offset >= 0 else ends.get(tp.partition, 0) for tp in found}

    def read(self, max_records: int = 500, timeout_s: float = 0.2) -> list[tuple[int, int, bytes]]:
        """(partition, offset, value) of the next records, each partition's in offset order with no
        hole (:class:`OffsetHoles`); [] when none came within ``timeout_s``."""
        from confluent_kafka import TopicPartition

        out: list[tuple[int, int, bytes]] = []
        reread: set[int] = set()
        now = time.monotonic()
        for m in self._consumer.consume(max_records, timeout_s):
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"kafka reader {self.topic}: {err.str()}")
                log.warning("kafka reader %s: %s", self.topic, err.str())
                continue
            p, offset = m.partition(), m.offset()
            if p in reread:
                continue
            expected = self._next.get(p)
            if not self.holes.admit(p, expected, [offset], now):
                try:
                    self._consumer.seek(TopicPartition(self.topic, p, expected))
                    reread.add(p)
                    continue
                except Exception as e:  # not fetching it (yet): hand it out as it came
                    log.warning("kafka reader %s/%d: cannot read again from %d: %s", self.topic, p, expected, e)
            self._next[p] = offset + 1
            out.append((p, offset, m.value() or b""))
        return out

    def commit(self, position: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition

        if position:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in position.items()],
                                  asynchronous=False)

    def high_watermarks(self, parts: Iterable[int]) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        out = {}
        for p in parts:
            try:
                out[p] = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)[1]
            except Exception:
                continue
        return out

    def close(self) -> None:
        self._consumer.close()


def _admin_consumer(bootstrap: str, group_id: str, security=None):
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group_id, enable_auto_commit=False,
                         **kafka_python_security(security))


def reset_group_offsets(bootstrap: str, group_id: str, topics: Iterable[str], *,
                        to_timestamp_ms: int | None = None, to_offsets: dict[tuple[str, int], int] | None = None,
                        to_earliest: bool = False, security=None) -> dict[tuple[str, int], int]:
    """Replay: point a (stopped) consumer group at a timestamp, explicit offsets, or the start.

    The next ingest that joins the group re-reads from there and rebuilds its state
    (samples already trained are dropped downstream by ``event_id``).
    """
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    c = _admin_consumer(bootstrap, group_id, security)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or ())]
        target: dict[tuple[str, int], int] = {}
        if to_offsets is not None:
            target = dict(to_offsets)
        elif to_timestamp_ms is not None:
            found = c.offsets_for_times({tp: to_timestamp_ms for tp in tps})
            ends = c.end_offsets(tps)
            for tp in tps:
                hit = found.get(tp)
                target[(tp.topic, tp.partition)] = hit.offset if hit is not None else ends[tp]
        elif to_earliest:
            target = {(tp.topic, tp.partition): o for tp, o in c.beginning_offsets(tps).items()}
        else:
            raise ValueError("give to_timestamp_ms, to_offsets or to_earliest")
        c.assign(tps)
        c.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in target.items()})
        return target
    finally:
        c.close(autocommit=False)


def group_lag(bootstrap: str, group_id: str, topics: Iterable[str], security=None) -> dict[str, int]:
    """Committed-offset lag per ``topic/partition`` of a group, as seen from outside it.

    Uses the broker's end offsets (ListOffsets); note the embedded Tansu 0.6 reports the base
    offset of the last batch there, so this underestimates while producers batch.
    """
    from kafka import TopicPartition

    c = _admin_consumer(bootstrap, group_id, security)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or ())]
        ends = c.end_offsets(tps)
        return {f"{tp.topic}/{tp.partition}": max(0, ends[tp] - (c.committed(tp) or 0)) for tp in tps}
    finally:
        c.close(autocommit=False)
