"""SampleBuffer: the trainer's input queue, with backpressure and deduplication by ``event_id``.

Ingest actors ``put`` batches and wait for the answer before committing their offsets; a full
buffer answers ``full`` and ingest pauses. Redelivered samples (after a crash or a rebalance)
are dropped here, so no sample is trained twice. The memory of seen ids is bounded by time.
An ingest batch arrives as msgpack bytes with its event ids beside it and stays encoded until
``take`` (the trainer's side pays for decoding, not the ingest's wait for an answer).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Sequence

import ray

from streamrec.events import TrainingSample, decode_samples

__all__ = ["SampleQueue", "SampleBuffer"]


class SampleQueue:
    """The buffer's logic, without Ray (:data:`SampleBuffer` is this class as an actor)."""

    def __init__(self, capacity: int = 100_000, dedup_retention_s: float = 600.0):
        self.capacity = capacity
        self.retention_s = dedup_retention_s
        # batches in arrival order: a list of samples, or (msgpack blob, indices to drop) still
        # encoded: an ingest hand-off is decoded only when taken, so the trainer pays for decoding
        # and the ingest's wait for the answer stays short
        self._q: deque[list[TrainingSample] | tuple[bytes, frozenset[int]]] = deque()
        self._n = 0
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.accepted = 0
        self.duplicates = 0
        self.refused_full = 0

    def put(self, samples: Sequence[TrainingSample] | bytes, event_ids: Sequence[str] | None = None) -> dict:
        """Accept a batch whole, or refuse it whole when it does not fit (``full``).

        ``samples``: a list, or that list as :func:`~streamrec.events.encode_samples` bytes. With
        bytes, ``event_ids`` (the samples' ids, in order) lets the batch stay encoded until taken.
        """
        encoded = isinstance(samples, (bytes, bytearray))
        if encoded and event_ids is None:
            samples, encoded = decode_samples(samples), False
        ids = event_ids if encoded else [s.event_id for s in samples]
        now = time.monotonic()
        self._forget(now)
        seen = self._seen
        fresh = [i for i, eid in enumerate(ids) if eid not in seen]
        if self._n and self._n + len(fresh) > self.capacity:  # an empty buffer takes any batch
            self.refused_full += 1
            return {"accepted": 0, "duplicates": 0, "full": True}
        for i in fresh:
            seen[ids[i]] = now
        dups = len(ids) - len(fresh)
        if fresh:
            if encoded:
                drop = frozenset(set(range(len(ids))).difference(fresh)) if dups else frozenset()
                self._q.append((bytes(samples), drop))
            else:
                self._q.append([samples[i] for i in fresh] if dups else list(samples))
        self._n += len(fresh)
        self.accepted += len(fresh)
        self.duplicates += dups
        return {"accepted": len(fresh), "duplicates": dups, "full": False}

    def take(self, max_n: int = 10_000) -> list[TrainingSample]:
        """Up to ``max_n`` samples, oldest first."""
        out: list[TrainingSample] = []
        while self._q and len(out) < max_n:
            batch = self._q.popleft()
            if isinstance(batch, tuple):
                blob, drop = batch
                batch = decode_samples(blob)
                if drop:
                    batch = [x for i, x in enumerate(batch) if i not in drop]
            room = max_n - len(out)
            if len(batch) > room:
                self._q.appendleft(batch[room:])
                batch = batch[:room]
            out.extend(batch)
        self._n -= len(out)
        return out

    def size(self) -> int:
        return self._n

    def metrics(self) -> dict:
        return {"buffered": self._n, "accepted": self.accepted, "duplicates": self.duplicates,
                "refused_full": self.refused_full, "dedup_ids": len(self._seen)}

    def _forget(self, now: float) -> None:
        while self._seen:
            eid, t = next(iter(self._seen.items()))
            if now - t <= self.retention_s:
                break
            del self._seen[eid]


SampleBuffer = ray.remote(num_cpus=0.1, max_restarts=0)(SampleQueue)
"""The named actor (:data:`actors.registry.SAMPLES`) the ingest group hands samples to."""
