"""Replica: what one Ranker replica does, without Serve: retrieval, policy scoring, exploration
with logged propensities, hot-swapped versions, live user profiles.

:class:`Replica` follows the PolicyStore (:class:`serve.follower.PolicyFollower`): a new version
is fetched, validated and warmed up off the request path, then swapped in one assignment
(:meth:`serve.ranking.Ranking.swap`), so a request ranks with one consistent (featurizer, policy,
version) snapshot. A :class:`serve.profile_mirror.ProfileMirror` keeps the replica's copy of the
users' pooled profiles current by asking the ProfileStore for what changed, so no request waits
on another actor for its profile. Two background threads of the Ranker deployment
(``serve/app.py``) drive them: :meth:`Replica.follow` waits on the store (a long poll) and swaps
as soon as a version is published, :meth:`Replica.sync_profiles` pulls changed profiles every
``serve.profile_sync_s``; the bare-process peer in ``bench/`` uses the same class.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np

from rl.manifest import serving_key
from rl.spec import Observation
from serve.follower import PolicyFollower, StoreReader
from serve.profile_mirror import ProfileMirror
from serve.ranking import Ranking, in_control
from streamrec.config import StreamrecSettings
from streamrec.profile import blend_profile

__all__ = ["NotReady", "Replica"]

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """The replica cannot rank yet; the message says what it waits for (answered as a 503)."""


class Replica:
    """Everything a Ranker replica does, without Serve (the bare-process peer in bench/serve.py uses it too).

    It starts whatever exists: before the embedding job has written vectors, or before the
    trainer has published a version, :meth:`not_ready` names what is missing and :meth:`rank`
    raises :class:`NotReady`; :meth:`follow` keeps looking and the replica serves once both exist.
    """

    def __init__(self, settings: StreamrecSettings, store: StoreReader, profiles: ProfileMirror | None = None, *,
                 seed: int | None = None, name: str | None = None):
        self.settings = settings
        self.store = store
        self.follower: PolicyFollower | None = None
        self.index = None
        self.user_prior: dict[str, np.ndarray] = {}
        self.profiles = profiles
        self.rng = np.random.default_rng(seed)
        self.ranking: Ranking | None = None
        self.replica = name or uuid.uuid4().hex[:8]  # answered in X-Streamrec-Replica
        self._seen: list | None = None  # the store's serving_key this replica last took
        self.last_error: str | None = None
        self.catalog_version: str | None = None  # the embedding run served
        self.refused_catalog: tuple | None = None
        """(embedding run, the store's serving key then): a catalog whose rows neither the served
        version nor the store's could use, tried again once the store serves something else."""
        self.catalog_swaps = 0
        self._swap = threading.RLock()  # a version swap and a catalog swap never interleave
        self.poll()

    def _load_catalog(self) -> bool:
        """The live embedding run's item (and user) vectors, once they exist; a later run (a new
        catalog version) replaces them while the replica serves. True when it took a catalog."""
        from streamrec.index import ItemIndex
        from streamrec.vectors import load_catalog, load_vectors

        out = self.settings.embedding.output_dir
        try:
            catalog = load_catalog(out)
        except FileNotFoundError:
            return False
        try:
            uids, uvecs, _ = load_vectors(out, "users")
            user_prior = {str(u): v for u, v in zip(uids, uvecs)}
        except FileNotFoundError:
            user_prior = {}
        index = ItemIndex.build(catalog.ids, catalog.vectors)
        with self._swap:
            if self.follower is None:
                self.follower = PolicyFollower(self.store, catalog.ids, catalog.vectors, rows=catalog.rows,
                                               num_rows=catalog.num_rows, row_ids=catalog.row_ids,
                                               explore=self.settings.serve.explore)
            else:
                try:
                    self.follower.set_catalog(catalog.ids, catalog.vectors, catalog.rows, catalog.num_rows,
                                              catalog.row_ids)
                except ValueError as e:  # its rows stand for other items than the served version's
                    fresh = PolicyFollower(self.store, catalog.ids, catalog.vectors, rows=catalog.rows,
                                           num_rows=catalog.num_rows, row_ids=catalog.row_ids,
                                           explore=self.settings.serve.explore)
                    if not fresh.poll():  # nor the store's: keep serving what is loaded
                        self.refused_catalog = (catalog.version, self._seen)
                        self.last_error = f"catalog {catalog.version} refused: {e}"
                        log.error("%s", self.last_error)
                        return False
                    self.follower = fresh  # a new lineage for the renumbered catalog: both swap in at once
            self.user_prior, self.index, self.catalog_version = user_prior, index, catalog.version
            cur = self.follower.current
            if cur is not None and self.ranking is not None:  # the served version over the new catalog
                self.ranking.swap(cur.featurizer, cur.policy, cur.version, self.follower.canary, index=index,
                                  experiment=self.follower.experiment)
        return True

    def sync_catalog(self) -> bool:
        """Follow the embedding output: when its live run changed, serve the new catalog (index,
        vectors, rows) without a pause, then take a version that waited for it. True when it changed."""
        from streamrec.vectors import read_manifest

        if self.follower is None:
            return self.poll()
        try:
            manifest = read_manifest(self.settings.embedding.output_dir)
        except Exception as e:  # storage unreachable: keep serving what is loaded
            self.last_error = f"catalog: {type(e).__name__}: {e}"
            return False
        if manifest is None or str(manifest.get("run_id")) == self.catalog_version:
            return False
        if self.refused_catalog == (str(manifest.get("run_id")), self._seen):
            return False
        if self._load_catalog():
            self.catalog_swaps += 1
            self.poll()
            return True
        return False

    def not_ready(self) -> str | None:
        """Why this replica cannot rank yet, or None when it can."""
        if self.follower is None:
            return (f"no embeddings yet: nothing at {self.settings.embedding.output_dir} "
                    "(run the embedding job: streamrec embed, or python -m cluster.jobs.embed)")
        if self.ranking is None:
            why = f" ({self.follower.last_error})" if self.follower.last_error else ""
            return f"no policy yet: the trainer has not published a version for this catalog{why}"
        return None

    def poll(self, state: dict | None = None) -> bool:
        if self.follower is None and not self._load_catalog():
            return False
        with self._swap:
            swapped = self.follower.poll(state)
            cur = self.follower.current
            if swapped and cur is not None:
                if self.ranking is None:
                    self.ranking = Ranking(cur.featurizer, self.index, cur.policy, cur.version,
                                           self.settings.policy.num_candidates)
                self.ranking.swap(cur.featurizer, cur.policy, cur.version, self.follower.canary,
                                  index=None if self.ranking.index is self.index else self.index,
                                  experiment=self.follower.experiment)
        return swapped

    def follow(self, wait_s: float) -> bool:
        """Wait (up to ``wait_s``) until the store serves something other than what this replica
        last took from it, then take it. Without a catalog yet: look for one, without waiting.
        True when what is served changed."""
        if self.follower is None:
            return self.poll()
        state = self.store.serving_change(self._seen, wait_s)
        swapped = self.poll(state)
        self._seen = serving_key(state)  # after the poll: a failed fetch is asked for again at once
        return swapped

    def sync_profiles(self) -> None:
        """Pull the users whose profiles changed (feedback -> served profile)."""
        if self.profiles is not None:
            try:
                self.profiles.sync()
            except Exception as e:  # profiles go stale, requests still rank (context, user text)
                self.last_error = f"profiles: {type(e).__name__}: {e}"

    def profile(self, user_id: str, history: np.ndarray | None) -> np.ndarray | None:
        """The user's query vector: the mirrored history (already blended with the popularity
        prior while it is short) and the user's own text; a user with neither ranks from the
        popularity prior, and with no prior yet, from the request's context alone (None)."""
        prior = self.user_prior.get(user_id)
        if history is None and prior is None:
            return None if self.profiles is None else self.profiles.prior
        d = self.follower.item_vectors.shape[1]
        h = np.zeros((1, d), np.float32) if history is None else np.asarray(history, np.float32)[None]
        return blend_profile(h, None if prior is None else prior[None])[0]

    def rank(self, request: dict, context_vec: np.ndarray | None) -> dict:
        """``request``: the RecommendRequest as a dict; ``context_vec``: (d,) encoded context text or None."""
        ranking = self.ranking
        if ranking is None:
            raise NotReady(self.not_ready())
        ctx = request.get("context") or {}
        user = request["user_id"]
        history = None if self.profiles is None else self.profiles.get(user)
        sv = self.settings.serve
        r = ranking.rank(self.profile(user, history), context_vec, ctx, request.get("k", 10), self.rng,
                         ts=time.time(), candidates=request.get("candidates"), exclude=request.get("exclude") or (),
                         control=in_control(user, sv.control_share, sv.control_salt), user_id=user)
        return {"items": r.items, "scores": [float(x) for x in r.scores],
                "propensities": [float(x) for x in r.propensities], "policy_version": r.version,
                "features": r.features.to_dict(), "replica": self.replica}

    def status(self) -> dict:
        f = self.follower
        if f is None:
            return {"replica": self.replica, "version": None, "canary": None, "swaps": 0, "refused": 0, "rollbacks": 0,
                    "last_rollback": None, "last_error": self.last_error, "not_ready": self.not_ready(),
                    "profiles": None if self.profiles is None else len(self.profiles)}
        exp = None if f.experiment is None else {"name": f.experiment.experiment.name,
                                                 "arms": sorted(f.experiment.policies)}
        return {"replica": self.replica, "version": f.version, "canary": f.canary_version,
                "experiment": exp,
                "catalog": self.catalog_version, "catalog_items": len(f.item_ids), "catalog_swaps": self.catalog_swaps,
                "swaps": f.swaps, "refused": f.refused, "rollbacks": f.rollbacks, "last_rollback": f.last_rollback,
                "last_error": self.last_error or f.last_error, "not_ready": self.not_ready(),
                "profiles": None if self.profiles is None else len(self.profiles)}

    def healthy(self) -> None:
        """Raises when what is loaded is broken. A replica still waiting for embeddings or a policy
        is healthy (it answers 503 with the reason); Serve must not restart it for that."""
        cur = None if self.follower is None else self.follower.current
        if cur is None:
            return
        n = min(cur.spec.num_candidates, len(cur.featurizer.item_ids))
        obs = Observation(np.zeros(cur.spec.layout.user_dim, np.float32), cur.featurizer.projected[:n],
                          np.arange(1, n + 1))
        if not np.isfinite(cur.policy.scores(obs)).all():
            raise RuntimeError(f"policy version {cur.version} scores NaN or infinity")
