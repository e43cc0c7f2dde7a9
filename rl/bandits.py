"""Slate bandits: one small class per algorithm, behind the serving interface of :mod:`rl.policies`.

Every bandit ranks an :class:`rl.spec.Observation` and says exactly how likely its slate was::

    pol = LinUCBPolicy(spec)
    slate, probs, scores = pol.select(obs, k, rng)   # (K,) candidate indices, (K,) per-position probs, (N,)
    pol.position_probabilities(obs, slate)           # (K,): what the gate's importance weights use
    pol.update_batch(observations, slates, clicks)   # learn from logged slates
    tensors = pol.state()                            # what the PolicyStore publishes

:class:`RandomPolicy` and :class:`PopularityPolicy` are baselines; :class:`EpsilonGreedyPolicy`,
:class:`LinUCBPolicy` and :class:`ThompsonPolicy` rank with a :class:`rl.linear.LinearModel` over
:func:`bandit_features`. Every bandit counts shows and clicks per item row (popularity ranks by
them; the others publish them for the record).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from rl.features import CONTEXT_DIM
from rl.linear import LinearModel
from rl.slate import diverse_greedy, diverse_greedy_batch, mixture_position_probs, prefix_frequencies
from rl.spec import Observation, PolicySpec

__all__ = ["bandit_features", "bandit_dim", "egreedy_position_probs", "uniform_position_probs", "BanditPolicy",
           "RandomPolicy", "PopularityPolicy", "EpsilonGreedyPolicy", "LinUCBPolicy", "ThompsonPolicy"]


def bandit_features(obs: Observation) -> np.ndarray:
    """(N, 1 + 7m) per-candidate features of the linear bandits.

    [1, item, profile*item, context-text*item, daypart one-hot (x) item] — the last block lets a
    linear model learn tastes that change with the time of day.
    """
    m = obs.items.shape[1]
    u = obs.user
    items = obs.items.astype(np.float64)
    dayparts = u[2 * m + 2: 2 * m + 6]
    n = len(items)
    return np.concatenate([np.ones((n, 1)), items, items * u[:m], items * u[m:2 * m],
                           (items[:, None, :] * dayparts[None, :, None]).reshape(n, -1)], 1)


def bandit_dim(m: int) -> int:
    return 1 + 3 * m + 4 * m


assert CONTEXT_DIM >= 6  # bandit_features reads the dayparts at user[2m+2 : 2m+6] (rl.features' table)


def uniform_position_probs(n: int, k: int) -> np.ndarray:
    """(K,) a uniformly random slate's per-position probabilities: 1 / (N - j)."""
    return 1.0 / (n - np.arange(k))


def egreedy_position_probs(slate: np.ndarray, greedy: np.ndarray, n: int, epsilon: float) -> np.ndarray:
    """(K,) per-position conditional probabilities of an epsilon-greedy slate; their product is exact.

    Epsilon-greedy is a mixture: uniform slates (share eps) and the greedy one (share 1 - eps), so
    P(first j items) = eps * prod_{l<=j} 1/(n-l) + (1-eps) * [first j items == greedy's]
    (:func:`rl.slate.mixture_position_probs`).
    """
    on_greedy = (np.asarray(slate) == np.asarray(greedy)).astype(float)
    return mixture_position_probs(uniform_position_probs(n, len(slate)), on_greedy, epsilon)


