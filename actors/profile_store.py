"""ProfileStore: live per-user histories and pooled profile vectors (a named Ray actor).

Ingest feeds it every valid feedback event; serving and training read profiles in batches.
It snapshots to ``snapshot_dir`` (a path or a URI: streamrec.storage) on a cadence and restores
from the snapshot when (re)started.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import deque
from typing import Sequence

import numpy as np
import ray

from streamrec.profile import HistoryBook, blend_with_prior, popularity_prior
from streamrec.storage import Location

log = logging.getLogger(__name__)

__all__ = ["ProfileStore"]


@ray.remote(num_cpus=0.1, max_restarts=-1)
class ProfileStore:
    SNAPSHOT = "profiles.json"
    ITEMS = "profiles.items.npz"

    def __init__(self, history_length: int = 50, half_life_s: float = 86_400.0,
                 snapshot_dir: str | None = None, snapshot_every_s: float = 60.0,
                 catalog_dir: str | None = None, catalog_poll_s: float = 5.0,
                 prior_events: float = 0.0, popular_window: int = 10_000):
        """``catalog_dir``: the embedding output to follow (a new run's items join the pool within
        ``catalog_poll_s`` of the next recorded events); None: only :meth:`set_item_vectors`."""
        self.half_life_s = half_life_s
        self.prior_events = prior_events
        self._recent: deque[str] = deque(maxlen=popular_window)  # items of the last positive events
        self._prior: tuple[int, np.ndarray | None] = (-1, None)  # (events when computed, the prior)
        self.catalog_dir, self.catalog_poll_s = catalog_dir, catalog_poll_s
        self.catalog_version: str | None = None
        self._next_catalog = 0.0
        self.loc = Location(snapshot_dir) if snapshot_dir else None
        self.snapshot_every_s = snapshot_every_s
        self._last_snapshot = time.monotonic()
        self.book = HistoryBook(history_length)
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, 1), dtype=np.float32)
        if self.loc is not None:  # restarted: the histories and the catalog it pooled over
            try:
                self.book = HistoryBook.from_json(self.loc.read_bytes(self.SNAPSHOT), history_length)
            except FileNotFoundError:
                pass
            try:
                with np.load(io.BytesIO(self.loc.read_bytes(self.ITEMS)), allow_pickle=False) as z:
                    self._set(z["ids"].tolist(), z["vectors"])
            except FileNotFoundError:
                pass
        self.events = 0
        self.epoch = uuid.uuid4().hex  # a restarted store numbers its changes afresh: mirrors start over

    def set_item_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """(n,) ids and (n, d) vectors of the catalog the profiles pool over; kept beside the snapshot."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._set(ids, vectors)
        if self.loc is not None:
            buf = io.BytesIO()
            np.savez(buf, ids=np.asarray([str(i) for i in ids]), vectors=self._vectors)
            self.loc.write_bytes(self.ITEMS, buf.getvalue())
        return len(ids)

    def _set(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self._index = {str(i): r for r, i in enumerate(ids)}
        self._vectors = np.asarray(vectors, dtype=np.float32)

    def follow_catalog(self) -> bool:
        """Pool over the live embedding run's items when it is another run than the one pooled over.
        True when the vectors changed."""
        from streamrec.vectors import load_vectors, read_manifest

        m = read_manifest(self.catalog_dir)
        if m is None or str(m.get("run_id")) == self.catalog_version:
            return False
        ids, vectors, _ = load_vectors(self.catalog_dir)
        self.set_item_vectors(ids, vectors)
        self.catalog_version = str(m.get("run_id"))
        return True

    def record(self, events: Sequence[tuple[str, str, float]]) -> int:
        if self.catalog_dir is not None and time.monotonic() >= self._next_catalog:
            self._next_catalog = time.monotonic() + self.catalog_poll_s
            try:
                self.follow_catalog()
            except Exception as e:  # storage away: pool over the catalog it has
                log.warning("profile store cannot follow the catalog at %s: %s", self.catalog_dir, e)
        n = self.book.record(events)
        self._recent.extend(item for _, item, _ in events)
        self.events += n
        if self.loc is not None and time.monotonic() - self._last_snapshot >= self.snapshot_every_s:
            self.snapshot()
        return n

    def histories(self, user_ids: Sequence[str]) -> list[list[tuple[str, float]]]:
        return [self.book.history(u) for u in user_ids]

    def prior(self) -> np.ndarray | None:
        """(d,) the popularity prior (:func:`streamrec.profile.popularity_prior` over the last
        ``popular_window`` events); None before any event on a catalog item or with ``prior_events`` 0."""
        if self.prior_events <= 0:
            return None
        if self._prior[0] != self.events:
            self._prior = (self.events, popularity_prior(self._recent, self._index, self._vectors))
        return self._prior[1]

    def profiles(self, user_ids: Sequence[str], now: float | None = None) -> np.ndarray:
        """(B, d) pooled profile vectors blended with the popularity prior as their histories are
        short (:func:`streamrec.profile.blend_with_prior`); zeros for users with no known history."""
        now = time.time() if now is None else now
        d = self._vectors.shape[1]
        out = np.zeros((len(user_ids), d), dtype=np.float32)
        prior = self.prior()
        for r, u in enumerate(user_ids):
            pooled = self.book.profile(u, self._index, self._vectors, now, self.half_life_s)
            out[r] = blend_with_prior(pooled, len(self.book.history(u)), prior, self.prior_events)
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
        if self.loc is None:
            return None
        self.loc.write_bytes(self.SNAPSHOT, self.book.to_json())
        return self.loc.uri_of(self.SNAPSHOT)

    def metrics(self) -> dict:
        return {"users": len(self.book), "events": self.events, "catalog": self.catalog_version}
