"""Reward join: impressions + feedback -> TrainingSamples, with the offsets safe to commit.

Pure logic, no Kafka: the ingest actor feeds it decoded records with their (topic, partition,
offset) and the clock, and asks which samples are due and which offsets may be committed.

* Windows are in event time: an impression becomes a sample (reward 0 when no feedback came)
  once the *watermark* passes ``impression.ts + window_s``. The ingest actor's watermark is the
  wall clock while it is caught up, and the oldest partition's newest event time while it is
  behind, so a replay or a backlog joins exactly as the live stream did (:class:`Watermark`).
  Feedback may arrive before its impression (two topics); it waits the same window, then
  counts as an orphan.
* Feedback for an impression already turned into a sample is *late*: counted, not trained.
* A record's offset stays *in flight* until what it contributed to was handed off and acknowledged
  (:meth:`ack`). :meth:`commit_offsets` gives, per partition, the lowest in-flight offset (or one
  past the last seen), so a crash replays everything that was not yet safely handed off, and
  nothing else. Redelivered samples are removed downstream by ``event_id``.
* State is bounded by the window: pending entries leave at the window's end, the memory of
  emitted ids after ``retention_s``.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from operator import itemgetter
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Hashable, Iterable, NamedTuple, Sequence

from streamrec.events import SAMPLE_SCHEMA, Feedback, Impression, TrainingSample
from streamrec.rewards import RewardTable

_new_sample = _new_joined = tuple.__new__  # a NamedTuple built in C, not through its Python __new__
_SAMPLE_FIELDS = ("event_id", "ts", "user_id", "items", "propensities", "policy_version", "rewards", "context",
                  "features", "feedback_types", "source", "schema")
if TrainingSample._fields != _SAMPLE_FIELDS:  # RewardJoiner.due builds samples positionally
    raise ImportError(f"TrainingSample fields changed to {TrainingSample._fields}: update RewardJoiner.due")

__all__ = ["RewardJoiner", "JoinStats", "TopicPartition", "Watermark"]

_ZEROS: dict[int, tuple[float, ...]] = {}  # K -> the rewards of a slate nobody reacted to
_BUCKETS_PER_S = 64  # a power of two: close_at * 64 and key / 64 are exact in floating point
_close_at = itemgetter(0)
_floor = math.floor

TopicPartition = tuple[str, int]
Source = tuple[str, int, int]  # topic, partition, offset


class _InFlight:
    """Offsets of one partition not yet safe to commit: a multiset kept in offset order.

    A consumer reads a partition in offset order, so new offsets append at the end (an older one,
    which does not happen within one assignment, is inserted in place); the commit offset is the
    oldest one still counted, found by dropping released offsets from the front."""

    __slots__ = ("counts", "order", "next_offset")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.order: deque[int] = deque()
        self.next_offset = -1  # one past the highest offset seen

    def add(self, offset: int) -> None:
        c = self.counts.get(offset, 0)
        self.counts[offset] = c + 1
        if c == 0:
            order = self.order
            if not order or offset > order[-1]:
                order.append(offset)
            else:
                bisect.insort(order, offset)
        if offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def add_all(self, offsets: list[int]) -> None:
        """:meth:`add` for offsets in increasing order (one poll's records of this partition)."""
        if not offsets:
            return
        order = self.order
        if not order or offsets[0] > order[-1]:  # past everything held: all new, append in C
            self.counts.update(dict.fromkeys(offsets, 1))
            order.extend(offsets)
            if offsets[-1] + 1 > self.next_offset:
                self.next_offset = offsets[-1] + 1
        else:
            for offset in offsets:
                self.add(offset)

    def seen(self, offset: int) -> None:
        if offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def release(self, offset: int) -> None:
        c = self.counts.get(offset, 0)
        if c <= 1:
            self.counts.pop(offset, None)
        else:
            self.counts[offset] = c - 1

    def commit_offset(self) -> int:
        order, counts = self.order, self.counts
        while order and order[0] not in counts:
            order.popleft()
        return order[0] if order else self.next_offset


class _Calendar:
    """Entries ``(close_at, ...)`` released once a watermark passes their ``close_at``.

    1/64-s buckets of entries plus a heap of the bucket keys: a push is O(1) and a closed bucket
    leaves whole, where a heap of every entry pays a tuple-comparing pop per entry. Entries must
    be mutually comparable (the boundary bucket is sorted)."""

    __slots__ = ("buckets", "keys")

    def __init__(self) -> None:
        self.buckets: dict[int, list[tuple]] = {}
        self.keys: list[int] = []

    def push(self, entry: tuple) -> None:
        self.push_all((entry,))

    def push_all(self, entries: Iterable[tuple]) -> None:
        buckets, keys = self.buckets, self.keys
        for entry in entries:
            key = _floor(entry[0] * _BUCKETS_PER_S)
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [entry]
                heapq.heappush(keys, key)
            else:
                bucket.append(entry)

    def retain(self, keep) -> None:
        """Keep only the entries for which ``keep(entry)`` is true."""
        for key in list(self.buckets):
            bucket = [e for e in self.buckets[key] if keep(e)]
            if bucket:
                self.buckets[key] = bucket
            else:
                del self.buckets[key]
        self.keys = list(self.buckets)
        heapq.heapify(self.keys)

    def pop_closed(self, watermark: float, flush: bool = False) -> list[tuple]:
        """The entries with ``close_at <= watermark`` (all of them with ``flush``), roughly in close order."""
        keys, buckets = self.keys, self.buckets
        out: list[tuple] = []
        while keys and (flush or keys[0] / _BUCKETS_PER_S <= watermark):
            key = keys[0]
            bucket = buckets[key]
            if flush or (key + 1) / _BUCKETS_PER_S <= watermark:  # the whole bucket closed
                heapq.heappop(keys)
                del buckets[key]
                out.extend(bucket)
                continue
            bucket.sort()  # the watermark is inside this bucket: split it (nearly sorted: ~linear)
            cut = bisect.bisect_right(bucket, watermark, key=_close_at)
            out.extend(bucket[:cut])
            del bucket[:cut]
            break
        return out


class _Joined(NamedTuple):
    """The feedback joined so far to one pending impression (only impressions that got some have one).

    Pending impressions are held as ``(Impression, source)`` pairs: untracked by the cyclic GC
    once scanned, where a record with lists inside stays tracked and is re-scanned by every
    collection during the window."""

    rewards: list[float]
    """(K,) summed reward per position (:class:`streamrec.rewards.RewardTable`)."""
    types: list[str]
    sources: list[Source]
    """The joined feedback's offsets (released on ack with the impression's)."""


@dataclass
class JoinStats:
    impressions: int = 0
    feedback: int = 0
    joined: int = 0
    """Feedback attached to its impression inside the window."""
    late: int = 0
    """Feedback after its impression's window closed: counted, not trained."""
    orphans: int = 0
    """Feedback whose impression never came within the window."""
    off_slate: int = 0
    """Feedback on an item that was not in the slate."""
    duplicates: int = 0
    """Impressions seen again (redelivery) while pending or recently emitted."""
    samples: int = 0

    @property
    def join_hit_rate(self) -> float:
        done = self.joined + self.late + self.orphans
        return self.joined / done if done else 0.0


class Watermark:
    """Event-time progress of one consumer over the partitions it owns.

    ``value`` is the wall clock when every owned partition is caught up; otherwise the smallest
    newest-event-time among partitions that are behind (a partition never read holds it at -inf).
    """

    def __init__(self) -> None:
        self.max_ts: dict[TopicPartition, float] = {}

    def observe(self, tp: TopicPartition, ts: float) -> None:
        if ts > self.max_ts.get(tp, -math.inf):
            self.max_ts[tp] = ts

    def value(self, now: float, owned: Iterable[TopicPartition], caught_up: Iterable[TopicPartition]) -> float:
        done = set(caught_up)
        wm = now
        for tp in owned:
            if tp not in done:
                wm = min(wm, self.max_ts.get(tp, -math.inf))
        return wm

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.max_ts.pop(tp, None)


class RewardJoiner:
    def __init__(self, window_s: float, *, retention_s: float | None = None, rewards: RewardTable | None = None):
        """``retention_s``: how long (event time) after its window an id is remembered, so that
        feedback for it counts as late and a redelivery as a duplicate (default max(4 windows, 60 s)).
        ``rewards``: what each feedback type is worth (a sample's ``rewards`` sum them by position)."""
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.rewards = rewards or RewardTable()
        self.window_s = float(window_s)
        self.retention_s = float(retention_s if retention_s is not None else max(4 * window_s, 60.0))
        self.stats = JoinStats()
        self._seq = itertools.count()
        self._pending: dict[str, tuple[Impression, Source]] = {}
        self._joined: dict[str, _Joined] = {}
        self._closing = _Calendar()  # (close at, event_id) of pending impressions
        self._early: dict[str, list[tuple[Feedback, Source]]] = {}
        self._early_closing = _Calendar()  # (close at, seq, event_id, source) of early feedback
        # emitted ids, remembered until ``forget at`` (event time). Samples leave ``due`` in close-time
        # order, so a FIFO of (forget at, id) is (nearly) sorted and expiry pops its front; the dict
        # is for membership only (reading a dict's oldest key after many deletions scans the
        # deleted slots). The FIFO is two parallel deques, not one of pairs: floats and strings are
        # nothing the cyclic GC tracks, where a pair per sample would be (held for retention_s)
        self._emitted: dict[str, float] = {}
        self._forget_at: deque[float] = deque()
        self._forget_ids: deque[str] = deque()
        self._inflight: dict[TopicPartition, _InFlight] = defaultdict(_InFlight)
        self._unacked: dict[Hashable, list[Source]] = {}
        self._next_token = 0

    # -- input -------------------------------------------------------------------------------
    def add_impression(self, imp: Impression, source: Source) -> None:
        self.add_impressions(source[0], source[1], [source[2]], [imp])

    def add_feedback(self, fb: Feedback, source: Source) -> None:
        self.add_feedbacks(source[0], source[1], [source[2]], [fb])

    def add_impressions(self, topic: str, partition: int, offsets: Sequence[int], imps: Sequence[Impression]) -> None:
        """Impressions read from one partition, ``offsets`` increasing (the hot path: one call a poll)."""
        pending, emitted, early = self._pending, self._emitted, self._early
        window = self.window_s
        fresh: list[int] = []  # offsets of the impressions that became pending
        closing: list[tuple[float, str]] = []
        for offset, imp in zip(offsets, imps):
            eid = imp.event_id
            if eid in pending or eid in emitted:
                continue  # a redelivery: counted below, its offset only seen
            fresh.append(offset)
            pending[eid] = (imp, (topic, partition, offset))
            closing.append((imp.ts + window, eid))
            if early and eid in early:  # feedback that came first
                for fb, fsrc in early.pop(eid):
                    self._attach(imp, fb, fsrc)
        self._closing.push_all(closing)
        self.stats.impressions += len(offsets)
        self.stats.duplicates += len(offsets) - len(fresh)
        flight = self._inflight[(topic, partition)]
        flight.add_all(fresh)
        if offsets:
            flight.seen(offsets[-1])

    def add_feedbacks(self, topic: str, partition: int, offsets: Sequence[int], fbs: Sequence[Feedback]) -> None:
        """Feedback read from one partition, ``offsets`` increasing."""
        pending, emitted, early = self._pending, self._emitted, self._early
        held: list[int] = []  # offsets that stay in flight: joined, or waiting for their impression
        late = 0
        for offset, fb in zip(offsets, fbs):
            eid = fb.event_id
            p = pending.get(eid)
            if p is not None:
                held.append(offset)
                self._attach(p[0], fb, (topic, partition, offset))
            elif eid in emitted:
                late += 1
            else:
                held.append(offset)
                source = (topic, partition, offset)
                early.setdefault(eid, []).append((fb, source))
                self._early_closing.push((fb.ts + self.window_s, next(self._seq), eid, source))
        self.stats.feedback += len(offsets)
        self.stats.late += late
        flight = self._inflight[(topic, partition)]
        flight.add_all(held)
        if offsets:
            flight.seen(offsets[-1])

    def skip(self, source: Source) -> None:
        """A record that needs no join (dead-lettered, already handled): just advance past it."""
        self._inflight[(source[0], source[1])].seen(source[2])

    def _attach(self, imp: Impression, fb: Feedback, source: Source) -> None:
        """Join ``fb`` to its pending impression (the caller keeps ``source`` in flight)."""
        j = self._joined.get(imp.event_id)
        if j is None:
            j = self._joined[imp.event_id] = _new_joined(_Joined, ([0.0] * len(imp.items), [], []))
        j.sources.append(source)
        try:
            pos = imp.items.index(fb.item_id)
        except ValueError:
            self.stats.off_slate += 1
            return
        self.stats.joined += 1
        j.rewards[pos] += self.rewards.reward(fb.type, fb.value)
        j.types.append(fb.type)

    # -- output ------------------------------------------------------------------------------
    def due(self, watermark: float, *, flush: bool = False) -> tuple[Hashable | None, list[TrainingSample]]:
        """Samples whose window closed at ``watermark`` (all with ``flush``), and a token for :meth:`ack`."""
        out: list[TrainingSample] = []
        sources: list[Source] = []
        pending, joined, zeros = self._pending, self._joined, _ZEROS
        for close_at, eid in self._closing.pop_closed(watermark, flush):
            p = pending.pop(eid, None)
            if p is None:
                continue  # dropped with its partition
            imp, source = p
            sources.append(source)
            j = joined.pop(eid, None)
            if j is None:
                k = len(imp.items)
                rewards = zeros.get(k) or zeros.setdefault(k, (0.0,) * k)
                types = ()
            else:
                rewards, types = tuple(j.rewards), tuple(j.types)
                sources.extend(j.sources)
            out.append(_new_sample(TrainingSample, (  # the NamedTuple's fields in order, built in C
                eid, imp.ts, imp.user_id, imp.items, imp.propensities, imp.policy_version, rewards,
                imp.context, imp.features, types, source, SAMPLE_SCHEMA,
            )))
            forget_at = close_at + self.retention_s
            self._emitted[eid] = forget_at
            self._forget_at.append(forget_at)
            self._forget_ids.append(eid)
        self._expire(watermark, flush)
        if not out:
            return None, out
        self.stats.samples += len(out)
        token = self._next_token
        self._next_token += 1
        self._unacked[token] = sources
        return token, out

    def ack(self, token: Hashable) -> None:
        """The samples of ``token`` were handed off and acknowledged: their offsets may be committed."""
        inflight = self._inflight
        for topic, part, off in self._unacked.pop(token, ()):  # _InFlight.release, inlined (hot)
            counts = inflight[(topic, part)].counts
            c = counts.pop(off, 0)
            if c > 1:
                counts[off] = c - 1

    def _expire(self, watermark: float, flush: bool) -> None:
        for _, _, eid, src in self._early_closing.pop_closed(watermark, flush):
            items = self._early.get(eid)
            if not items or src not in [s for _, s in items]:
                continue  # joined meanwhile, or dropped with its partition
            self._early[eid] = [x for x in items if x[1] != src]
            if not self._early[eid]:
                del self._early[eid]
            self.stats.orphans += 1
            self._inflight[(src[0], src[1])].release(src[2])
        emitted, at, ids = self._emitted, self._forget_at, self._forget_ids
        while at and at[0] <= watermark:  # an entry emitted out of close-time order waits behind it
            forget_at, eid = at.popleft(), ids.popleft()
            if emitted.get(eid) == forget_at:
                del emitted[eid]

    # -- offsets and rebalancing -------------------------------------------------------------
    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit (the next record a restarted consumer should read)."""
        out = {}
        for tp, f in self._inflight.items():
            o = f.commit_offset()
            if o >= 0:
                out[tp] = o
        return out

    def drop_partitions(self, tps: set[TopicPartition]) -> None:
        """Forget state fed by partitions this consumer lost (their new owner replays them)."""
        if not tps:
            return
        for eid in [e for e, (_, src) in self._pending.items() if (src[0], src[1]) in tps]:
            del self._pending[eid]
            self._joined.pop(eid, None)
        pending = self._pending  # their calendar entries go too (a replay re-adds them)
        self._closing.retain(lambda entry: entry[1] in pending)
        self._early_closing.retain(lambda entry: (entry[3][0], entry[3][1]) not in tps)
        for eid in list(self._early):
            kept = [x for x in self._early[eid] if (x[1][0], x[1][1]) not in tps]
            if kept:
                self._early[eid] = kept
            else:
                del self._early[eid]
        for tp in tps:
            self._inflight.pop(tp, None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def state_size(self) -> int:
        """Entries held (pending + early feedback + remembered ids): bounded by the window."""
        return len(self._pending) + len(self._early) + len(self._emitted)
