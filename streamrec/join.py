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
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Hashable, Iterable

from streamrec.events import SAMPLE_SCHEMA, Feedback, Impression, TrainingSample

_new_sample = tuple.__new__
_SAMPLE_FIELDS = ("event_id", "ts", "user_id", "items", "propensities", "policy_version", "rewards", "context",
                  "features", "feedback_types", "source", "schema")
if TrainingSample._fields != _SAMPLE_FIELDS:  # RewardJoiner.due builds samples positionally
    raise ImportError(f"TrainingSample fields changed to {TrainingSample._fields}: update RewardJoiner.due")

__all__ = ["RewardJoiner", "JoinStats", "TopicPartition", "Watermark"]

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


@dataclass(slots=True)
class _Pending:
    imp: Impression
    source: Source
    rewards: list[float]
    types: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


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
    def __init__(self, window_s: float, *, retention_s: float | None = None):
        """``retention_s``: how long (event time) after its window an id is remembered, so that
        feedback for it counts as late and a redelivery as a duplicate (default max(4 windows, 60 s))."""
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.retention_s = float(retention_s if retention_s is not None else max(4 * window_s, 60.0))
        self.stats = JoinStats()
        self._seq = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._pending_heap: list[tuple[float, str]] = []  # (close at, event_id)
        self._early: dict[str, list[tuple[Feedback, Source]]] = {}
        self._early_heap: list[tuple[float, int, str, Source]] = []
        # emitted ids, remembered until ``forget at`` (event time). Samples leave ``due`` in close-time
        # order, so a FIFO of (forget at, id) is (nearly) sorted and expiry pops its front; the dict
        # is for membership only (reading a dict's oldest key after many deletions scans the
        # deleted slots: ~100 us per expiry at 100k entries, measured)
        self._emitted: dict[str, float] = {}
        self._emitted_order: deque[tuple[float, str]] = deque()
        self._inflight: dict[TopicPartition, _InFlight] = defaultdict(_InFlight)
        self._unacked: dict[Hashable, list[Source]] = {}
        self._next_token = 0

    # -- input -------------------------------------------------------------------------------
    def add_impression(self, imp: Impression, source: Source) -> None:
        self.stats.impressions += 1
        tp = (source[0], source[1])
        if imp.event_id in self._pending or imp.event_id in self._emitted:
            self.stats.duplicates += 1
            self._inflight[tp].seen(source[2])
            return
        self._inflight[tp].add(source[2])
        p = _Pending(imp, source, [0.0] * len(imp.items), sources=[source])
        self._pending[imp.event_id] = p
        heapq.heappush(self._pending_heap, (imp.ts + self.window_s, imp.event_id))
        for fb, fsrc in self._early.pop(imp.event_id, ()):  # feedback that came first
            self._attach(p, fb, fsrc, already_inflight=True)

    def add_feedback(self, fb: Feedback, source: Source) -> None:
        self.stats.feedback += 1
        tp = (source[0], source[1])
        p = self._pending.get(fb.event_id)
        if p is not None:
            self._attach(p, fb, source)
        elif fb.event_id in self._emitted:
            self.stats.late += 1
            self._inflight[tp].seen(source[2])
        else:
            self._inflight[tp].add(source[2])
            self._early.setdefault(fb.event_id, []).append((fb, source))
            heapq.heappush(self._early_heap, (fb.ts + self.window_s, next(self._seq), fb.event_id, source))

    def skip(self, source: Source) -> None:
        """A record that needs no join (dead-lettered, already handled): just advance past it."""
        self._inflight[(source[0], source[1])].seen(source[2])

    def _attach(self, p: _Pending, fb: Feedback, source: Source, already_inflight: bool = False) -> None:
        if not already_inflight:
            self._inflight[(source[0], source[1])].add(source[2])
        p.sources.append(source)
        try:
            pos = p.imp.items.index(fb.item_id)
        except ValueError:
            self.stats.off_slate += 1
            return
        self.stats.joined += 1
        p.rewards[pos] += fb.value
        p.types.append(fb.type)

    # -- output ------------------------------------------------------------------------------
    def due(self, watermark: float, *, flush: bool = False) -> tuple[Hashable | None, list[TrainingSample]]:
        """Samples whose window closed at ``watermark`` (all with ``flush``), and a token for :meth:`ack`."""
        out: list[TrainingSample] = []
        sources: list[Source] = []
        heap = self._pending_heap
        while heap and (flush or heap[0][0] <= watermark):
            close_at, eid = heapq.heappop(heap)
            p = self._pending.pop(eid, None)
            if p is None or p.imp.ts + self.window_s != close_at:
                continue  # dropped with its partition
            imp = p.imp
            out.append(_new_sample(TrainingSample, (  # the NamedTuple's fields in order, built in C
                eid, imp.ts, imp.user_id, imp.items, imp.propensities, imp.policy_version, tuple(p.rewards),
                imp.context, imp.features, tuple(p.types), p.source, SAMPLE_SCHEMA,
            )))
            sources.extend(p.sources)
            forget_at = close_at + self.retention_s
            self._emitted[eid] = forget_at
            self._emitted_order.append((forget_at, eid))
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
        for topic, part, off in self._unacked.pop(token, ()):
            self._inflight[(topic, part)].release(off)

    def _expire(self, watermark: float, flush: bool) -> None:
        heap = self._early_heap
        while heap and (flush or heap[0][0] <= watermark):
            _, _, eid, src = heapq.heappop(heap)
            items = self._early.get(eid)
            if not items or src not in [s for _, s in items]:
                continue  # joined meanwhile, or dropped with its partition
            self._early[eid] = [x for x in items if x[1] != src]
            if not self._early[eid]:
                del self._early[eid]
            self.stats.orphans += 1
            self._inflight[(src[0], src[1])].release(src[2])
        emitted, order = self._emitted, self._emitted_order
        while order and order[0][0] <= watermark:  # an entry emitted out of close-time order waits behind it
            forget_at, eid = order.popleft()
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
        for eid in [e for e, p in self._pending.items() if (p.source[0], p.source[1]) in tps]:
            del self._pending[eid]
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
