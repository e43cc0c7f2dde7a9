"""ProfileMirror: a Ranker replica's copy of the users' pooled profile vectors, kept current by deltas."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import numpy as np

__all__ = ["ProfileMirror", "FetchChanges"]

#: ``fetch(epoch, seq, limit) -> (epoch, seq, user_ids, (B, d) profiles)``: ProfileStore.changes_since
FetchChanges = Callable[[str | None, int, int], tuple[str, int, list[str], np.ndarray]]


class ProfileMirror:
    """A replica's copy of the users' pooled profile vectors, brought up to date by deltas.

    ``sync()`` asks ``fetch`` for the users changed since the last answer (one call, every
    ``serve.profile_sync_s``, off the request path); ``get(user)`` is a dict lookup. It holds the
    ``capacity`` most recently changed users. A store that restarted answers with a new epoch and
    everything it has, and the mirror starts over from that.
    """

    def __init__(self, fetch: FetchChanges, capacity: int = 100_000, *,
                 fetch_prior: Callable[[], np.ndarray | None] | None = None, prior_every_s: float = 10.0):
        """``fetch_prior``: the store's popularity prior (what a user with no history ranks from),
        asked for every ``prior_every_s`` within :meth:`sync`."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.fetch, self.capacity = fetch, capacity
        self.fetch_prior, self.prior_every_s = fetch_prior, prior_every_s
        self.prior: np.ndarray | None = None
        self._prior_at = float("-inf")
        self.epoch: str | None = None
        self.seq = 0
        self._profiles: OrderedDict[str, np.ndarray] = OrderedDict()

    def sync(self) -> int:
        """Apply what changed since the last sync (and, when due, take the prior); returns how many
        users were updated."""
        if self.fetch_prior is not None and time.monotonic() - self._prior_at >= self.prior_every_s:
            self.prior = self.fetch_prior()
            self._prior_at = time.monotonic()
        epoch, seq, users, vectors = self.fetch(self.epoch, self.seq, self.capacity)
        profiles = self._profiles
        if epoch != self.epoch:
            profiles = OrderedDict()
        for user, vec in zip(reversed(users), vectors[::-1]):  # answered newest first: apply oldest first
            profiles.pop(user, None)
            if vec.any():  # zeros: no item of the history is in the catalog, so no profile
                profiles[user] = vec
        while len(profiles) > self.capacity:
            profiles.popitem(last=False)
        self._profiles, self.epoch, self.seq = profiles, epoch, seq
        return len(users)

    def get(self, user_id: str) -> np.ndarray | None:
        """(d,) pooled profile of ``user_id``, or None when the user has no known history."""
        return self._profiles.get(user_id)

    def __len__(self) -> int:
        return len(self._profiles)
