"""Stream benchmark: events/s through one StreamIngest actor next to bare kafka-python and librdkafka loops.

    python -m bench.stream [--events 200000] [--soak-s 60]

Prints one JSON line. Both sides read the same topics on the same embedded broker in the same
run; rates are steady state (first record to last, so the ~5 s group join is not counted).
``--soak-s`` keeps a producer running at a fixed rate and reports the ingest actor's resident
memory at the start and the end (the join state is bounded by the window, not by history).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

import ray
from kafka import KafkaConsumer, KafkaProducer

from actors.ingest import IngestGroup
from actors.sample_buffer import SampleBuffer
from cluster.broker import ensure_topics, start_embedded_broker, stop_broker
from streamrec.config import settings_from_args
from streamrec.events import Feedback, Impression, encode


def _settings(window_s: float):
    tag = uuid.uuid4().hex[:6]
    return settings_from_args({
        "kafka": {"partitions": 3, "topics": {"impressions": f"b.imp.{tag}", "feedback": f"b.fb.{tag}",
                                              "dlq": f"b.dlq.{tag}"}},
        "ingest": {"group_id": f"bench-{tag}", "reward_window_s": window_s, "max_poll_records": 5_000},
    }, env={})


def _events(n: int, start: int = 0, now: float | None = None):
    for i in range(start, start + n):
        items = tuple(f"item{(i * 7 + j) % 5000}" for j in range(10))
        imp = Impression(event_id=f"ev{i}", ts=now or time.time(), user_id=f"user{i % 1000}", items=items,
                         propensities=(0.1,) * 10, policy_version="1", context={"hour": i % 24})
        yield imp
        if i % 3 == 0:
            yield Feedback(event_id=imp.event_id, ts=imp.ts, user_id=imp.user_id, item_id=items[i % 10])


def _produce(bootstrap: str, s, events) -> int:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=256 * 1024)
    t = s.kafka.topics
    n = 0
    for ev in events:
        p.send(t.impressions if isinstance(ev, Impression) else t.feedback, key=ev.user_id.encode(), value=encode(ev))
        n += 1
    p.flush(120)
    p.close()
    return n


def bare_loop(bootstrap: str, s, total: int) -> float:
    """The peer: a kafka-python group consumer that only counts records."""
    t = s.kafka.topics
    c = KafkaConsumer(t.impressions, t.feedback, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5_000,
                      fetch_max_wait_ms=100)
    rate = _steady_rate(lambda: sum(len(recs) for recs in c.poll(100).values()), total)
    c.commit()
    c.close()
    return rate


def _steady_rate(poll, total: int, timeout_s: float = 300.0) -> float:
    """Records/s of ``poll()`` (records it got) from its first record until ``total`` (the group join excluded)."""
    n, t0 = 0, None
    deadline = time.monotonic() + timeout_s
    while n < total and time.monotonic() < deadline:
        got = poll()
        if got and t0 is None:
            t0 = time.perf_counter()
        n += got
    return n / (time.perf_counter() - t0)


def ingest_rate(bootstrap: str, s, total_imps: int) -> tuple[float, dict]:
    buffer = SampleBuffer.remote(capacity=10_000_000)
    group = IngestGroup(bootstrap=bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest, buffer=buffer,
                        name_prefix=f"bench-{s.ingest.group_id}")
    group.scale(1)
    first = last = None
    n_first = 0
    deadline = time.monotonic() + 600
    m = {}
    while time.monotonic() < deadline:
        m = group.metrics()[0]
        now = time.perf_counter()
        if first is None and m["records"] > 0:
            first, n_first = now, m["records"]
        if m["impressions"] >= total_imps:
            last = now
            break
        time.sleep(0.25)
    rate = (m["records"] - n_first) / max(last - first, 1e-9)
    group.stop()
    return rate, m


def latency_and_soak(bootstrap: str, window_s: float, rate_per_s: int, seconds: float) -> dict:
    s = _settings(window_s)
    t = s.kafka.topics
    ensure_topics(bootstrap, {t.impressions: 3, t.feedback: 3, t.dlq: 1})
    buffer = SampleBuffer.remote(capacity=10_000_000)
    group = IngestGroup(bootstrap=bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest, buffer=buffer,
                        name_prefix=f"soak-{s.ingest.group_id}")
    group.scale(1)
    stop = threading.Event()

    def producer():
        p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=2)
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            for ev in _events(rate_per_s // 10, start=i, now=time.time()):
                p.send(t.impressions if isinstance(ev, Impression) else t.feedback, key=ev.user_id.encode(),
                       value=encode(ev))
            i += rate_per_s // 10
            p.flush()
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))
        p.close()

    th = threading.Thread(target=producer, daemon=True)
    time.sleep(6)  # let the group form before the clock starts
    rss_start = group.metrics()[0]["rss_bytes"]
    th.start()
    lat = []
    rss_series = []  # the ingest actor's RSS every 60 s: flat once the id memory (retention) is full
    t_start = time.monotonic()
    t_end = t_start + seconds
    next_rss = t_start + 60
    while time.monotonic() < t_end:
        got = ray.get(buffer.take.remote(100_000))
        now = time.time()
        lat.extend(now - x.ts for x in got)
        if time.monotonic() >= next_rss:
            rss_series.append(round(group.metrics()[0]["rss_bytes"] / 2**20, 1))
            next_rss += 60
        time.sleep(0.05)
    stop.set()
    th.join()
    m = group.metrics()[0]
    group.stop()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    return {"window_s": window_s, "soak_s": seconds, "soak_rate_events_per_s": rate_per_s * 4 // 3,
            "samples": len(lat), "latency_p50_s": q(0.50), "latency_p99_s": q(0.99),
            "latency_p50_beyond_window_s": q(0.50) - window_s, "latency_p99_beyond_window_s": q(0.99) - window_s,
            "rss_start_mb": rss_start / 2**20, "rss_end_mb": m["rss_bytes"] / 2**20, "rss_every_60s_mb": rss_series,
            "join_state_end": m["join_state"]}


def bare_librdkafka_loop(bootstrap: str, s, total: int) -> float:
    """A second peer: a confluent-kafka (librdkafka) group consumer that only counts records.

    StreamIngest consumes with this client; this is the ceiling its decode, join and hand-off
    are measured against, next to the kafka-python loop the issue names."""
    from confluent_kafka import Consumer

    t = s.kafka.topics
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-rd-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 10_000,
                  "fetch.wait.max.ms": 100})
    c.subscribe([t.impressions, t.feedback])
    rate = _steady_rate(lambda: sum(1 for m in c.consume(2_000, 0.1) if m.error() is None), total)
    c.close()
    return rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=150_000, help="impressions to pre-produce (plus 1/3 feedback)")
    ap.add_argument("--soak-s", type=float, default=60.0, help="seconds of sustained traffic for latency and memory")
    ap.add_argument("--soak-rate", type=int, default=2_000, help="impressions/s during the soak")
    args = ap.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    broker = start_embedded_broker()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        s = _settings(window_s=0.5)
        t = s.kafka.topics
        ensure_topics(broker.bootstrap, {t.impressions: 3, t.feedback: 3, t.dlq: 1})
        t0 = time.perf_counter()
        total = _produce(broker.bootstrap, s, _events(args.events))
        produce_rate = total / (time.perf_counter() - t0)
        print(f"produced {total} events ({produce_rate:,.0f}/s)", file=sys.stderr)
        bare = bare_loop(broker.bootstrap, s, total)
        print(f"bare kafka-python loop: {bare:,.0f} events/s", file=sys.stderr)
        bare_rd = bare_librdkafka_loop(broker.bootstrap, s, total)
        print(f"bare librdkafka loop: {bare_rd:,.0f} events/s", file=sys.stderr)
        ours, m = ingest_rate(broker.bootstrap, s, args.events)
        print(f"StreamIngest: {ours:,.0f} events/s", file=sys.stderr)
        soak = latency_and_soak(broker.bootstrap, 0.5, args.soak_rate, args.soak_s)
        out = {"bench": "stream", "events": total, "ingest_events_per_s": round(ours),
               "bare_kafka_python_events_per_s": round(bare), "ratio": round(ours / bare, 3),
               "bare_librdkafka_events_per_s": round(bare_rd), "ratio_to_librdkafka": round(ours / bare_rd, 3),
               "produce_events_per_s": round(produce_rate), "ingest_join_hit_rate": round(m["join_hit_rate"], 4),
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in soak.items()}}
        print(json.dumps(out))
    finally:
        ray.shutdown()
        stop_broker(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
