"""What a Ranker replica does, without Serve: retrieval, policy scoring, exploration with logged
propensities, hot-swapped versions, live user profiles.

:class:`RankerCore` follows the PolicyStore (:class:`serve.follower.PolicyFollower`): a new
version is fetched, validated and warmed up off the request path, then swapped in one assignment
(:meth:`serve.ranking.RankingCore.swap`), so a request ranks with one consistent (featurizer,
policy, version) snapshot. :class:`ProfileMirror` keeps the replica's copy of the users' pooled
profiles current by asking the ProfileStore for what changed, so no request waits on another
actor for its profile. Both are driven by :meth:`RankerCore.tick` from one background thread of
the Serve deployment (``serve/app.py``); the bare-process peer in ``bench/`` uses the same core.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Callable

import numpy as np

from serve.follower import PolicyFollower
from serve.ranking import RankingCore
from streamrec.config import StreamrecSettings
from streamrec.profile import blend_profile

__all__ = ["ProfileMirror", "RankerCore"]

#: ``fetch(epoch, seq, limit) -> (epoch, seq, user_ids, (B, d) profiles)``: ProfileStore.changes_since
FetchChanges = Callable[[str | None, int, int], tuple[str, int, list[str], np.ndarray]]


class ProfileMirror:
    """A replica's copy of the users' pooled profile vectors, brought up to date by deltas.

    ``sync()`` asks ``fetch`` for the users changed since the last answer (one call, every
    ``serve.profile_sync_s``, off the request path); ``get(user)`` is a dict lookup. It holds the
    ``capacity`` most recently changed users. A store that restarted answers with a new epoch and
    everything it has, and the mirror starts over from that.
    """

    def __init__(self, fetch: FetchChanges, capacity: int = 100_000):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.fetch, self.capacity = fetch, capacity
        self.epoch: str | None = None
        self.seq = 0
        self._profiles: OrderedDict[str, np.ndarray] = OrderedDict()

    def sync(self) -> int:
        """Apply what changed since the last sync; returns how many users were updated."""
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


class RankerCore:
    """Everything a Ranker replica does, without Serve (the bare-process peer in bench/serve.py uses it too)."""

    def __init__(self, settings: StreamrecSettings, store, profiles: ProfileMirror | None = None, *,
                 seed: int | None = None):
        from streamrec.index import ItemIndex
        from streamrec.vectors import load_vectors

        self.settings = settings
        ids, vectors, manifest = load_vectors(settings.embedding.output_dir)
        self.user_prior: dict[str, np.ndarray] = {}
        try:
            uids, uvecs, _ = load_vectors(settings.embedding.output_dir, "users")
            self.user_prior = {str(u): v for u, v in zip(uids, uvecs)}
        except FileNotFoundError:
            pass
        self.follower = PolicyFollower(store, ids, vectors, explore=settings.serve.explore)
        self.index = ItemIndex.build(ids, vectors)
        self.profiles = profiles
        self.rng = np.random.default_rng(seed)
        self.core: RankingCore | None = None
        self.replica = uuid.uuid4().hex[:8]
        self._next_profile_sync = 0.0
        self.last_error: str | None = None
        self.poll()

    def poll(self) -> bool:
        swapped = self.follower.poll()
        cur = self.follower.current
        if swapped and cur is not None:
            if self.core is None:
                self.core = RankingCore(cur.featurizer, self.index, cur.policy, cur.version,
                                        self.settings.policy.num_candidates)
            self.core.swap(cur.featurizer, cur.policy, cur.version, self.follower.canary)
        return swapped

    def tick(self, now: float | None = None) -> None:
        """One beat of the background thread: a newer policy version, and profile changes when due."""
        now = time.monotonic() if now is None else now
        try:
            self.poll()
        except Exception as e:  # the store restarting, a network blip: keep serving what we have
            self.last_error = f"policy: {type(e).__name__}: {e}"
        if self.profiles is not None and now >= self._next_profile_sync:
            self._next_profile_sync = now + self.settings.serve.profile_sync_s
            try:
                self.profiles.sync()
            except Exception as e:  # profiles go stale, requests still rank (context, user text)
                self.last_error = f"profiles: {type(e).__name__}: {e}"

    def profile(self, user_id: str, history: np.ndarray | None) -> np.ndarray | None:
        prior = self.user_prior.get(user_id)
        if history is None and prior is None:
            return None
        d = self.follower.item_vectors.shape[1]
        h = np.zeros((1, d), np.float32) if history is None else np.asarray(history, np.float32)[None]
        return blend_profile(h, None if prior is None else prior[None])[0]

    def rank(self, request: dict, context_vec: np.ndarray | None) -> dict:
        """``request``: the RecommendRequest as a dict; ``context_vec``: (d,) encoded context text or None."""
        core = self.core
        if core is None:
            raise RuntimeError("no policy version is loaded yet")
        ctx = request.get("context") or {}
        user = request["user_id"]
        history = None if self.profiles is None else self.profiles.get(user)
        r = core.rank(self.profile(user, history), context_vec, ctx, request.get("k", 10), self.rng,
                      ts=time.time(), candidates=request.get("candidates"), exclude=request.get("exclude") or ())
        return {"items": r.items, "scores": [float(x) for x in r.scores],
                "propensities": [float(x) for x in r.propensities], "policy_version": r.version,
                "features": r.features, "replica": self.replica}

    def status(self) -> dict:
        f = self.follower
        return {"replica": self.replica, "version": f.version, "canary": f.canary.version if f.canary else None,
                "swaps": f.swaps, "refused": f.refused,
                "last_error": self.last_error or f.last_error,
                "profiles": None if self.profiles is None else len(self.profiles)}

    def healthy(self) -> None:
        cur = self.follower.current
        if cur is None:
            raise RuntimeError("no policy loaded")
        n = min(cur.spec.num_candidates, len(cur.featurizer.item_ids))
        from rl.policies import Observation

        obs = Observation(np.zeros(cur.spec.layout.user_dim, np.float32), cur.featurizer.projected[:n],
                          np.arange(1, n + 1))
        if not np.isfinite(cur.policy.scores(obs)).all():
            raise RuntimeError(f"policy version {cur.version} scores NaN or infinity")
