"""SampleLog: the trainer's reader of the samples topic, the durable log between ingest and trainer.

Ingest writes each batch of joined samples to ``kafka.topics.samples`` (msgpack records, see
:func:`streamrec.events.encode_samples`) and commits its source offsets only once the broker has
acknowledged them. The trainer reads the log at its own pace, from the position its checkpoint
names (:class:`rl.trainer_loop.TrainerLoop`), so neither side holds samples the other has let go
of: a crashed ingest replays into the log, a crashed trainer re-reads it (docs/architecture.md,
"From ingest to trainer").

``take`` hands out whole log records (a position is always a record boundary) with samples
already taken dropped by ``event_id`` (an ingest that crashed between writing and committing
writes them again, up to a restart and a group rejoin later). The memory of seen ids is bounded
by time; a reader that resumes at a position first re-reads, without handing them out, the
records written in the ``lookback_s`` before its checkpoint, so a copy written after a restart
is still recognised.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Iterable

from streamrec.events import TrainingSample, decode_samples

__all__ = ["SeenIds", "SampleLog"]

log = logging.getLogger(__name__)


class SeenIds:
    """Event ids seen in the last ``retention_s`` seconds: drops redelivered samples."""

    def __init__(self, retention_s: float = 600.0):
        self.retention_s = retention_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def fresh(self, samples: Iterable[TrainingSample], now: float | None = None) -> list[TrainingSample]:
        """The samples whose ids were not seen (each id counts once, also within ``samples``); remembers them."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        seen, out = self._seen, []
        for s in samples:
            if s.event_id not in seen:
                seen[s.event_id] = now
                out.append(s)
        return out

    def __len__(self) -> int:
        return len(self._seen)

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            eid, t = next(iter(seen.items()))
            if now - t <= self.retention_s:
                break
            del seen[eid]


class SampleLog:
    """Reads the samples log from a given position; one reader per trainer. ``reader`` is a
    :class:`streamrec.eventbus.KafkaLogReader` (or anything with its calls: unit tests)."""

    def __init__(self, reader, *, dedup_retention_s: float = 600.0, lookback_s: float = 120.0):
        self.reader = reader
        self.lookback_s = lookback_s
        self._start: dict[int, int] | None = None  # where to begin (seek before the first take)
        self._since: float | None = None  # re-read (remember, do not hand out) records written after this
        self._warm: dict[int, int] = {}  # partition -> the offset where handing out starts again
        self._assigned = False
        self._pending: deque[tuple[int, int, list[TrainingSample]]] = deque()  # (partition, offset, samples) fetched
        self._n_pending = 0
        self._position: dict[int, int] = {}  # partition -> the offset after the last record taken
        self.seen = SeenIds(dedup_retention_s)
        self.last_records: list[tuple[int, int]] = []
        """(partition, offset) of the records the last :meth:`take` handed out, in its order (the
        trainer's rounds log: ``streamrec replay`` reads the same records back)."""
        self.counts = {"records": 0, "taken": 0, "duplicates": 0, "bad_records": 0, "reread": 0}

    @classmethod
    def open(cls, bootstrap: str, settings) -> "SampleLog":
        """The reader of ``settings.kafka.topics.samples`` under ``settings.trainer.group_id``."""
        from streamrec.eventbus import KafkaLogReader

        reader = KafkaLogReader(bootstrap, settings.kafka.topics.samples, settings.trainer.group_id,
                                client_id="streamrec-trainer", security=settings.kafka.security,
                                hole_wait_s=settings.kafka.hole_wait_s)
        return cls(reader, dedup_retention_s=max(600.0, 4 * settings.ingest.reward_window_s))

    # -- position ----------------------------------------------------------------------------
    def position(self) -> dict[str, int]:
        """Per partition (as a string, for JSON), the offset after the last record taken."""
        return {str(p): o for p, o in sorted(self._position.items())}

    def seek(self, position: dict[str, int] | None, written_at: float | None = None) -> None:
        """Read from ``position`` (a :meth:`position`), or from the committed offsets when None.
        Drops what was fetched and not taken. ``written_at`` (epoch seconds: when the position was
        checkpointed) first re-reads the ids of the records from ``lookback_s`` before it."""
        self._start = None if position is None else {int(p): int(o) for p, o in position.items()}
        self._since = None if position is None or written_at is None else written_at - self.lookback_s
        self._pending.clear()
        self._n_pending = 0
        if self._assigned:
            self.reader.unassign()
            self._assigned = False
        self._assign()

    def commit(self) -> None:
        """Commit :meth:`position` under the group (what ``group_lag`` and operators see)."""
        self.reader.commit(dict(self._position))

    def _assign(self) -> bool:
        if not self._assigned:
            begin = None if self._start is None else dict(self._start)
            warm: dict[int, int] = {}
            if begin is not None and self._since is not None:
                for p, o in self.reader.offsets_for_time(int(self._since * 1000)).items():
                    if p in begin and o < begin[p]:
                        warm[p], begin[p] = begin[p], o
            start = self.reader.assign(begin)
            if start is None:  # the topic does not exist yet (no ingest has run)
                return False
            start.update(warm)  # the position is where handing out starts
            self._position = {**start, **self._position} if self._start is None else start
            self._warm = warm
            self._assigned = True
        return True

    # -- reading -----------------------------------------------------------------------------
    def _fetch(self, want: int, timeout_s: float) -> None:
        """Fetch records until ``want`` samples are pending or the log has no more right now."""
        if not self._assign():
            return
        deadline = time.monotonic() + timeout_s
        while self._n_pending < want and time.monotonic() < deadline:
            records = self.reader.read(500, 0.2)
            if not records:
                break
            for part, offset, value in records:
                self.counts["records"] += 1
                try:
                    batch = decode_samples(value)
                except ValueError as e:  # not ours: counted and passed over (its offset still advances)
                    self.counts["bad_records"] += 1
                    log.error("samples log %d@%d: %s", part, offset, e)
                    batch = []
                if offset < self._warm.get(part, -1):  # taken before the checkpoint: remember its ids only
                    self.counts["reread"] += len(self.seen.fresh(batch))
                    continue
                self._pending.append((part, offset, batch))
                self._n_pending += len(batch)

    def take(self, max_n: int, min_n: int = 1, timeout_s: float = 2.0) -> list[TrainingSample]:
        """Whole records, oldest first, up to ``max_n`` samples (at least one record, however large);
        [] when fewer than ``min_n`` are there (they stay for the next call)."""
        self._fetch(max_n, timeout_s)
        if self._n_pending < min_n or not self._pending:
            return []
        out: list[TrainingSample] = []
        self.last_records = []
        while self._pending and (not out or len(out) + len(self._pending[0][2]) <= max_n):
            part, offset, batch = self._pending.popleft()
            self._n_pending -= len(batch)
            out.extend(batch)
            self._position[part] = offset + 1
            self.last_records.append((part, offset))
        fresh = self.seen.fresh(out)
        self.counts["duplicates"] += len(out) - len(fresh)
        self.counts["taken"] += len(fresh)
        return fresh

    def lag(self) -> int:
        """Records in the log after the position (from the broker's high watermarks)."""
        hws = self.reader.high_watermarks(self._position)
        return sum(max(0, hi - self._position[p]) for p, hi in hws.items())

    def metrics(self) -> dict:
        holes = getattr(self.reader, "holes", None)
        return {**self.counts, "pending": self._n_pending, "position": self.position(), "dedup_ids": len(self.seen),
                **({"offset_holes": dict(holes.counts)} if holes is not None else {})}

    def close(self) -> None:
        self.reader.close()
