"""Stream benchmark: events/s through one StreamIngest actor next to bare kafka-python and librdkafka loops.

    python -m bench.stream [--events 150000] [--repeats 3] [--soak-s 60] [--actors 1,2,3]

Prints one JSON line. Both sides read the same topics on the same embedded broker in the same
run, in ``--repeats`` interleaved pairs (the ratio is the median of the pairs'); rates are steady
state (first record to last, so the ~5 s group join is not counted). Then the same events through
1, 2 and 3 ingest actors in one group (``--actors``): events/s together and per actor (3
partitions a topic: two actors split them 2 + 1). ``--soak-s`` keeps a producer
running at a fixed rate and reports produce->sample latency per minute next to a bare consumer's
produce->receive latency (the broker's share), and the ingest actor's resident memory per minute
(the join state is bounded by the window, not by history).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid

import msgspec
import psutil
import ray
from kafka import KafkaConsumer, KafkaProducer

from actors.ingest import IngestGroup
from actors.sample_log import SampleLog
from cluster.broker import ensure_topics, loop_topics, start_embedded_broker, stop_broker
from streamrec.config import settings_from_args
from streamrec.events import Feedback, Impression, encode


def _settings(window_s: float, tag: str | None = None):
    """Bench settings on topics named by ``tag`` (new ones by default), with a new consumer group."""
    tag = tag or uuid.uuid4().hex[:6]
    return settings_from_args({
        "kafka": {"partitions": 3, "topics": {"impressions": f"b.imp.{tag}", "feedback": f"b.fb.{tag}",
                                              "dlq": f"b.dlq.{tag}", "samples": f"b.samples.{tag}"}},
        "ingest": {"group_id": f"bench-{uuid.uuid4().hex[:6]}", "reward_window_s": window_s, "max_poll_records": 5_000},
    }, env={})


def _events(n: int, start: int = 0, now: float | None = None):
    for i in range(start, start + n):
        items = tuple(f"item{(i * 7 + j) % 5000}" for j in range(10))
        imp = Impression(event_id=f"ev{i}", ts=now or time.time(), user_id=f"user{i % 1000}", items=items,
                         propensities=(0.1,) * 10, policy_version=1, context={"hour": i % 24})
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


def ingest_rate(bootstrap: str, s, total_imps: int, actors: int = 1) -> tuple[float, dict]:
    """Events/s of ``actors`` StreamIngest actors in one group, together, from the first records any
    of them got until the last were joined (as each actor times its batches, like the bare loops'
    first-to-last record); and the first actor's metrics."""
    group = IngestGroup(bootstrap=bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest,
                        name_prefix=f"bench-{s.ingest.group_id}")
    group.scale(actors)
    deadline = time.monotonic() + 600
    ms: list[dict] = [{"records": 0}]
    while time.monotonic() < deadline:
        ms = group.metrics()
        if sum(m["impressions"] for m in ms) >= total_imps:
            break
        time.sleep(0.25)
    busy = [m for m in ms if m["first_batch_at"] is not None]
    span = max(m["last_batch_at"] for m in busy) - min(m["first_batch_at"] for m in busy)
    rate = sum(m["records"] for m in ms) / max(span, 1e-9)
    group.stop()
    return rate, ms[0]


