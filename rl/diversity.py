"""Diversity: intra-list diversity, MMR re-ranking, and the reward's diversity term."""

from __future__ import annotations

import numpy as np

__all__ = ["ild", "ild_from_similarity", "mmr_rerank", "slate_reward", "position_weights"]


def ild(vectors: np.ndarray) -> float:
    """Intra-list diversity: mean pairwise cosine distance (1 - cos) of a slate's (K, d) vectors.

    0 for a slate of identical items, 1 for mutually orthogonal ones; 0.0 when K < 2.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"vectors must be (K, d), got shape {v.shape}")
    k = len(v)
    if k < 2:
        return 0.0
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / np.where(norms > 0, norms, 1.0)
    return ild_from_similarity(u @ u.T)


def ild_from_similarity(sim: np.ndarray) -> float:
    """ILD of a slate given its (K, K) cosine similarities: the mean off-diagonal 1 - cos."""
    k = len(sim)
    if k < 2:
        return 0.0
    return float(np.mean(1.0 - sim[~np.eye(k, dtype=bool)]))


def mmr_rerank(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance: pick k of N trading relevance for novelty.

    At each step choose argmax_i (1 - lam) * score_i - lam * max_{j chosen} cos(v_i, v_j).
    lam = 0 is plain top-k by score. Returns (k,) indices in pick order.
    """
    s = np.asarray(scores, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} scores for {v.shape[0]} vectors")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 1 <= k <= len(s):
        raise ValueError(f"k must be in [1, {len(s)}], got {k}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / np.where(norms > 0, norms, 1.0)
    chosen: list[int] = []
    max_sim = np.full(len(s), -np.inf)
    available = np.ones(len(s), dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        mmr = (1 - lam) * s - lam * penalty
        mmr[~available] = -np.inf
        i = int(np.argmax(mmr))
        chosen.append(i)
        available[i] = False
        max_sim = np.maximum(max_sim, u @ u[i])
    return np.asarray(chosen, dtype=np.int64)


def position_weights(k: int, kind: str = "dcg") -> np.ndarray:
    """(K,) weights of clicks by position: 1/log2(pos + 2) (``dcg``) or all ones (``uniform``)."""
    if kind == "dcg":
        return 1.0 / np.log2(np.arange(k) + 2.0)
    if kind == "uniform":
        return np.ones(k)
    raise ValueError(f"position weighting must be 'dcg' or 'uniform', got {kind!r}")


def slate_reward(clicks: np.ndarray, vectors: np.ndarray, lam: float, kind: str = "dcg") -> float:
    """Position-weighted clicks + lam * ILD of the slate: the learner's reward for one impression."""
    c = np.asarray(clicks, dtype=np.float64)
    return float(c @ position_weights(len(c), kind) + lam * ild(vectors))
