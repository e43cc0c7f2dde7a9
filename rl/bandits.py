"""Slate bandits as small numpy dataclasses with no I/O (baselines and cold-start fallbacks).

Each policy scores N candidates from their (N, d) features, and picks a slate of K. Linear
policies learn per (feature, reward) pair with exact rank-one (Sherman-Morrison) updates of the
inverse design matrix, so an update costs O(d^2) and never inverts.

    pol = LinUCB(dim=16, alpha=1.0)
    slate, probs = pol.select(X, k=5, rng)     # (K,) indices, (K,) per-position probabilities
    pol.update(X[slate[0]], reward=1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rl.slate import greedy_slate, mixture_position_probs, prefix_frequencies

__all__ = ["egreedy_position_probs", "RandomPolicy", "PopularityPolicy", "EpsilonGreedy", "LinUCB", "LinearThompson", "sherman_morrison"]


def sherman_morrison(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(A + x x^T)^-1 from A^-1 in O(d^2)."""
    ax = a_inv @ x
    return a_inv - np.outer(ax, ax) / (1.0 + x @ ax)


def _features(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"features must be (N, {dim}), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinity")
    return x


def _reward(r: float) -> float:
    r = float(r)
    if not np.isfinite(r):
        raise ValueError(f"reward must be finite, got {r}")
    return r


def _uniform_slate_probs(n: int, k: int) -> np.ndarray:
    return 1.0 / (n - np.arange(k))


def egreedy_position_probs(slate: np.ndarray, greedy: np.ndarray, n: int, epsilon: float) -> np.ndarray:
    """(K,) per-position conditional probabilities of an epsilon-greedy slate; their product is exact.

    Epsilon-greedy is a mixture: uniform slates (share eps) and the greedy one (share 1 - eps), so
    P(first j items) = eps * prod_{l<=j} 1/(n-l) + (1-eps) * [first j items == greedy's]
    (:func:`rl.slate.mixture_position_probs`).
    """
    on_greedy = (np.asarray(slate) == np.asarray(greedy)).astype(float)
    return mixture_position_probs(_uniform_slate_probs(n, len(slate)), on_greedy, epsilon)


@dataclass
class RandomPolicy:
    """Uniform slates: position j has probability 1/(N - j)."""

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        if not 1 <= k <= n:
            raise ValueError(f"slate size k must be in [1, {n}], got {k}")
        return rng.permutation(n)[:k], _uniform_slate_probs(n, k)


@dataclass
class PopularityPolicy:
    """Rank by (smoothed) past click-through counts per item id."""

    prior: float = 1.0
    clicks: dict = field(default_factory=dict)
    shows: dict = field(default_factory=dict)

    def scores(self, item_ids) -> np.ndarray:
        return np.array([(self.clicks.get(i, 0.0) + self.prior * 0.1) / (self.shows.get(i, 0.0) + self.prior)
                         for i in item_ids])

    def select(self, item_ids, k: int) -> tuple[np.ndarray, np.ndarray]:
        return greedy_slate(self.scores(item_ids), k), np.ones(k)

    def update(self, item_id, reward: float) -> None:
        self.shows[item_id] = self.shows.get(item_id, 0.0) + 1
        self.clicks[item_id] = self.clicks.get(item_id, 0.0) + _reward(reward)