def latency_and_soak(bootstrap: str, window_s: float, rate_per_s: int, seconds: float) -> dict:
    s = _settings(window_s)
    t = s.kafka.topics
    ensure_topics(bootstrap, loop_topics(s.kafka))
    reader = SampleLog.open(bootstrap, s)  # the trainer's reader: latency is produce -> sample readable
    group = IngestGroup(bootstrap=bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest,
                        name_prefix=f"soak-{s.ingest.group_id}")
    group.scale(1)
    stop = threading.Event()

    th = threading.Thread(target=_produce_steadily, args=(bootstrap, t, rate_per_s, stop), daemon=True)
    bare_lat: list[tuple[float, float]] = []  # (receive time, produce->receive seconds) of a bare consumer
    peer = threading.Thread(target=_bare_latency, args=(bootstrap, t.impressions, stop, bare_lat), daemon=True)
    peer.start()
    time.sleep(6)  # let the groups form before the clock starts
    rss_start = group.metrics()[0]["rss_bytes"]
    th.start()
    lat = []
    rss_series = []  # the ingest actor's RSS every 60 s: flat once the id memory (retention) is full
    t_start = time.monotonic()
    t_end = t_start + seconds
    next_rss = t_start + 60
    while time.monotonic() < t_end:
        got = reader.take(100_000, timeout_s=0.2)
        now = time.time()
        lat.extend((now, now - x.ts) for x in got)
        if time.monotonic() >= next_rss:
            rss_series.append(round(group.metrics()[0]["rss_bytes"] / 2**20, 1))
            next_rss += 60
        time.sleep(0.05)
    stop.set()
    th.join()
    peer.join(10)
    m = group.metrics()[0]
    group.stop()
    wall0 = time.time() - (time.monotonic() - t_start)
    ours = [x for _, x in lat]
    return {"window_s": window_s, "soak_s": seconds, "soak_rate_events_per_s": rate_per_s * 4 // 3,
            "samples": len(lat), "latency_p50_s": _quantile(ours, 0.50), "latency_p99_s": _quantile(ours, 0.99),
            "latency_p50_beyond_window_s": _quantile(ours, 0.50) - window_s,
            "latency_p99_beyond_window_s": _quantile(ours, 0.99) - window_s,
            "latency_p50_every_60s_s": _per_minute(lat, wall0, 0.50),
            "bare_consumer_latency_p50_s": _quantile([x for _, x in bare_lat], 0.50),
            "bare_consumer_latency_p99_s": _quantile([x for _, x in bare_lat], 0.99),
            "bare_consumer_latency_p50_every_60s_s": _per_minute(bare_lat, wall0, 0.50),
            "rss_start_mb": rss_start / 2**20, "rss_end_mb": m["rss_bytes"] / 2**20, "rss_every_60s_mb": rss_series,
            "join_state_end": m["join_state"]}


def _produce_steadily(bootstrap: str, topics, rate_per_s: int, stop: threading.Event) -> None:
    """``rate_per_s`` impressions/s (and a third as much feedback), stamped with the wall clock, until ``stop``."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=2)
    i = 0
    while not stop.is_set():
        t0 = time.monotonic()
        for ev in _events(rate_per_s // 10, start=i, now=time.time()):
            p.send(topics.impressions if isinstance(ev, Impression) else topics.feedback, key=ev.user_id.encode(),
                   value=encode(ev))
        i += rate_per_s // 10
        p.flush()
        stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))
    p.close()


def broker_soak(broker, rate_per_s: int, seconds: float) -> dict:
    """The broker alone: the same steady producer and a bare consumer, no Ray and no ingest.

    Produce->receive latency per minute and the broker's resident memory per minute: what the
    ingest soak's latency is made of before any of streamrec's work."""
    s = _settings(0.5)
    t = s.kafka.topics
    ensure_topics(broker.bootstrap, {t.impressions: 3, t.feedback: 3})
    stop = threading.Event()
    lat: list[tuple[float, float]] = []
    peer = threading.Thread(target=_bare_latency, args=(broker.bootstrap, t.impressions, stop, lat), daemon=True)
    peer.start()
    time.sleep(6)
    prod = threading.Thread(target=_produce_steadily, args=(broker.bootstrap, t, rate_per_s, stop), daemon=True)
    wall0 = time.time()
    prod.start()
    rss = []
    for _ in range(int(seconds // 60)):
        time.sleep(60)
        rss.append(round(psutil.Process(broker.pid).memory_info().rss / 2**20, 1))
    time.sleep(seconds % 60)
    stop.set()
    prod.join()
    peer.join(10)
    return {"bench": "stream-broker-only", "soak_s": seconds, "soak_rate_events_per_s": rate_per_s * 4 // 3,
            "received": len(lat), "latency_p50_every_60s_s": _per_minute(lat, wall0, 0.50),
            "latency_p99_every_60s_s": _per_minute(lat, wall0, 0.99), "broker_rss_every_60s_mb": rss}


def _quantile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def _per_minute(timed: list[tuple[float, float]], wall0: float, p: float) -> list[float]:
    """The ``p`` quantile of each minute's values (``timed``: (wall time, value)) since ``wall0``."""
    minutes: dict[int, list[float]] = {}
    for t, x in timed:
        minutes.setdefault(int((t - wall0) // 60), []).append(x)
    return [round(_quantile(minutes[k], p), 3) for k in sorted(minutes) if k >= 0]


def _bare_latency(bootstrap: str, topic: str, stop: threading.Event, out: list) -> None:
    """The soak's latency peer: a bare librdkafka group consumer timing produce -> receive of each impression."""
    from confluent_kafka import Consumer

    ts_only = msgspec.json.Decoder(_Ts)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-lat-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "latest", "enable.auto.commit": False, "session.timeout.ms": 10_000,
                  "fetch.wait.max.ms": 10})
    c.subscribe([topic])
    while not stop.is_set():
        msgs = c.consume(5_000, 0.1)
        now = time.time()
        out.extend((now, now - ts_only.decode(m.value()).ts) for m in msgs if m.error() is None)
    c.close()


