"""The Kafka boundary without a network: send never blocks, a full buffer drops and counts; a hole in a
partition's offsets holds back what comes after it; input offsets wait for the acknowledgement of
what was queued before them."""

import threading
import time

import pytest

from streamrec.eventbus import DeliveryFrontier, KafkaEventSink, OffsetHoles, RdKafkaEventSink


class FakeFuture:
    def __init__(self):
        self.cbs = []

    def add_callback(self, cb):
        cb(None)
        return self

    def add_errback(self, eb):
        return self


class FakeProducer:
    def __init__(self, gate: threading.Event | None = None):
        self.sent = []
        self.gate = gate

    def send(self, topic, key=None, value=None, headers=None):
        if self.gate is not None:
            self.gate.wait()
        self.sent.append((topic, key, value))
        return FakeFuture()

    def close(self, timeout=None):
        pass


def test_events_are_delivered_in_order_with_keys():
    prod = FakeProducer()
    sink = KafkaEventSink("x:1", producer_factory=lambda: prod)
    for i in range(5):
        assert sink.send("t", f"u{i}", b"v%d" % i)
    assert sink.flush(5)
    assert prod.sent == [("t", f"u{i}".encode(), b"v%d" % i) for i in range(5)]
    assert sink.metrics()["delivered"] == 5
    sink.close()


def _kafka_python_sink_without_broker(bound):
    def unreachable():
        raise ConnectionError("no broker")

    return KafkaEventSink("x:1", buffer_events=bound, producer_factory=unreachable)


def _librdkafka_sink_without_broker(bound):
    return RdKafkaEventSink("127.0.0.1:1", buffer_events=bound)  # nothing listens on port 1


@pytest.mark.parametrize("make", [_kafka_python_sink_without_broker, _librdkafka_sink_without_broker])
def test_unreachable_broker_fills_the_bound_then_drops_without_blocking(make):
    sink = make(3)
    t0 = time.monotonic()
    results = [sink.send("t", "u", b"v") for _ in range(10)]
    assert time.monotonic() - t0 < 0.5  # never waits on Kafka
    assert results == [True] * 3 + [False] * 7
    m = sink.metrics()
    assert m["dropped"] == 7 and m["buffered"] == 3
    assert not sink.flush(0.2)
    sink._stop.set()


def test_the_librdkafka_sink_counts_what_it_could_not_deliver_by_close_as_failed():
    sink = _librdkafka_sink_without_broker(3)
    assert all(sink.send("t", "u", b"v") for _ in range(3))
    sink.close(0.2)
    assert sink.metrics() == {"queued": 3, "delivered": 0, "failed": 3, "dropped": 0, "buffered": 0}


def test_each_event_reports_its_own_delivery_once():
    prod = FakeProducer()
    sink = KafkaEventSink("x:1", producer_factory=lambda: prod)
    done = []
    assert sink.send("t", "u", b"a", on_done=lambda ok: done.append(("a", ok)))
    assert sink.send("t", "u", b"b")  # no callback asked for
    assert sink.send("t", "u", b"c", on_done=lambda ok: done.append(("c", ok)))
    assert sink.flush(5)
    assert done == [("a", True), ("c", True)]
    sink.close()


def test_an_event_the_librdkafka_sink_could_not_deliver_reports_false():
    sink = _librdkafka_sink_without_broker(3)
    done = []
    assert sink.send("t", "u", b"v", on_done=done.append)
    sink.close(0.2)
    assert done == [False]


def test_a_dropped_event_never_reports():
    sink = _librdkafka_sink_without_broker(1)
    done = []
    assert sink.send("t", "u", b"v")
    assert not sink.send("t", "u", b"w", on_done=done.append)
    sink.close(0.2)
    assert done == []


# -- OffsetHoles: what a consumer hands out when a partition's offsets have a hole -------------------------------
@pytest.mark.parametrize("expected, offsets, handed", [
    (None, [7, 8, 9], 3),   # position not known: everything
    (7, [7, 8, 9], 3),      # contiguous from the position
    (7, [5, 6, 7], 3),      # a redelivery before the position: handed out, not held
    (7, [7, 8, 12, 13], 2), # a hole inside: the records before it
    (None, [3, 5], 1),      # a hole inside, position not known
    (7, [9, 10], 0),        # a hole before the first record: none yet
    (7, [], 0),
])
def test_offset_holes_hand_out_the_records_before_a_hole(expected, offsets, handed):
    assert OffsetHoles(0.5).admit("p", expected, offsets, now=0.0) == handed


def test_a_hole_that_fills_is_counted_and_one_that_stays_is_read_past_after_wait_s():
    h = OffsetHoles(0.5)
    assert h.admit("p", 10, [12, 13], now=100.0) == 0      # held
    assert h.admit("p", 10, [12, 13], now=100.4) == 0      # still within wait_s
    assert h.admit("p", 10, [10, 11, 12, 13], now=100.45) == 4  # the hole filled
    assert h.counts == {"held": 1, "filled": 1, "accepted": 0}
    assert h.admit("q", 4, [6], now=200.0) == 0
    assert h.admit("q", 4, [6, 7], now=200.5) == 2           # never filled: read past it
    assert h.counts == {"held": 2, "filled": 1, "accepted": 1}
    assert h.admit("q", 8, [9], now=300.0) == 0              # a later hole waits afresh


def test_offset_holes_off_hands_out_everything_and_forget_drops_a_partitions_wait():
    assert OffsetHoles(0).admit("p", 3, [5, 9], now=0.0) == 2
    h = OffsetHoles(0.5)
    assert h.admit("p", 3, [5], now=0.0) == 0
    h.forget(["p"])  # revoked: its next owner starts over
    assert h.admit("p", 3, [5], now=10.0) == 0 and h.counts["held"] == 2


@pytest.mark.parametrize("wait_s", [-1, float("nan")])
def test_offset_holes_refuse_a_bad_wait(wait_s):
    with pytest.raises(ValueError, match="wait_s must be >= 0"):
        OffsetHoles(wait_s)


# -- DeliveryFrontier: commit input offsets once what was queued before them is acknowledged -----------------------
def test_the_delivery_frontier_waits_for_every_record_below_the_mark_whatever_order_acks_come_in():
    f = DeliveryFrontier()
    assert f.confirmed_before(f.mark)  # nothing queued: nothing to wait for
    seqs = [f.queued() for _ in range(4)]
    assert seqs == [0, 1, 2, 3]
    mark = f.mark
    assert mark == 4 and not f.confirmed_before(mark)
    later = f.queued()  # queued after the mark: not waited for
    for seq in (3, 1, 2):
        f.confirmed(seq)
        assert not f.confirmed_before(mark)  # record 0 is still out
    assert f.confirmed_before(1) is False and f.confirmed_before(0)
    f.confirmed(0)
    assert f.confirmed_before(mark) and not f.confirmed_before(f.mark)
    f.confirmed(later)
    f.confirmed(later)  # a repeated callback changes nothing
    assert f.confirmed_before(f.mark)


def test_the_delivery_frontier_takes_acknowledgements_from_another_thread():
    f = DeliveryFrontier()
    seqs = [f.queued() for _ in range(10_000)]
    mark = f.mark
    workers = [threading.Thread(target=lambda part=seqs[i::4]: [f.confirmed(s) for s in part]) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert f.confirmed_before(mark)
