"""User profiles: bounded recent histories and the pooled profile vector.

:func:`pool_profile` is the one function serving and training use to turn a user's recent items
into a vector, so the two never drift apart. :class:`HistoryBook` is the pure state behind the
ProfileStore actor (no Ray, no I/O: it serialises to JSON and back).
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["pool_profile", "blend_profile", "popularity_prior", "blend_with_prior", "HistoryBook"]


def pool_profile(item_vectors: np.ndarray, ages_s: Sequence[float] | np.ndarray, half_life_s: float) -> np.ndarray:
    """Recency-weighted mean of item vectors, L2-normalised.

    item_vectors: (n, d) float; ages_s: (n,) seconds since each interaction (>= 0);
    returns (d,) float32 — all zeros when n == 0 (the cold-start profile).
    """
    v = np.asarray(item_vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"item_vectors must be (n, d), got shape {v.shape}")
    ages = np.asarray(ages_s, dtype=np.float64)
    if ages.shape != (v.shape[0],):
        raise ValueError(f"ages_s must be ({v.shape[0]},), got shape {ages.shape}")
    if half_life_s <= 0:
        raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
    if v.shape[0] == 0:
        return np.zeros(v.shape[1], dtype=np.float32)
    w = np.power(0.5, np.clip(ages, 0, None) / half_life_s).astype(np.float32)
    pooled = (w[:, None] * v).sum(0) / max(float(w.sum()), 1e-12)
    norm = float(np.linalg.norm(pooled))
    return (pooled / norm if norm > 0 else pooled).astype(np.float32)


def blend_profile(history: np.ndarray, prior: np.ndarray | None, prior_weight: float = 0.5) -> np.ndarray:
    """(B, d) pooled histories blended with (B, d) priors (the user's own text), L2-normalised.

    A user with no history gets the prior alone (cold start); with history, the prior keeps a
    fixed weight. Zeros stay zeros (no history, no prior).
    """
    h = np.asarray(history, dtype=np.float32)
    if prior is None:
        return h
    v = h + prior_weight * np.asarray(prior, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.where(n > 0, n, 1.0)).astype(np.float32)


def popularity_prior(recent_items: Iterable[str], item_index: Mapping[str, int], item_vectors: np.ndarray) -> np.ndarray | None:
    """(d,) what a user nobody knows yet is likely to want: the mean vector of the items of the
    recent positive events, each item weighted by its events, L2-normalised. None when no event
    names an item of the catalog."""
    counts: dict[int, int] = {}
    for item in recent_items:
        r = item_index.get(item)
        if r is not None:
            counts[r] = counts.get(r, 0) + 1
    if not counts:
        return None
    rows = np.fromiter(counts, np.int64, len(counts))
    w = np.fromiter(counts.values(), np.float32, len(counts))
    v = (w[:, None] * np.asarray(item_vectors, np.float32)[rows]).sum(0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


def blend_with_prior(pooled: np.ndarray, n_events: int, prior: np.ndarray | None, prior_events: float) -> np.ndarray:
    """(d,) a user's pooled history blended with the popularity prior, the history weighing
    ``n / (n + prior_events)`` (n: the user's events), L2-normalised: one click leans on what
    everyone likes, fifty speak for themselves. ``prior_events`` 0 or no prior: the history alone."""
    h = np.asarray(pooled, np.float32)
    if prior is None or prior_events <= 0 or n_events <= 0 or not h.any():
        return h
    w = n_events / (n_events + prior_events)
    v = w * h + (1 - w) * np.asarray(prior, np.float32)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


class HistoryBook:
    """Per-user recent interactions (item id, unix ts), newest last, at most ``history_length`` each.

    Users are kept in LRU order up to ``max_users`` so memory stays bounded. Every recorded event
    bumps ``seq`` and stamps its user with it, so readers that mirror profiles ask only for the
    users that changed since the ``seq`` they saw (:meth:`changed_since`).
    """

    def __init__(self, history_length: int = 50, max_users: int = 1_000_000):
        self.history_length = history_length
        self.max_users = max_users
        self._h: OrderedDict[str, deque[tuple[str, float]]] = OrderedDict()
        self._stamp: dict[str, int] = {}
        self.seq = 0

    def record(self, events: Iterable[tuple[str, str, float]]) -> int:
        n = 0
        for user, item, ts in events:
            d = self._h.get(user)
            if d is None:
                d = self._h[user] = deque(maxlen=self.history_length)
                if len(self._h) > self.max_users:
                    del self._stamp[self._h.popitem(last=False)[0]]
            else:
                self._h.move_to_end(user)
            d.append((item, float(ts)))
            self.seq += 1
            self._stamp[user] = self.seq
            n += 1
        return n

    def changed_since(self, seq: int, limit: int) -> list[str]:
        """Users whose history changed after ``seq``, most recent first, at most ``limit`` of them."""
        out: list[str] = []
        for user in reversed(self._h):  # LRU order is change order: stop at the first older one
            if self._stamp[user] <= seq or len(out) >= limit:
                break
            out.append(user)
        return out

    def history(self, user: str) -> list[tuple[str, float]]:
        return list(self._h.get(user, ()))

    def __len__(self) -> int:
        return len(self._h)

    def profile(self, user: str, item_index: Mapping[str, int], item_vectors: np.ndarray, now: float,
                half_life_s: float) -> np.ndarray:
        """(d,) pooled vector of the user's known items (zeros for an unknown user)."""
        hist = [(item_index[i], ts) for i, ts in self.history(user) if i in item_index]
        rows = np.asarray([r for r, _ in hist], dtype=np.int64)
        ages = np.asarray([now - ts for _, ts in hist], dtype=np.float64)
        return pool_profile(item_vectors[rows] if len(rows) else item_vectors[:0], ages, half_life_s)

    def to_json(self) -> bytes:
        """All histories as JSON (what the ProfileStore snapshots)."""
        data = {"history_length": self.history_length, "users": {u: list(map(list, d)) for u, d in self._h.items()}}
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, blob: bytes, history_length: int | None = None, max_users: int = 1_000_000) -> "HistoryBook":
        data = json.loads(blob)
        book = cls(history_length or int(data["history_length"]), max_users)
        for user, items in data["users"].items():
            book.record((user, i, ts) for i, ts in items)
        return book
