"""SampleBuffer: the trainer's input queue, with backpressure and deduplication by ``event_id``.

Ingest actors ``put`` batches and wait for the answer before committing their offsets; a full
buffer answers ``full`` and ingest pauses. Redelivered samples (after a crash or a rebalance)
are dropped here, so no sample is trained twice. The memory of seen ids is bounded by time.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Sequence

import ray

from streamrec.events import TrainingSample, decode_samples

__all__ = ["SampleBuffer"]


@ray.remote(num_cpus=0.1, max_restarts=0)
class SampleBuffer:
    def __init__(self, capacity: int = 100_000, dedup_retention_s: float = 600.0):
        self.capacity = capacity
        self.retention_s = dedup_retention_s
        self._q: deque[TrainingSample] = deque()
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.accepted = 0
        self.duplicates = 0
        self.refused_full = 0

    def put(self, samples: Sequence[TrainingSample] | bytes) -> dict:
        """Accept a batch whole, or refuse it whole when it does not fit (``full``).

        ``samples``: a list, or that list as :func:`~streamrec.events.encode_samples` bytes (the
        ingest hot path).
        """
        if isinstance(samples, (bytes, bytearray)):
            samples = decode_samples(samples)
        now = time.monotonic()
        self._forget(now)
        fresh = [s for s in samples if s.event_id not in self._seen]
        if self._q and len(self._q) + len(fresh) > self.capacity:  # an empty buffer takes any batch
            self.refused_full += 1
            return {"accepted": 0, "duplicates": 0, "full": True}
        for s in fresh:
            self._seen[s.event_id] = now
            self._q.append(s)
        dups = len(samples) - len(fresh)
        self.accepted += len(fresh)
        self.duplicates += dups
        return {"accepted": len(fresh), "duplicates": dups, "full": False}

    def take(self, max_n: int = 10_000) -> list[TrainingSample]:
        n = min(max_n, len(self._q))
        return [self._q.popleft() for _ in range(n)]

    def size(self) -> int:
        return len(self._q)

    def metrics(self) -> dict:
        return {"buffered": len(self._q), "accepted": self.accepted, "duplicates": self.duplicates,
                "refused_full": self.refused_full, "dedup_ids": len(self._seen)}

    def _forget(self, now: float) -> None:
        while self._seen:
            eid, t = next(iter(self._seen.items()))
            if now - t <= self.retention_s:
                break
            del self._seen[eid]
