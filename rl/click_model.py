"""ClickModel: the off-policy direct method's model of clicks on a slate, one ridge regression per position."""

from __future__ import annotations

import numpy as np

from rl.bandits import bandit_features
from rl.diversity import ild_from_similarity, position_weights
from rl.slate import cosine_similarity

__all__ = ["ClickModel", "slate_reward_ctr"]


class ClickModel:
    """Direct-method model of clicks: one ridge regression per slate position.

    P(click | item at position p) = clip(theta_p . [x, redundancy], 0, 1), x being the item's bandit
    features (:func:`rl.bandits.bandit_features`) and redundancy its largest cosine similarity to
    the items above it (0 at the top). One model per position, not one with an additive position
    effect: examination multiplies an item's appeal (a strong item gains most at the top), and a
    ranker puts its best item first, so an additive model under-values exactly the slates a good
    candidate shows (it predicts too low a click rate at the top for them). Slate
    values follow from the per-item probabilities as the logged rewards were formed:
    CTR = 1 - prod_p (1 - P_p), reward = sum_p w_p P_p + lam * ILD.
    """

    def __init__(self, reg: float = 1.0):
        self.reg = reg
        self.theta: np.ndarray | None = None
        """(K * (D + 1),) the K position models, concatenated."""
        self.xtx: np.ndarray | None = None
        """(K, D + 1, D + 1) per-position X^T X."""
        self.xty: np.ndarray | None = None
        self.n = 0
        """Slates folded in."""

    @staticmethod
    def rows(features: np.ndarray, items: np.ndarray, slate) -> tuple[np.ndarray, np.ndarray]:
        """((K, D + 1) [bandit features, redundancy] of the shown items, (K, K) their cosine similarities).

        features: (N, D) the candidates' bandit features; items: (N, m) their vectors."""
        slate = np.asarray(slate)
        sim = cosine_similarity(items[slate])
        k = len(slate)
        redundancy = np.zeros((k, 1))
        for p in range(1, k):
            redundancy[p, 0] = sim[p, :p].max()
        return np.concatenate([features[slate], redundancy], 1), sim

    def fit(self, observations, slates, clicks) -> "ClickModel":
        """observations: B Observations; slates: (B, K) candidate indices; clicks: (B, K) feedback."""
        self.xtx = self.xty = None
        self.n = 0
        return self.add(observations, slates, clicks)

    def add(self, observations, slates, clicks) -> "ClickModel":
        """Fold more logged slates into the fit (sufficient statistics, so a trainer can grow one
        model round after round on its training samples, disjoint from the gate's held-out ones)."""
        y = (np.asarray(clicks, np.float64) > 0)
        slates = np.asarray(slates)
        if y.shape != slates.shape:
            raise ValueError(f"clicks must be (B, K) like slates: {y.size} values for {slates.size} shown items")
        x = np.stack([self.rows(bandit_features(o), o.items, s)[0] for o, s in zip(observations, slates)])  # (B, K, D+1)
        if self.xtx is None or self.xtx.shape[::2] != x.shape[1:]:
            k, d = x.shape[1:]
            self.xtx, self.xty, self.n = np.zeros((k, d, d)), np.zeros((k, d)), 0
        self.xtx += np.einsum("bki,bkj->kij", x, x)
        self.xty += np.einsum("bki,bk->ki", x, y)
        self.n += len(x)
        eye = self.reg * np.eye(self.xtx.shape[1])
        self.theta = np.concatenate([np.linalg.solve(a + eye, b) for a, b in zip(self.xtx, self.xty)])
        return self

    def _probs(self, rows: np.ndarray) -> np.ndarray:
        if self.theta is None:
            raise RuntimeError("ClickModel.fit first")
        k, d = rows.shape
        return np.clip(np.einsum("kd,kd->k", rows, self.theta.reshape(-1, d)[:k]), 0.0, 1.0)

    def item_probs(self, obs, slate) -> np.ndarray:
        """(K,) click probability of each shown item."""
        return self._probs(self.rows(bandit_features(obs), obs.items, slate)[0])

    def slate_probs(self, features: np.ndarray, items: np.ndarray, slate) -> tuple[np.ndarray, np.ndarray]:
        """((K,) click probability of each shown item, (K, K) their cosine similarities), given the
        candidates' (N, D) bandit features and (N, m) vectors."""
        rows, sim = self.rows(features, items, slate)
        return self._probs(rows), sim

    def slate_values(self, features: np.ndarray, items: np.ndarray, slate, lam: float = 0.0) -> tuple[float, float]:
        """(reward, CTR) of one slate, given the candidates' (N, D) bandit features and (N, m) vectors."""
        p, sim = self.slate_probs(features, items, slate)
        return slate_reward_ctr(p, sim, lam)

    def values(self, obs, slate, lam: float = 0.0) -> tuple[float, float]:
        """(reward, CTR) of one slate from one pass over its items."""
        return self.slate_values(bandit_features(obs), obs.items, slate, lam)

    def ctr(self, obs, slate) -> float:
        return self.values(obs, slate)[1]

    def reward(self, obs, slate, lam: float = 0.0) -> float:
        return self.values(obs, slate, lam)[0]


def slate_reward_ctr(p: np.ndarray, sim: np.ndarray, lam: float) -> tuple[float, float]:
    """(reward, CTR) of a slate from its (K,) click probabilities and (K, K) similarities."""
    diversity = ild_from_similarity(sim) if lam else 0.0
    return float(p @ position_weights(len(p)) + lam * diversity), float(1.0 - np.prod(1.0 - p))
