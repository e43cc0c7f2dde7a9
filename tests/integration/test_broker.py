"""The embedded broker over real TCP: produce, group consume, commit, resume, kcat, clean stop."""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cluster.broker import (
    BrokerError,
    connect_or_start,
    list_topics,
    start_embedded_broker,
    stop_broker,
    wait_for_kafka,
)
from streamrec.config import settings_from_args
from streamrec.runstate import pid_alive


def _produce(bootstrap, topic, values, key=b"k"):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    for v in values:
        p.send(topic, key=key, value=v)
    p.flush(10)
    p.close()


def _consume_group(bootstrap, topic, group, want, timeout=30.0, commit=True):
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, session_timeout_ms=10_000)
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for recs in c.poll(200, max_records=want - len(got)).values():
            got.extend(r.value for r in recs)
    if commit:
        c.commit()
    c.close()
    return got


def test_group_consumer_reads_commits_and_a_restart_resumes_after_the_commit(broker, topic):
    values = [f"v{i}".encode() for i in range(40)]
    _produce(broker.bootstrap, topic, values)
    group = f"g-{uuid.uuid4().hex[:6]}"
    first = _consume_group(broker.bootstrap, topic, group, 15)
    assert first == values[:15]
    rest = _consume_group(broker.bootstrap, topic, group, 25)
    assert rest == values[15:]  # resumed exactly after the committed offset
    m = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    assert sum(m.committed(TopicPartition(topic, p)) or 0 for p in range(3)) == 40  # all committed
    m.close()


def test_uncommitted_records_are_redelivered(broker, topic):
    _produce(broker.bootstrap, topic, [b"a", b"b", b"c"])
    group = f"g-{uuid.uuid4().hex[:6]}"
    assert _consume_group(broker.bootstrap, topic, group, 3, commit=False) == [b"a", b"b", b"c"]
    assert _consume_group(broker.bootstrap, topic, group, 3) == [b"a", b"b", b"c"]


def test_an_independent_client_reads_what_kafka_python_wrote(broker, topic, independent_client):
    values = [{"n": i, "who": "kafka-python"} for i in range(5)]
    _produce(broker.bootstrap, topic, [json.dumps(v).encode() for v in values])
    got = independent_client.read(topic, partitions=3)
    assert sorted(got, key=lambda v: v["n"]) == values


def test_kafka_python_reads_what_an_independent_client_wrote(broker, topic, independent_client):
    independent_client.write(topic, [("u1", {"n": 1}), ("u2", {"n": 2})])
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=5_000)
    got = sorted((json.loads(r.value) for r in c), key=lambda v: v["n"])
    c.close()
    assert got == [{"n": 1}, {"n": 2}]


def test_start_and_stop_leave_no_process(tmp_path):
    h = start_embedded_broker(log_dir=tmp_path)
    assert pid_alive(h.pid)
    assert isinstance(list_topics(h.bootstrap), list)
    stop_broker(h)
    assert not pid_alive(h.pid)


def test_connect_or_start_creates_the_topics_and_external_mode_starts_nothing(broker):
    s = settings_from_args({"kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 2,
                                      "topics": {"impressions": "x.imp", "feedback": "x.fb", "dlq": "x.dlq"}}}, env={})
    h = connect_or_start(s.kafka)
    assert h.embedded is False and h.pid is None
    assert {"x.imp", "x.fb", "x.dlq"} <= set(list_topics(broker.bootstrap))
    stop_broker(h)  # external: a no-op
    assert list_topics(broker.bootstrap)


def test_port_busy_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port 127.0.0.1:{port} is busy"):
            start_embedded_broker(port=port)


def test_unreachable_external_kafka_names_the_address_within_the_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        t0 = time.monotonic()
        with pytest.raises(BrokerError, match=f"Kafka at 127.0.0.1:{port} is unreachable"):
            wait_for_kafka(f"127.0.0.1:{port}", timeout_s=2)
        assert time.monotonic() - t0 < 15


def test_missing_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMREC_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="Tansu broker binary not found at"):
        start_embedded_broker()


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_each_event_sink_delivers_with_keys_headers_and_order(broker, topic, client):
    from streamrec.eventbus import make_event_sink

    s = settings_from_args({"kafka": {"bootstrap_servers": broker.bootstrap, "producer_client": client}}, env={})
    sink = make_event_sink(s.kafka)
    for i in range(20):
        assert sink.send(topic, "user7", f"v{i}".encode(), headers=[("streamrec.test", b"h")])
    assert sink.flush(10)
    assert sink.metrics() == {"queued": 20, "delivered": 20, "failed": 0, "dropped": 0, "buffered": 0}
    sink.close()
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5_000)
    recs = list(c)
    c.close()
    assert [r.value for r in recs] == [f"v{i}".encode() for i in range(20)]  # one key: one partition, in order
    assert {r.key for r in recs} == {b"user7"} and all(r.headers == [("streamrec.test", b"h")] for r in recs)


