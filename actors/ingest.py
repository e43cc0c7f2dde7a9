"""StreamIngest: Ray actors in one consumer group turning the click stream into training samples.

One actor's loop, top to bottom (a background thread, so ``metrics``/``stop`` stay callable)::

    poll impressions + feedback  ->  decode (bad bytes -> streamrec.dlq with headers)
      -> RewardJoiner (window, late, orphans)  ->  due samples -> the samples topic (msgpack records)
      -> commit the offsets the joiner says are safe, once the broker acknowledged the samples and
         dead letters written before them (checked each turn: the loop never waits on the broker)

Offsets are committed only after what they produced is in the log, so a crash replays what was
not; the trainer's reader drops the replayed ``event_id``s it already took. The samples topic is
the durable hand-off to the trainer (docs/architecture.md, "From ingest to trainer"): ingest never
waits for training. On partition revoke, the actor commits what is safe and forgets the revoked
partitions' state.
"""

from __future__ import annotations

import functools
import gc
import logging
import operator
import os
import threading
import time
from typing import Any

import ray

from actors.registry import INGEST_PREFIX
from streamrec.eventbus import DeliveryFrontier, KafkaEventSource, RdKafkaEventSink
from streamrec.events import dead_letter_headers, decode_batch, encode_samples
from streamrec.join import RewardJoiner, Watermark
from streamrec.rewards import RewardTable, is_positive
from streamrec.telemetry import Telemetry

__all__ = ["StreamIngest", "IngestGroup", "SAMPLES_PER_RECORD", "sample_records"]

log = logging.getLogger(__name__)
_event_ts = operator.attrgetter("ts")
SAMPLES_PER_RECORD = 500
"""Samples in one record of the samples topic (a few hundred KB: well under the broker's limits)."""
MAX_RECORD_BYTES = 4 * 1024 * 1024
"""A record that would be larger is split (:func:`sample_records`)."""


