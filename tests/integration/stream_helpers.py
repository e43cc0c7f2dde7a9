"""Helpers for stream tests: topics, producing impressions/feedback, reading the samples log."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaProducer

from actors.sample_log import SampleLog
from cluster.broker import ensure_topics, loop_topics
from streamrec.config import settings_from_args
from streamrec.events import Feedback, Impression, encode, encode_samples


def stream_settings(window_s: float = 2.0, partitions: int = 3):
    tag = uuid.uuid4().hex[:8]
    return settings_from_args({
        "kafka": {"partitions": partitions,
                  "topics": {"impressions": f"imp.{tag}", "feedback": f"fb.{tag}", "dlq": f"dlq.{tag}",
                             "samples": f"samples.{tag}"}},
        "ingest": {"group_id": f"ingest-{tag}", "reward_window_s": window_s},
    }, env={})


def create_topics(bootstrap: str, s) -> None:
    ensure_topics(bootstrap, loop_topics(s.kafka))


def make_events(n: int, click_every: int = 3, users: int = 50, prefix: str = "e"):
    imps, fbs = [], []
    for i in range(n):
        items = tuple(f"i{(i + j) % 97}" for j in range(5))
        imp = Impression(event_id=f"{prefix}{i}", ts=time.time(), user_id=f"u{i % users}", items=items,
                         propensities=(0.2,) * 5, policy_version=1)
        imps.append(imp)
        if i % click_every == 0:
            fbs.append(Feedback(event_id=imp.event_id, ts=time.time(), user_id=imp.user_id, item_id=items[1]))
    return imps, fbs


def produce(bootstrap: str, topic: str, events, raw: bool = False) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=64 * 1024,
                      max_request_size=8 * 1024 * 1024)
    for ev in events:
        if raw:
            key, value = ev
            p.send(topic, key=key, value=value)
        else:
            p.send(topic, key=ev.user_id.encode(), value=encode(ev))
    p.flush(60)
    p.close()


def write_samples(bootstrap: str, topic: str, samples: list, per_record: int = 500) -> None:
    """Samples into the samples log as ingest writes them (msgpack records; ids as plain str, as decoded)."""
    samples = [x._replace(items=tuple(map(str, x.items))) for x in samples]
    chunks = [samples[i:i + per_record] for i in range(0, len(samples), per_record)]
    produce(bootstrap, topic, [(None, encode_samples(c)) for c in chunks], raw=True)


def samples_reader(bootstrap: str, s) -> SampleLog:
    """A reader of the samples log, as the trainer opens it (deduplicating by event_id)."""
    return SampleLog.open(bootstrap, s)


def drain(reader: SampleLog, want: int, timeout_s: float = 120.0) -> list:
    """Samples taken from the log until ``want`` came or ``timeout_s`` passed."""
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(reader.take(50_000))
        if len(got) < want:
            time.sleep(0.5)
    return got
