"""Bayesian linear regression with exact incremental updates: the model behind the linear bandits.

:class:`LinearModel` keeps the inverse design matrix ``A^-1`` and ``b`` of a ridge regression::

    model = LinearModel(dim=16, reg=1.0)
    model.update_many(x, rewards)               # (M, d) features, (M,) rewards: exact, one inversion
    model.theta                                 # (d,) ridge estimate A^-1 b
    model.ucb_scores(x, alpha)                  # LinUCB: x.theta + alpha * sqrt(x^T A^-1 x)
    model.draw_scores(x, rng, m)                # Thompson: (m, N) scores under posterior draws

The bandit policies of :mod:`rl.bandits` rank with it; it knows nothing of slates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinearModel", "sherman_morrison"]


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


@dataclass
class LinearModel:
    dim: int
    reg: float = 1.0
    v: float = 0.5
    """Posterior scale of :meth:`draw_scores`: theta ~ N(A^-1 b, v^2 A^-1)."""
    a_inv: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    n: int = field(default=0, init=False)
    _chol: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _chol_of: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

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
        """One (features, reward) pair: a rank-one Sherman-Morrison step."""
        x = _features(np.atleast_2d(x), self.dim)[0]
        r = float(reward)
        if not np.isfinite(r):
            raise ValueError(f"reward must be finite, got {r}")
        self.a_inv = sherman_morrison(self.a_inv, x)
        self.b = self.b + r * x
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

    def mean_scores(self, x: np.ndarray) -> np.ndarray:
        """(N,) x . theta."""
        return _features(x, self.dim) @ self.theta

    def ucb_scores(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """(N,) x . theta + alpha * sqrt(x^T A^-1 x)."""
        x = _features(x, self.dim)
        width = np.sqrt(np.maximum(((x @ self.a_inv) * x).sum(1), 0.0))  # diag(X A^-1 X^T) via BLAS
        return x @ self.theta + alpha * width

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

    def state(self) -> dict[str, np.ndarray]:
        """Tensors to publish (safetensors): the inverse design matrix and b."""
        return {"a_inv": self.a_inv.copy(), "b": self.b.copy()}

    def load_state(self, tensors) -> None:
        self.a_inv = np.asarray(tensors["a_inv"], np.float64).copy()
        self.b = np.asarray(tensors["b"], np.float64).copy()
