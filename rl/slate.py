"""Plackett-Luce slates: sample K of N without replacement, with exact probabilities.

The serving policy scores N candidates; a slate is drawn position by position from the softmax
over the items not yet placed. The probability of the slate is the product of those per-position
probabilities, which is what impressions log (``propensities``) and what PPO's ratios and the
off-policy estimators need.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plackett_luce_sample", "plackett_luce_position_probs", "plackett_luce_logp", "greedy_slate"]


def _logits(scores: np.ndarray, temperature: float) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty (N,) vector, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return s / temperature


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"slate size k must be in [1, {n}], got {k}")


def plackett_luce_position_probs(scores: np.ndarray, slate: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(K,) probability of each slate item at its position given the items placed before it."""
    z = _logits(scores, temperature)
    slate = np.asarray(slate, dtype=np.int64)
    _check_k(len(slate), len(z))
    if len(set(slate.tolist())) != len(slate):
        raise ValueError("slate repeats an item")
    remaining = np.ones(len(z), dtype=bool)
    out = np.empty(len(slate))
    for j, item in enumerate(slate):
        zr = z[remaining]
        m = zr.max()
        denom = np.exp(zr - m).sum()
        out[j] = np.exp(z[item] - m) / denom
        remaining[item] = False
    return out


def plackett_luce_logp(scores: np.ndarray, slate: np.ndarray, temperature: float = 1.0) -> float:
    """log P(slate) under Plackett-Luce(scores / temperature)."""
    return float(np.log(plackett_luce_position_probs(scores, slate, temperature)).sum())


def plackett_luce_sample(scores: np.ndarray, k: int, rng: np.random.Generator,
                         temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw a slate: (K,) candidate indices and (K,) their per-position probabilities.

    Uses the Gumbel-top-k trick (the top-k of logits + Gumbel noise is a Plackett-Luce sample),
    then computes the exact per-position probabilities of the drawn slate.
    """
    z = _logits(scores, temperature)
    _check_k(k, len(z))
    g = z + rng.gumbel(size=len(z))
    slate = np.argsort(-g, kind="stable")[:k]
    return slate, plackett_luce_position_probs(scores, slate, temperature)


def greedy_slate(scores: np.ndarray, k: int) -> np.ndarray:
    """(K,) indices of the k highest scores, best first (ties broken by index)."""
    s = np.asarray(scores, dtype=np.float64)
    _check_k(k, len(s))
    return np.argsort(-s, kind="stable")[:k]
