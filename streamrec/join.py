"""Reward join: impressions + feedback -> TrainingSamples, with the offsets safe to commit.

Pure logic, no Kafka: the ingest actor feeds it decoded records with their (topic, partition,
offset) and the clock, and asks which samples are due and which offsets may be committed.

* An impression waits ``window_s`` (processing time) for its feedback, then becomes a sample
  (reward 0 when none came). Feedback may arrive before its impression (two topics); it waits
  the same window, then counts as an orphan.
* Feedback for an impression already turned into a sample is *late*: counted, not trained.
* A record's offset stays *in flight* until what it contributed to was handed off and acknowledged
  (:meth:`ack`). :meth:`commit_offsets` gives, per partition, the lowest in-flight offset (or one
  past the last seen), so a crash replays everything that was not yet safely handed off, and
  nothing else. Redelivered samples are removed downstream by ``event_id``.
* State is bounded by the window: pending entries leave at the window's end, the memory of
  emitted ids after ``retention_s``.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable

from streamrec.events import Feedback, Impression, TrainingSample

__all__ = ["RewardJoiner", "JoinStats", "TopicPartition"]

TopicPartition = tuple[str, int]
Source = tuple[str, int, int]  # topic, partition, offset


class _InFlight:
    """Offsets of one partition not yet safe to commit: a multiset with a lazy min-heap."""

    __slots__ = ("counts", "heap", "next_offset")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.heap: list[int] = []
        self.next_offset = -1  # one past the highest offset seen

    def add(self, offset: int) -> None:
        c = self.counts.get(offset, 0)
        self.counts[offset] = c + 1
        if c == 0:
            heapq.heappush(self.heap, offset)
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
        while self.heap and self.heap[0] not in self.counts:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else self.next_offset


@dataclass
class _Pending:
    imp: Impression
    source: Source
    due: float
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


class RewardJoiner:
    def __init__(self, window_s: float, *, retention_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.retention_s = float(retention_s if retention_s is not None else 2 * window_s)
        self.clock = clock
        self.stats = JoinStats()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # insertion order == due order
        self._early: OrderedDict[str, list[tuple[Feedback, Source, float]]] = OrderedDict()
        self._emitted: OrderedDict[str, float] = OrderedDict()  # event_id -> forget time
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
        now = self.clock()
        self._inflight[tp].add(source[2])
        p = _Pending(imp, source, now + self.window_s, [0.0] * len(imp.items), sources=[source])
        self._pending[imp.event_id] = p
        for fb, fsrc, _ in self._early.pop(imp.event_id, ()):  # feedback that came first
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
            self._early.setdefault(fb.event_id, []).append((fb, source, self.clock() + self.window_s))

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
    def due(self, *, flush: bool = False) -> tuple[Hashable | None, list[TrainingSample]]:
        """Samples whose window closed (all of them with ``flush``), and a token for :meth:`ack`."""
        now = self.clock()
        out: list[TrainingSample] = []
        sources: list[Source] = []
        while self._pending:
            eid, p = next(iter(self._pending.items()))
            if not flush and p.due > now:
                break
            del self._pending[eid]
            imp = p.imp
            out.append(TrainingSample(
                event_id=eid, ts=imp.ts, user_id=imp.user_id, items=imp.items, propensities=imp.propensities,
                policy_version=imp.policy_version, rewards=tuple(p.rewards), context=imp.context,
                features=imp.features, feedback_types=tuple(p.types), source=p.source,
            ))
            sources.extend(p.sources)
            self._emitted[eid] = now + self.retention_s
        self._expire(now, flush)
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

    def _expire(self, now: float, flush: bool) -> None:
        while self._early:
            eid, items = next(iter(self._early.items()))
            if not flush and items[0][2] > now:
                break
            del self._early[eid]
            for _, src, _ in items:
                self.stats.orphans += 1
                self._inflight[(src[0], src[1])].release(src[2])
        while self._emitted:
            eid, forget_at = next(iter(self._emitted.items()))
            if forget_at > now:
                break
            del self._emitted[eid]

    # -- offsets and rebalancing -------------------------------------------------------------
    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit (the next record a restarted consumer should read)."""
        return {tp: f.commit_offset() for tp, f in self._inflight.items() if f.commit_offset() >= 0}

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