def sample_records(samples: list, per_record: int = SAMPLES_PER_RECORD, max_bytes: int = MAX_RECORD_BYTES) -> list[bytes]:
    """The samples as records of the samples topic: ``per_record`` at a time, each halved while it
    encodes to more than ``max_bytes`` (samples carry their impressions' context and features, each
    up to ``kafka.max_event_bytes``; the producer refuses records over 16 MB)."""
    out: list[bytes] = []

    def add(chunk: list) -> None:
        blob = encode_samples(chunk)
        if len(blob) > max_bytes and len(chunk) > 1:
            add(chunk[:len(chunk) // 2])
            add(chunk[len(chunk) // 2:])
        else:
            out.append(blob)

    for i in range(0, len(samples), per_record):
        add(samples[i:i + per_record])
    return out


def _confirmed(frontier: DeliveryFrontier, seq: int, _ok: bool) -> None:
    """The producer's callback for one record (a failure is counted by the sink, acted on at commit)."""
    frontier.confirmed(seq)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class NotDurable(RuntimeError):
    """Samples or dead letters handed to the producer were not acknowledged: the actor restarts
    and replays from its last commit."""


@ray.remote(num_cpus=0.25, max_restarts=-1, max_concurrency=4)
class StreamIngest:
    def __init__(self, *, bootstrap: str, impressions_topic: str, feedback_topic: str, dlq_topic: str,
                 samples_topic: str, group_id: str, profile_store=None, reward_window_s: float = 30.0,
                 max_event_bytes: int = 1_000_000, max_poll_records: int = 2_000,
                 session_timeout_ms: int = 10_000, max_poll_interval_ms: int = 300_000,
                 commit_interval_s: float = 0.5, name: str = "ingest",
                 security=None, rewards: RewardTable | None = None, hole_wait_s: float = 0.5,
                 gc_interval_s: float = 10.0):
        self.name = name
        self.topics = {impressions_topic: "impression", feedback_topic: "feedback"}
        self.dlq_topic, self.samples_topic = dlq_topic, samples_topic
        self.profile_store = profile_store
        self.max_event_bytes = max_event_bytes
        self.commit_interval_s = commit_interval_s
        self.joiner = RewardJoiner(reward_window_s, rewards=rewards)
        self.watermark = Watermark()
        self.counts = {"records": 0, "impressions": 0, "feedback": 0, "dlq": 0, "handoffs": 0,
                       "sample_records": 0, "commits": 0, "rebalances": 0}
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._rss_start = _rss_bytes()
        self._lag: dict[str, int] = {}
        self._error: str | None = None
        self._profile_refs: list = []
        self._failed = 0  # the sink's failed deliveries already acted on
        self._delivered = DeliveryFrontier()  # samples and dead letters handed to the producer
        self._to_commit: tuple[dict, int] | None = None  # offsets waiting for the records queued before them
        self._not_durable: str | None = None  # set in a rebalance callback: the loop restarts the actor
        self._behind: set = set()  # owned partitions not read to their end, as of the last loop turn
        self._watermark_lag_s = 0.0  # wall clock minus the join's watermark, as of the last loop turn
        self._first_batch_at: float | None = None  # wall clock when the first records came, and when the last were joined
        self._last_batch_at: float | None = None
        self.telemetry, self._exported = Telemetry(), {}
        # the samples and the dead letters: one librdkafka producer (C threads), acknowledged before each commit
        self.out = RdKafkaEventSink(bootstrap, client_id=f"{name}-out", buffer_events=100_000, linger_ms=5,
                                    security=security)
        self.source = KafkaEventSource(
            bootstrap, list(self.topics), group_id, on_revoke=self._on_revoke,
            session_timeout_ms=session_timeout_ms, max_poll_interval_ms=max_poll_interval_ms,
            max_poll_records=max_poll_records, client_id=name, security=security, hole_wait_s=hole_wait_s,
        )
        # The loop allocates a few GC-tracked objects per event (tuples, lists) and frees them by
        # reference counting; it creates no cycles. The automatic collector would scan them anyway,
        # about once per 700 allocations (a tenth of the loop's time even at a 50,000 threshold).
        # Off in this process, with a full collection every ``gc_interval_s`` instead: what cycles
        # Ray's or Kafka's client code leave are still freed, and memory stays flat over long runs
        # (docs/architecture.md, "The click stream").
        gc.freeze()
        gc.disable()
        self.gc_interval_s = gc_interval_s
        self._gc = {"collections": 0, "last_pause_s": 0.0, "max_pause_s": 0.0}
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._thread.start()

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        last_commit = last_gc = time.monotonic()
        try:
            while not self._stop.is_set():
                records = self.source.poll(timeout_ms=100)
                if self._not_durable is not None:
                    raise NotDurable(self._not_durable)
                if records:
                    self._process(records)
                owned, caught_up = self.source.progress()
                wall = time.time()
                wm = self.watermark.value(wall, owned, caught_up)
                self._behind, self._watermark_lag_s = owned - caught_up, wall - wm
                token, samples = self.joiner.due(wm)
                if samples:
                    self._handoff(token, samples)
                now = time.monotonic()
                if now - last_commit >= self.commit_interval_s:
                    if self._to_commit is None:
                        self._to_commit = self._snapshot()
                    self._lag = self.source.lag()
                    self._export()
                    last_commit = now
                if self._to_commit is not None:
                    self._commit_when_durable()
                if now - last_gc >= self.gc_interval_s:
                    self._collect()
                    last_gc = now
            self._commit()
        except Exception as e:
            self._error = f"{type(e).__name__}: {e}"
            log.exception("ingest loop failed; exiting so Ray restarts this actor")
        finally:
            try:
                self.source.close()
            finally:
                self.out.close(5)
        if self._error is not None:
            os._exit(1)  # crash-restart: a fresh consumer replays from the last commit

    def _process(self, batches) -> None:
        """Decode, dead-letter and join one poll's records, a partition batch at a time."""
        if self._first_batch_at is None:
            self._first_batch_at = time.time()
        profile_events = []
        joiner, topics, max_bytes = self.joiner, self.topics, self.max_event_bytes
        n_rec = n_imp = n_fb = 0
        for topic, part, offsets, keys, values in batches:
            kind = topics[topic]  # the consumer subscribes to these two topics only
            n_rec += len(offsets)
            events, bad = decode_batch(values, kind, max_bytes=max_bytes)
            if bad:
                for i in bad:
                    self._dead_letter(events[i], topic, part, offsets[i], keys[i], values[i])
                good = sorted(set(range(len(events))) - set(bad))
                offsets, events = [offsets[i] for i in good], [events[i] for i in good]
                if not events:
                    continue
            if kind == "impression":
                joiner.add_impressions(topic, part, offsets, events)
                n_imp += len(events)
            else:
                joiner.add_feedbacks(topic, part, offsets, events)
                n_fb += len(events)
                if self.profile_store is not None:
                    # a profile pools what the user liked: dislikes and skips do not pull it toward the item
                    worth = joiner.rewards.reward
                    profile_events.extend([(ev.user_id, ev.item_id, ev.ts) for ev in events
                                           if is_positive(worth(ev.type, ev.value))])
            self.watermark.observe((topic, part), max(map(_event_ts, events)))
        self._last_batch_at = time.time()
        self.counts["records"] += n_rec
        self.counts["impressions"] += n_imp
        self.counts["feedback"] += n_fb
        if profile_events:
            # bounded fire-and-forget: at most two batches in flight
            if len(self._profile_refs) >= 2:
                _, self._profile_refs = ray.wait(self._profile_refs, num_returns=1, timeout=5)
            self._profile_refs.append(self.profile_store.record.remote(profile_events))

    def _collect(self) -> None:
        """The full cyclic collection the automatic collector would have run, timed."""
        t = time.perf_counter()
        gc.collect()
        pause = time.perf_counter() - t
        g = self._gc
        g["collections"] += 1
        g["last_pause_s"], g["max_pause_s"] = pause, max(g["max_pause_s"], pause)

    _EXPORTED = {"records": "streamrec_ingest_records", "samples": "streamrec_ingest_samples",
                 "dlq": "streamrec_ingest_dead_letters", "late": "streamrec_ingest_late_feedback",
                 "orphans": "streamrec_ingest_orphan_feedback"}

    def _export(self) -> None:
        """Counts since the last export and the lag, for the cluster-wide metrics."""
        s = self.joiner.stats
        now = {"records": self.counts["records"], "samples": s.samples, "dlq": self.counts["dlq"],
               "late": s.late, "orphans": s.orphans}
        self.telemetry.add_counts(self._EXPORTED, now, self._exported, actor=self.name)
        for tp, lag in self._lag.items():
            self.telemetry.set("streamrec_ingest_lag", lag, partition=tp)
        self.telemetry.set("streamrec_join_hit_rate", s.join_hit_rate, actor=self.name)

    def _dead_letter(self, error, topic: str, part: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        headers = dead_letter_headers(error, topic, part, offset)
        self._send(self.dlq_topic, key, value or b"", headers)
        self.joiner.skip((topic, part, offset))
        self.counts["dlq"] += 1

    def _send(self, topic: str, key: bytes | None, value: bytes, headers=None) -> None:
        confirmed = functools.partial(_confirmed, self._delivered, self._delivered.queued())
        while not self.out.send(topic, key, value, headers=headers, on_done=confirmed):
            self._check_delivery()  # refused outright (counted as failed): replay, do not retry forever
            if not self.out.flush(1.0) and self._stop.is_set():
                raise RuntimeError(f"stopping with {topic} records the broker has not taken")

    def _handoff(self, token, samples: list) -> None:
        """Write due samples to the samples topic (msgpack, in C) and let the joiner count their
        offsets as done: none of them is committed before the broker acknowledged the records
        queued up to then (:meth:`_commit_when_durable`)."""
        for blob in sample_records(samples):
            self._send(self.samples_topic, None, blob)
            self.counts["sample_records"] += 1
        self.joiner.ack(token)
        self.counts["handoffs"] += 1

    def _snapshot(self) -> tuple[dict, int] | None:
        """The offsets safe to commit once the records queued so far are acknowledged, and how many
        those are."""
        offsets = self.joiner.commit_offsets()
        return (offsets, self._delivered.mark) if offsets else None

    def _check_delivery(self) -> None:
        failed = self.out.metrics()["failed"]
        if failed > self._failed:
            self._failed = failed
            raise NotDurable(f"{failed} samples or dead-letter records failed delivery: replaying from the last commit")

    def _commit_when_durable(self) -> None:
        """Commit the pending snapshot once the broker acknowledged every record queued before it;
        until then, return at once (the producer's callbacks arrive while the loop goes on)."""
        offsets, queued_before = self._to_commit
        if not self._delivered.confirmed_before(queued_before):
            return
        self._check_delivery()  # after: the sink counts a failure before its callback confirms the record
        self._to_commit = None
        self.source.commit(offsets)
        self.counts["commits"] += 1

    def _commit(self) -> None:
        """Commit the offsets whose samples and dead letters the broker acknowledged, waiting for
        the producer (on revoke and on stop).

        A delivery that failed raises: the actor restarts and replays from the last commit (the
        trainer's reader drops the samples it already took)."""
        self._to_commit = None
        offsets = self.joiner.commit_offsets()
        if not offsets:
            return
        if not self.out.flush(30):
            raise NotDurable("samples or dead letters not acknowledged within 30 s: replaying from the last commit")
        self._check_delivery()
        self.source.commit(offsets)
        self.counts["commits"] += 1

    def _on_revoke(self, revoked: set[tuple[str, int]]) -> None:
        self.counts["rebalances"] += 1
        try:
            self._commit()
        except NotDurable as e:
            # samples this process emitted may be missing from the log while its joiner remembers
            # them as emitted (a replay here would skip them): only a fresh actor writes them again
            self._not_durable = str(e)
        except Exception as e:  # the group moved on; the new owner replays from the last commit
            log.warning("commit on revoke failed: %s", e)
        self.joiner.drop_partitions(revoked)
        self.watermark.forget(revoked)

    # -- control ------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 30.0) -> dict:
        """Commit what is safe, leave the group, end the loop (pending impressions replay elsewhere)."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        s = self.joiner.stats
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return {
            "name": self.name,
            **self.counts,
            "events_per_s": self.counts["records"] / elapsed,
            "first_batch_at": self._first_batch_at, "last_batch_at": self._last_batch_at,
            "samples": s.samples, "joined": s.joined, "late": s.late, "orphans": s.orphans,
            "off_slate": s.off_slate, "duplicates": s.duplicates, "join_hit_rate": s.join_hit_rate,
            "pending": self.joiner.pending, "join_state": self.joiner.state_size,
            "behind": sorted(f"{t}/{p}" for t, p in self._behind), "watermark_lag_s": self._watermark_lag_s,
            "lag": dict(self._lag), "offset_holes": dict(self.source.holes.counts), "out_sink": self.out.metrics(),
            "rss_bytes": _rss_bytes(), "rss_start_bytes": self._rss_start, "gc": dict(self._gc),
            "alive": self._thread.is_alive(), "error": self._error,
        }


class IngestGroup:
    """Driver-side handle on N StreamIngest actors in one consumer group; ``scale`` changes N (by
    hand, or by an :class:`actors.ingest_scaling.LagController` set as ``controller``)."""

    def __init__(self, *, bootstrap: str, kafka_settings, ingest_settings, profile_store=None,
                 name_prefix: str = INGEST_PREFIX, rewards: RewardTable | None = None):
        self.kwargs = dict(
            bootstrap=bootstrap, impressions_topic=kafka_settings.topics.impressions,
            feedback_topic=kafka_settings.topics.feedback, dlq_topic=kafka_settings.topics.dlq,
            samples_topic=kafka_settings.topics.samples, group_id=ingest_settings.group_id, profile_store=profile_store,
            reward_window_s=ingest_settings.reward_window_s, max_event_bytes=kafka_settings.max_event_bytes,
            max_poll_records=ingest_settings.max_poll_records, session_timeout_ms=ingest_settings.session_timeout_ms,
            max_poll_interval_ms=ingest_settings.max_poll_interval_ms, security=kafka_settings.security,
            rewards=rewards, hole_wait_s=kafka_settings.hole_wait_s,
        )
        self.name_prefix = name_prefix
        self.actors: list = []
        self._n = 0
        self.controller = None

    def scale(self, n: int) -> int:
        if n < 0:
            raise ValueError(f"ingest parallelism must be >= 0, got {n}")
        while len(self.actors) < n:
            name = f"{self.name_prefix}-{self._n}"
            self._n += 1
            self.actors.append(StreamIngest.options(name=name).remote(name=name, **self.kwargs))
        while len(self.actors) > n:
            a = self.actors.pop()
            try:
                ray.get(a.stop.remote(), timeout=60)
            finally:
                ray.kill(a, no_restart=True)
        return len(self.actors)

    def metrics(self) -> list[dict]:
        return ray.get([a.metrics.remote() for a in self.actors], timeout=30)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.scale(0)