class _Ts(msgspec.Struct):
    ts: float


def bare_librdkafka_loop(bootstrap: str, s, total: int) -> float:
    """A second peer: a confluent-kafka (librdkafka) group consumer that only counts records.

    StreamIngest consumes with this client; this is the ceiling its decode, join and hand-off
    are measured against, next to the kafka-python loop the issue names."""
    from confluent_kafka import Consumer

    t = s.kafka.topics
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-rd-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 10_000,
                  "fetch.wait.max.ms": 100, "fetch.queue.backoff.ms": 10})
    c.subscribe([t.impressions, t.feedback])
    rate = _steady_rate(lambda: sum(1 for m in c.consume(2_000, 0.1) if m.error() is None), total)
    c.close()
    return rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=150_000, help="impressions to pre-produce (plus 1/3 feedback)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved bare/ingest pairs on the same topics; the ratio reported is their median")
    ap.add_argument("--soak-s", type=float, default=60.0, help="seconds of sustained traffic for latency and memory")
    ap.add_argument("--soak-rate", type=int, default=2_000, help="impressions/s during the soak")
    ap.add_argument("--actors", default="1,2,3",
                    help="ingest actors in one group for the scaling figures (events/s per actor at each count)")
    ap.add_argument("--broker-only", action="store_true",
                    help="only the soak's producer and a bare consumer on the broker (no Ray, no ingest)")
    args = ap.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    broker = start_embedded_broker()
    if args.broker_only:
        try:
            print(json.dumps(broker_soak(broker, args.soak_rate, args.soak_s)))
        finally:
            stop_broker(broker)
        return 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        tag = uuid.uuid4().hex[:6]
        s = _settings(window_s=0.5, tag=tag)
        ensure_topics(broker.bootstrap, loop_topics(s.kafka))
        t0 = time.perf_counter()
        total = _produce(broker.bootstrap, s, _events(args.events))
        produce_rate = total / (time.perf_counter() - t0)
        print(f"produced {total} events ({produce_rate:,.0f}/s)", file=sys.stderr)
        bares, bare_rds, ours, ratios = [], [], [], []
        for r in range(args.repeats):  # interleaved pairs: the VM's speed drifts between minutes
            bares.append(bare_loop(broker.bootstrap, s, total))
            bare_rds.append(bare_librdkafka_loop(broker.bootstrap, s, total))
            rate, m = ingest_rate(broker.bootstrap, _settings(window_s=0.5, tag=tag), args.events)
            ours.append(rate)
            ratios.append(rate / bares[-1])
            print(f"pair {r + 1}: bare kafka-python {bares[-1]:,.0f}, bare librdkafka {bare_rds[-1]:,.0f}, "
                  f"StreamIngest {rate:,.0f} events/s ({ratios[-1]:.2f}x)", file=sys.stderr)
        scaling = {}
        for n in (int(x) for x in args.actors.split(",") if x):
            rate, _ = ingest_rate(broker.bootstrap, _settings(window_s=0.5, tag=tag), args.events, actors=n)
            scaling[str(n)] = {"events_per_s": round(rate), "per_actor": round(rate / n)}
            print(f"{n} ingest actor(s): {rate:,.0f} events/s, {rate / n:,.0f} per actor", file=sys.stderr)
        soak = latency_and_soak(broker.bootstrap, 0.5, args.soak_rate, args.soak_s)
        med = statistics.median
        out = {"bench": "stream", "events": total, "repeats": args.repeats,
               "ingest_events_per_s": round(med(ours)), "bare_kafka_python_events_per_s": round(med(bares)),
               "ratio": round(med(ratios), 3), "ratio_per_pair": [round(x, 3) for x in ratios],
               "ingest_events_per_s_per_pair": [round(x) for x in ours],
               "bare_kafka_python_events_per_s_per_pair": [round(x) for x in bares],
               "bare_librdkafka_events_per_s": round(med(bare_rds)), "ratio_to_librdkafka": round(med(ours) / med(bare_rds), 3),
               "ingest_by_actors": scaling, "produce_events_per_s": round(produce_rate), "ingest_join_hit_rate": round(m["join_hit_rate"], 4),
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in soak.items()}}
        print(json.dumps(out))
    finally:
        ray.shutdown()
        stop_broker(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
