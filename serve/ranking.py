"""Ranking: one request's ranking, from user and context to a logged slate. No Serve, no Kafka.

The Ranker deployment, the bare-process peer in ``bench/serve.py`` and the learning benchmark's
simulated clients all rank through this class, so they run the same code::

    ranking = Ranking(featurizer, index, policy, version=3, num_candidates=200)
    r = ranking.rank(profile, context_vec, context, k=10, rng=rng)
    r.items, r.scores, r.propensities       # (K,) each
    r.features                              # rl.logged.ImpressionFeatures: what training needs to rebuild the input

Experiments: ``swap(..., experiment=ServedExperiment(...))`` serves an operator's arms to their
users (sticky: :mod:`rl.experiment`); a request of a served arm ranks with that arm's version and
logs its own propensities, one of a shadow arm ranks with the live version and logs the shadow
version's slate beside it.

Canary: ``swap(..., canary=ServedExperiment(...))`` is the trainer's canary, an experiment of one
arm (:func:`rl.experiment.canary_experiment`): its users are drawn first (after the control arm),
under its own salt, and served by the candidate like any served arm.

Candidates: half retrieved from the item index by the user's query vector (profile + context
text), the rest drawn uniformly from the catalog (exploration; a new item can be shown before
anyone clicked it). A new user's profile is the popularity prior (``serve.replica.Replica.profile``);
with no profile and no context text (before any positive event) the candidates are drawn
uniformly and the policy's item-level knowledge (popularity, item-id embeddings, text) ranks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rl.experiment import bucket
from rl.features import Featurizer, context_features
from rl.logged import ImpressionFeatures, ShadowSlate
from rl.policies import Policy
from rl.bandits import uniform_position_probs
from rl.spec import Observation

__all__ = ["Ranking", "Ranked", "in_control"]


def in_control(user_id: str, share: float, salt: str) -> bool:
    """Whether ``user_id`` is in the control arm: its :func:`rl.experiment.bucket` under ``salt``
    below ``share``. Sticky (the same user, the same arm, on every replica) and independent of
    anything else the user does, and of any experiment's assignment (another salt)."""
    return share > 0 and bucket(user_id, salt) < share


class _Pool:
    """The catalog candidates come from: its item index and ids (one catalog version)."""

    __slots__ = ("index", "ids")

    def __init__(self, index, featurizer: Featurizer):
        self.index = index
        self.ids = featurizer.item_ids.astype(str)


@dataclass
class Ranked:
    items: list[str]
    scores: np.ndarray
    propensities: np.ndarray
    features: ImpressionFeatures
    version: int