class BanditPolicy:
    """What every bandit shares: per-row show and click counts, the diverse greedy slate, the state."""

    algorithm = ""

    def __init__(self, spec: PolicySpec):
        if spec.algorithm != self.algorithm:
            raise ValueError(f"{type(self).__name__} serves {self.algorithm!r}, not {spec.algorithm!r}")
        self.spec = spec
        self.clicks = np.zeros(spec.num_rows)
        self.shows = np.zeros(spec.num_rows)

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        raise NotImplementedError

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """(K,) probability of each item of ``slate`` given the items above it (product: the slate's)."""
        raise NotImplementedError

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        """The slate distribution as (slate, weight) pairs (what the off-policy direct method averages
        its click model over): ``draws`` samples unless a policy knows it exactly."""
        return [(self.select(obs, k, rng)[0], 1.0 / draws) for _ in range(draws)]

    def slate_probability(self, obs: Observation, slate: np.ndarray) -> float:
        return float(np.prod(self.position_probabilities(obs, slate)))

    def _greedy(self, obs: Observation, scores: np.ndarray, k: int) -> np.ndarray:
        """(K,) the deterministic slate for these scores (the diversity penalty applied)."""
        sim = obs.similarity() if self.spec.penalty > 0 else None
        return diverse_greedy(scores, sim, k, self.spec.penalty)

    def update(self, obs: Observation, slate: np.ndarray, clicks: np.ndarray) -> None:
        """Learn from one logged slate: (K,) candidate indices and (K,) click values."""
        self.update_batch([obs], [slate], [clicks])

    def update_batch(self, observations, slates, clicks) -> None:
        """Learn from B logged slates at once: B observations, (B, K) slates and (B, K) rewards by
        position (a click 1; other feedback as :class:`streamrec.rewards.RewardTable` values it).
        Popularity counts click-like positives; the linear models regress on the rewards."""
        slates, clicks = np.asarray(slates), np.asarray(clicks, float)
        if len(slates) == 0:
            return
        rows = self._rows(np.concatenate([o.rows[s] for o, s in zip(observations, slates)]))
        np.add.at(self.shows, rows, 1.0)
        np.add.at(self.clicks, rows, clicks.reshape(-1) > 0)
        self._learn(observations, slates, clicks)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows beyond the tables (items newer than this version) are row 0, the unknown item."""
        rows = np.asarray(rows, np.int64)
        return np.where((rows >= 0) & (rows < len(self.shows)), rows, 0)

    def _learn(self, observations, slates, clicks) -> None:
        """What a policy learns beyond the counts (nothing by default)."""

    def state(self) -> dict[str, np.ndarray]:
        return {"clicks": self.clicks.copy(), "shows": self.shows.copy()}

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> "BanditPolicy":
        self.clicks = np.asarray(tensors["clicks"], np.float64).copy()
        self.shows = np.asarray(tensors["shows"], np.float64).copy()
        return self

    @staticmethod
    def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        return {"clicks": (spec.num_rows,), "shows": (spec.num_rows,)}


class RandomPolicy(BanditPolicy):
    """Uniform slates: position j has probability 1/(N - j)."""

    algorithm = "random"

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.zeros(len(obs.rows))

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        n = len(obs.rows)
        if not 1 <= k <= n:
            raise ValueError(f"slate size k must be in [1, {n}], got {k}")
        return rng.permutation(n)[:k], uniform_position_probs(n, k), np.zeros(n)

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        return uniform_position_probs(len(obs.rows), len(slate))


class _GreedyPolicy(BanditPolicy):
    """A deterministic policy: the diverse greedy slate of its scores, probability 1."""

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        s = self.scores(obs, rng)
        return self._greedy(obs, s, k), np.ones(k), s

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """1 down to the first position where ``slate`` leaves the greedy slate, 0 from there."""
        slate = np.asarray(slate)
        return np.cumprod(slate == self._greedy(obs, self.scores(obs), len(slate))).astype(np.float64)

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        return [(self._greedy(obs, self.scores(obs), k), 1.0)]


class PopularityPolicy(_GreedyPolicy):
    """Rank by smoothed click-through per item row: (clicks + 0.1) / (shows + 1)."""

    algorithm = "popularity"

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        rows = self._rows(obs.rows)
        return (self.clicks[rows] + 0.1) / (self.shows[rows] + 1.0)


class _LinearPolicy(BanditPolicy):
    """A bandit over a ridge regression of clicks on :func:`bandit_features`."""

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        self.model = LinearModel(dim=bandit_dim(spec.m))

    def _learn(self, observations, slates, clicks) -> None:
        x = np.concatenate([bandit_features(o)[s] for o, s in zip(observations, slates)])
        self.model.update_many(x, clicks.reshape(-1))  # the typed reward of each shown item

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), **self.model.state()}

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> "BanditPolicy":
        super().load_state(tensors)
        self.model.load_state(tensors)
        return self

    @staticmethod
    def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        d = bandit_dim(spec.m)
        return {**BanditPolicy.expected_shapes(spec), "a_inv": (d, d), "b": (d,)}


class LinUCBPolicy(_LinearPolicy, _GreedyPolicy):
    """Score = x.theta + alpha * sqrt(x^T A^-1 x); the deterministic diverse top-k."""

    algorithm = "linucb"

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.model.ucb_scores(bandit_features(obs), self.spec.alpha)


class EpsilonGreedyPolicy(_LinearPolicy):
    """Greedy on the ridge estimate; with probability epsilon a uniform slate instead (exact propensities)."""

    algorithm = "egreedy"

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.model.mean_scores(bandit_features(obs))

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        n, s = len(obs.rows), self.scores(obs)
        greedy = self._greedy(obs, s, k)
        slate = rng.permutation(n)[:k] if rng.random() < self.spec.epsilon else greedy
        return slate, egreedy_position_probs(slate, greedy, n, self.spec.epsilon), s

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        greedy = self._greedy(obs, self.scores(obs), len(slate))
        return egreedy_position_probs(slate, greedy, len(obs.rows), self.spec.epsilon)

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        """Exact for the greedy part (1 - eps); ``draws`` uniform samples share eps."""
        eps, n = self.spec.epsilon, len(obs.rows)
        return ([(self._greedy(obs, self.scores(obs), k), 1.0 - eps)]
                + [(rng.permutation(n)[:k], eps / draws) for _ in range(draws)])


class ThompsonPolicy(_LinearPolicy):
    """Sample theta ~ N(A^-1 b, v^2 A^-1) and serve that draw's diverse greedy slate.

    The slate is random (it is the draw's), so ``select`` also draws ``spec.draws`` more thetas and
    logs, per position, the share that agree with the slate down to it: a Monte Carlo estimate of
    the propensities (:func:`rl.slate.prefix_frequencies`). ``position_probabilities`` estimates
    them the same way from a fixed stream of draws, so one version gives one answer."""

    algorithm = "thompson"
    _MC_SEED = 20221121

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        """One posterior draw's scores with ``rng``; the posterior mean's without."""
        x = bandit_features(obs)
        return self.model.mean_scores(x) if rng is None else self.model.draw_scores(x, rng, 1)[0]

    def _slates(self, obs: Observation, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """((1 + draws, K) greedy slates under independent posterior draws, (N,) the first draw's scores)."""
        s = self.model.draw_scores(bandit_features(obs), rng, 1 + self.spec.draws)
        sim = obs.similarity() if self.spec.penalty > 0 else None
        return diverse_greedy_batch(s, sim, k, self.spec.penalty), s[0]

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        slates, s = self._slates(obs, k, rng)
        return slates[0], prefix_frequencies(slates, slates[0]), s

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        slates, _ = self._slates(obs, len(slate), np.random.default_rng(self._MC_SEED))
        return prefix_frequencies(slates, np.asarray(slate), include_target=False)

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        slates, _ = self._slates(obs, k, rng)
        return [(sl, 1.0 / draws) for sl in slates[:draws]]
