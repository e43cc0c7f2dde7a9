"""ProfileStore: live per-user histories and pooled profile vectors (a named Ray actor).

Ingest feeds it every valid feedback event; serving and training read profiles in batches.
It snapshots to disk on a cadence and restores from the snapshot when (re)started.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import ray

from streamrec.profile import HistoryBook

__all__ = ["ProfileStore"]


@ray.remote(num_cpus=0.1, max_restarts=-1)
class ProfileStore:
    def __init__(self, history_length: int = 50, half_life_s: float = 86_400.0,
                 snapshot_path: str | None = None, snapshot_every_s: float = 60.0):
        self.half_life_s = half_life_s
        self.snapshot_path = Path(snapshot_path) if snapshot_path else None
        self.snapshot_every_s = snapshot_every_s
        self._last_snapshot = time.monotonic()
        if self.snapshot_path and self.snapshot_path.is_file():
            self.book = HistoryBook.restore(self.snapshot_path, history_length)
        else:
            self.book = HistoryBook(history_length)
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, 1), dtype=np.float32)
        if self._items_path and self._items_path.is_file():  # restarted: the catalog it pooled over
            with np.load(self._items_path, allow_pickle=False) as z:
                self._set(z["ids"].tolist(), z["vectors"])
        self.events = 0
        self.epoch = uuid.uuid4().hex  # a restarted store numbers its changes afresh: mirrors start over

    @property
    def _items_path(self) -> Path | None:
        return self.snapshot_path.with_suffix(".items.npz") if self.snapshot_path else None

    def set_item_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """(n,) ids and (n, d) vectors of the catalog the profiles pool over; kept beside the snapshot."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._set(ids, vectors)
        if self._items_path:
            self._items_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._items_path.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.asarray([str(i) for i in ids]), vectors=self._vectors)
            os.replace(tmp, self._items_path)
        return len(ids)

    def _set(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self._index = {str(i): r for r, i in enumerate(ids)}
        self._vectors = np.asarray(vectors, dtype=np.float32)

    def record(self, events: Sequence[tuple[str, str, float]]) -> int:
        n = self.book.record(events)
        self.events += n
        if self.snapshot_path and time.monotonic() - self._last_snapshot >= self.snapshot_every_s:
            self.snapshot()
        return n

    def histories(self, user_ids: Sequence[str]) -> list[list[tuple[str, float]]]:
        return [self.book.history(u) for u in user_ids]

    def profiles(self, user_ids: Sequence[str], now: float | None = None) -> np.ndarray:
        """(B, d) pooled profile vectors; zeros for users with no known history."""
        now = time.time() if now is None else now
        d = self._vectors.shape[1]
        out = np.zeros((len(user_ids), d), dtype=np.float32)
        for r, u in enumerate(user_ids):
            out[r] = self.book.profile(u, self._index, self._vectors, now, self.half_life_s)
        return out

    def changes_since(self, epoch: str | None, seq: int, limit: int = 100_000) -> tuple[str, int, list[str], np.ndarray]:
        """What a serving replica's mirror is missing: ``(epoch, seq, user_ids, (B, d) profiles)``.

        ``epoch``/``seq`` are what the caller saw last; a different epoch (this store restarted)
        sends everything again, most recently changed first, up to ``limit`` users.
        """
        since = seq if epoch == self.epoch else 0
        users = self.book.changed_since(since, limit)
        return self.epoch, self.book.seq, users, self.profiles(users)

    def snapshot(self) -> str | None:
        self._last_snapshot = time.monotonic()
        if not self.snapshot_path:
            return None
        return str(self.book.snapshot(self.snapshot_path))

    def metrics(self) -> dict:
        return {"users": len(self.book), "events": self.events}