@dataclass
class _Linear:
    dim: int
    reg: float = 1.0
    a_inv: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    n: int = field(default=0, init=False)

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.reg <= 0:
            raise ValueError(f"reg must be > 0, got {self.reg}")
        self.a_inv = np.eye(self.dim) / self.reg
        self.b = np.zeros(self.dim)

    @property
    def theta(self) -> np.ndarray:
        """(d,) ridge estimate A^-1 b."""
        return self.a_inv @ self.b

    def update(self, x: np.ndarray, reward: float) -> None:
        x = _features(np.atleast_2d(x), self.dim)[0]
        self.a_inv = sherman_morrison(self.a_inv, x)
        self.b = self.b + _reward(reward) * x
        self.n += 1

    def update_many(self, x: np.ndarray, rewards: np.ndarray) -> None:
        """The same state as ``update`` on each row of (M, d) ``x`` in turn, in one step:
        A^-1 <- (A + X^T X)^-1 (Woodbury for M < d, else inverting A once), b <- b + X^T r."""
        x = _features(np.atleast_2d(x), self.dim)
        r = np.asarray(rewards, dtype=np.float64)
        if r.shape != (len(x),) or not np.isfinite(r).all():
            raise ValueError(f"rewards must be {len(x)} finite values, one per feature row, got shape {r.shape}")
        if len(x) == 0:
            return
        if len(x) < self.dim:
            ax = self.a_inv @ x.T  # (d, M)
            self.a_inv = self.a_inv - ax @ np.linalg.solve(np.eye(len(x)) + x @ ax, ax.T)
        else:
            self.a_inv = np.linalg.inv(np.linalg.inv(self.a_inv) + x.T @ x)
        self.a_inv = (self.a_inv + self.a_inv.T) / 2
        self.b = self.b + x.T @ r
        self.n += len(x)

    def state(self) -> dict[str, np.ndarray]:
        """Tensors to publish (safetensors): the inverse design matrix and b."""
        return {"a_inv": self.a_inv.copy(), "b": self.b.copy()}


@dataclass
class EpsilonGreedy(_Linear):
    """Greedy on the ridge estimate; with probability epsilon a uniform slate instead."""

    epsilon: float = 0.1

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = _features(x, self.dim)
        n = len(x)
        greedy = greedy_slate(x @ self.theta, k)
        slate = rng.permutation(n)[:k] if rng.random() < self.epsilon else greedy
        # exact: P(slate) = eps * P_uniform(slate) + (1 - eps) * [slate == greedy], factored by position
        return slate, egreedy_position_probs(slate, greedy, n, self.epsilon)


@dataclass
class LinUCB(_Linear):
    """Score = x.theta + alpha * sqrt(x^T A^-1 x); deterministic top-k."""

    alpha: float = 1.0

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = _features(x, self.dim)
        width = np.sqrt(np.maximum(((x @ self.a_inv) * x).sum(1), 0.0))  # diag(X A^-1 X^T) via BLAS
        return x @ self.theta + self.alpha * width

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        return greedy_slate(self.scores(x), k), np.ones(k)


@dataclass
class LinearThompson(_Linear):
    """Sample theta ~ N(A^-1 b, v^2 A^-1), rank by x.theta.

    The slate is random (it is the draw's), so ``select`` also draws ``draws`` more thetas and
    gives, per position, the share that agree with the slate down to it: a Monte Carlo estimate
    of the propensities (:func:`rl.slate.prefix_frequencies`)."""

    v: float = 0.5
    draws: int = 64
    _chol: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _chol_of: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def draw_scores(self, x: np.ndarray, rng: np.random.Generator, m: int) -> np.ndarray:
        """(m, N) scores x . theta under m independent posterior draws; x: (N, d).

        The covariance's Cholesky factor is kept until ``a_inv`` changes (every update and every
        load replaces the array; none changes it in place)."""
        x = _features(x, self.dim)
        if self._chol_of is not self.a_inv:
            cov = (self.v ** 2) * (self.a_inv + self.a_inv.T) / 2
            self._chol, self._chol_of = np.linalg.cholesky(cov + 1e-12 * np.eye(self.dim)), self.a_inv
        thetas = self.theta + rng.standard_normal((m, self.dim)) @ self._chol.T  # (m, d)
        return thetas @ x.T

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """((K,) the first draw's slate, (K,) its estimated per-position probabilities); x: (N, d)."""
        slates = np.argsort(-self.draw_scores(x, rng, 1 + self.draws), axis=1, kind="stable")[:, :k]
        return slates[0], prefix_frequencies(slates, slates[0])