def test_a_partition_whose_position_never_became_known_counts_as_caught_up_once_quiet(broker, topic):
    """The join's watermark waits for partitions read to their end. One whose position is unknown
    (committed offsets unavailable when it was assigned) and that has nothing more to give must
    not hold it forever: quiet for ``quiet_caught_up_s`` of polling, it counts as caught up; not
    while the consumer is paused."""
    from streamrec.eventbus import KafkaEventSource

    _produce(broker.bootstrap, topic, [b"a", b"b", b"c"], key=b"one-partition")
    src = KafkaEventSource(broker.bootstrap, [topic], f"g-{uuid.uuid4().hex[:6]}", quiet_caught_up_s=1.5)
    try:
        got, deadline = 0, time.monotonic() + 30
        while got < 3 and time.monotonic() < deadline:
            got += sum(len(b.offsets) for b in src.poll(200))
        assert got == 3
        src.pause()
        # as after an assignment whose committed offsets did not come back: no position and no
        # end-of-partition event known (an empty partition may have sent one before the pause)
        src._next.clear()
        src._eof.clear()
        t = time.monotonic()
        while time.monotonic() - t < 2.0:
            src.poll(100)
        owned, done = src.progress()
        assert len(owned) == 3 and done == set()  # paused: silence proves nothing
        src.resume()
        t = time.monotonic()
        while time.monotonic() - t < 1.0:
            src.poll(100)
        # quiet for less than 1.5 s since the resume: caught up only where librdkafka said end of
        # partition after the resume (it may re-fetch a resumed partition to its end)
        done = src.progress()[1]
        assert done <= src._eof, (done, src._eof)
        while time.monotonic() - t < 2.0:
            src.poll(100)
        assert src.progress()[1] == owned
    finally:
        src.close()


def test_readers_tailing_a_partition_that_six_producers_write_read_every_record_once_in_order(broker, topic):
    """The embedded broker can make a record visible before one appended concurrently with a lower
    offset; a consumer that fetched past the hole would never read it (ingest would commit past an
    impression, the trainer past a samples record). Both readers wait for holes to fill
    (``OffsetHoles``): tailing one partition that six producers write for 8 s, each reads every
    offset once, in order."""
    import threading

    from confluent_kafka import Producer

    from streamrec.eventbus import KafkaEventSource, KafkaLogReader

    stop, sent = threading.Event(), []

    def produce(k: int) -> None:
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "acks": "all"})
        n = 0
        while not stop.is_set():
            p.produce(topic, b"%d-%d" % (k, n), partition=0)
            n += 1
            p.poll(0)
            if n % 20 == 0:
                p.flush(5)
            time.sleep(0.0005)
        assert p.flush(10) == 0
        sent.append(n)

    reader = KafkaLogReader(broker.bootstrap, topic, f"r-{uuid.uuid4().hex[:6]}")
    reader.assign({0: 0, 1: 0, 2: 0})
    source = KafkaEventSource(broker.bootstrap, [topic], f"s-{uuid.uuid4().hex[:6]}")
    got: dict[str, list[int]] = {"reader": [], "source": []}

    def tail(name, read) -> None:
        while not stop.is_set() or len(got[name]) < sum(sent) or len(sent) < 6:
            got[name].extend(read())
            if stop.is_set() and time.monotonic() > give_up:
                return

    give_up = time.monotonic() + 60
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(6)]
    threads += [threading.Thread(target=tail, args=("reader", lambda: [o for p, o, _ in reader.read(1000, 0.05)])),
                threading.Thread(target=tail, args=("source", lambda: [o for b in source.poll(50) for o in b.offsets]))]
    try:
        for th in threads:
            th.start()
        time.sleep(8)
        stop.set()
        for th in threads:
            th.join(90)
    finally:
        stop.set()
        reader.close()
        source.close()
    total = sum(sent)
    assert total > 5_000
    for name, offsets in got.items():
        holes = (reader if name == "reader" else source).holes.counts
        assert offsets == list(range(total)), (name, total, len(offsets), holes,
                                               sorted(set(range(total)) - set(offsets))[:10])