class Ranking:
    def __init__(self, featurizer: Featurizer, index, policy: Policy, version: int, num_candidates: int,
                 retrieval_share: float = 0.5):
        self.max_candidates = num_candidates
        self.retrieval_share = retrieval_share
        self._live = (featurizer, policy, int(version), None, _Pool(index, featurizer), None)

    def swap(self, featurizer: Featurizer, policy: Policy, version: int, canary=None, index=None,
             experiment=None) -> None:
        """Atomically replace what ranks: one attribute holds the (featurizer, policy, version,
        canary, candidate pool, experiment) tuple, so a request reads old or new, never half
        (separate attribute stores could interleave with a request's reads). ``canary`` and
        ``experiment``: a :class:`serve.follower.ServedExperiment` each (the trainer's canary, the
        operator's experiment) or None; ``index``: the item index of the featurizer's catalog when
        the catalog changed (else the current one stays)."""
        pool = self._live[4] if index is None else _Pool(index, featurizer)
        self._live = (featurizer, policy, int(version), canary, pool, experiment)

    @property
    def index(self):
        return self._live[4].index

    @property
    def num_candidates(self) -> int:
        return min(self.max_candidates, len(self._live[4].ids))

    @property
    def canary(self):
        return self._live[3]

    @property
    def experiment(self):
        return self._live[5]

    @property
    def featurizer(self) -> Featurizer:
        return self._live[0]

    @property
    def policy(self):
        return self._live[1]

    @property
    def version(self) -> int:
        return self._live[2]

    def candidates(self, query: np.ndarray | None, rng: np.random.Generator, exclude: Sequence[str] = (),
                   pool: "_Pool | None" = None) -> list[str]:
        pool = pool or self._live[4]
        n = min(self.max_candidates, len(pool.ids))
        excluded = set(exclude)
        out: list[str] = []
        seen: set[str] = set()
        if query is not None and np.linalg.norm(query) > 0:
            want = int(n * self.retrieval_share)
            _, ids = pool.index.search(query[None, :], min(len(pool.ids), want + len(excluded)))
            for i in ids[0]:
                i = str(i)
                if i not in excluded and i not in seen:
                    out.append(i)
                    seen.add(i)
                if len(out) >= want:
                    break
        every = pool.ids
        while len(out) < n and len(seen) + len(excluded) < len(every):
            for r in rng.choice(len(every), min(len(every), 2 * (n - len(out)) + 8), replace=False):
                i = every[r]
                if i not in excluded and i not in seen:
                    out.append(i)
                    seen.add(i)
                    if len(out) >= n:
                        break
        return out

    def rank(self, profile: np.ndarray | None, context_vec: np.ndarray | None, context: dict | None, k: int,
             rng: np.random.Generator, *, ts: float | None = None, candidates: Sequence[str] | None = None,
             exclude: Sequence[str] = (), control: bool = False, user_id: str | None = None) -> Ranked:
        """``control``: the request belongs to the control arm (:func:`in_control`): a uniformly
        random slate of the same candidates, logged with its exact propensities, the live version
        and ``arm: control``. ``user_id``: whose request it is, for the canary's and then the
        experiment's assignment (:meth:`rl.experiment.Experiment.arm_of`): a served arm ranks with
        its own version (logged with its version and name), a shadow arm's slate is logged beside
        the live one's."""
        featurizer, policy, version, canary, pool, experiment = self._live  # one consistent snapshot
        if candidates is None:
            query = None
            if profile is not None or context_vec is not None:
                query = (0 if profile is None else profile) + (0 if context_vec is None else context_vec)
                query = np.asarray(query, np.float32)
            candidates = self.candidates(query, rng, exclude, pool)
        else:
            excluded = set(exclude)
            candidates = [c for c in dict.fromkeys(map(str, candidates)) if c not in excluded]
        if not candidates:
            raise ValueError("no candidates left to rank (all excluded?)")
        k = min(k, len(candidates))
        user = featurizer.user_features(profile, context_vec, context_features(context, ts))
        obs = Observation(user, featurizer.candidate_features(candidates), featurizer.rows(candidates))
        if control:
            n = len(candidates)
            slate, probs = rng.permutation(n)[:k], uniform_position_probs(n, k)
            scores = np.zeros(n)
            return Ranked([candidates[i] for i in slate], scores[slate], probs,
                          ImpressionFeatures(tuple(candidates), user, scores, "random", "control"), version)
        arm = served = None
        if user_id is not None:
            for exp in (canary, experiment):  # the canary's users first, under its own salt
                a = None if exp is None else exp.experiment.arm_of(user_id)
                if a is not None and a.name in exp.policies:  # else not loaded here: the live version serves
                    arm, served = a, exp
                    break
        if arm is not None and not arm.shadow:
            arm_policy, arm_version = served.policies[arm.name]
            slate, probs, scores = arm_policy.select(obs, k, rng)
            return Ranked([candidates[i] for i in slate], np.asarray(scores)[slate], np.asarray(probs),
                          ImpressionFeatures(tuple(candidates), user, np.asarray(scores), arm_policy.algorithm,
                                             arm.name), arm_version)
        slate, probs, scores = policy.select(obs, k, rng)
        shadow = None
        if arm is not None:  # a shadow arm: its version's own slate of the same request, never shown
            shadow_policy, shadow_version = served.policies[arm.name]
            s_slate, s_probs, _ = shadow_policy.select(obs, k, rng)
            shadow = ShadowSlate(arm.name, shadow_version, tuple(candidates[i] for i in s_slate),
                                 tuple(map(float, s_probs)))
        items = [candidates[i] for i in slate]
        return Ranked(items, np.asarray(scores)[slate], np.asarray(probs),
                      ImpressionFeatures(tuple(candidates), user, np.asarray(scores), policy.algorithm,
                                         shadow=shadow), version)
