"""Ranker deployment: retrieval, policy scoring, exploration with logged propensities, hot-swapped versions.

Each replica follows the PolicyStore (:class:`serve.follower.PolicyFollower`) from a background
thread every ``serve.policy_poll_s``; a new version is fetched, validated and warmed up off the
request path, then swapped in one assignment (:meth:`serve.ranking.RankingCore.swap`). A request
ranks with one consistent (featurizer, policy, version) snapshot. ``check_health`` fails when
no policy is loaded or the loaded one scores non-finite numbers, so Serve replaces the replica.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import ray
from ray import serve

from serve.follower import PolicyFollower
from serve.ranking import RankingCore
from streamrec.config import StreamrecSettings, settings_from_args
from streamrec.profile import blend_profile

__all__ = ["Ranker", "RankerCore"]

log = logging.getLogger(__name__)
NAMESPACE = "streamrec"


class RankerCore:
    """Everything a Ranker replica does, without Serve (the bare-process peer in bench/serve.py uses it too)."""

    def __init__(self, settings: StreamrecSettings, store, profiles=None, *, seed: int | None = None):
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
        self.poll()

    def poll(self) -> bool:
        swapped = self.follower.poll()
        cur = self.follower.current
        if swapped and cur is not None:
            if self.core is None:
                self.core = RankingCore(cur.featurizer, self.index, cur.policy, cur.version,
                                        self.settings.policy.num_candidates)
            else:
                self.core.swap(cur.featurizer, cur.policy, cur.version)
        return swapped

    def profile(self, user_id: str, history: np.ndarray | None) -> np.ndarray | None:
        prior = self.user_prior.get(user_id)
        if history is None and prior is None:
            return None
        d = self.follower.item_vectors.shape[1]
        h = np.zeros((1, d), np.float32) if history is None else np.asarray(history, np.float32)[None]
        return blend_profile(h, None if prior is None else prior[None])[0]

    def rank(self, request: dict, context_vec: np.ndarray | None, history: np.ndarray | None) -> dict:
        core = self.core
        if core is None:
            raise RuntimeError("no policy version is loaded yet")
        ctx = request.get("context") or {}
        r = core.rank(self.profile(request["user_id"], history), context_vec, ctx, request.get("k", 10), self.rng,
                      ts=time.time(), candidates=request.get("candidates"), exclude=request.get("exclude") or ())
        return {"items": r.items, "scores": [float(x) for x in r.scores],
                "propensities": [float(x) for x in r.propensities], "policy_version": r.version,
                "features": r.features, "replica": self.replica}

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


@serve.deployment(name="Ranker", ray_actor_options={"num_cpus": 0.2}, health_check_period_s=2,
                  health_check_timeout_s=10)
class Ranker:
    def __init__(self, args: dict[str, Any]):
        from actors.policy_store import get_or_create_store

        self.settings = settings_from_args(args)
        t = self.settings.trainer
        store = get_or_create_store(t.store_dir, t.keep_versions)  # the cluster's one store (named, detached)
        try:
            profiles = ray.get_actor("streamrec-profiles", namespace=NAMESPACE)
        except ValueError:
            profiles = None  # deployed without the stream: profiles from user text only
        self.core = RankerCore(self.settings, store, profiles)
        self.poll_s = self.settings.serve.policy_poll_s
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name="policy-follower", daemon=True).start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.core.poll()
            except Exception as e:  # the store restarting, a network blip: keep serving what we have
                self.core.follower.last_error = f"{type(e).__name__}: {e}"

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (never weights): ``policy_poll_s``."""
        self.poll_s = float(user_config.get("policy_poll_s", self.poll_s))

    async def rank(self, request: dict, context_vec: np.ndarray | None) -> dict:
        history = None
        if self.core.profiles is not None:
            try:
                history = (await self.core.profiles.profiles.remote([request["user_id"]]))[0]
                if not history.any():
                    history = None
            except Exception:  # profiles unavailable: rank from context and user text
                history = None
        return self.core.rank(request, context_vec, history)

    def status(self) -> dict:
        f = self.core.follower
        return {"replica": self.core.replica, "version": f.version, "swaps": f.swaps, "refused": f.refused,
                "last_error": f.last_error}

    def check_health(self) -> None:
        self.core.healthy()

    def __del__(self):
        self._stop.set()
