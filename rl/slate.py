"""Plackett-Luce slates: sample K of N without replacement, with exact probabilities.

Diversity-aware variant: with a (N, N) similarity matrix ``sim`` and ``penalty`` > 0, the
logit of item i at position j is ``(s_i - penalty * max_{c placed before j} sim[i, c]) / T``, so
an item like one already placed becomes less likely; the per-position probabilities stay exact
(the torch twin in :mod:`rl.learners.module` computes the same numbers for PPO).

The serving policy scores N candidates; a slate is drawn position by position from the softmax
over the items not yet placed. The probability of the slate is the product of those per-position
probabilities, which is what impressions log (``propensities``) and what PPO's ratios and the
off-policy estimators need.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plackett_luce_sample", "plackett_luce_position_probs", "plackett_luce_logp", "greedy_slate",
           "diverse_greedy", "diverse_greedy_batch", "cosine_similarity", "prefix_frequencies",
           "mixture_position_probs"]


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


def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarities of (N, m) feature rows (zero rows are similar to nothing)."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    u = f / np.where(norms > 0, norms, 1.0)
    return u @ u.T


def _check_penalty(sim, penalty: float, n: int):
    if penalty < 0 or not np.isfinite(penalty):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty}")
    if penalty == 0:
        return None
    if sim is None:
        raise ValueError("a diversity penalty needs the (N, N) similarity matrix")
    sim = np.asarray(sim, dtype=np.float64)
    if sim.shape != (n, n):
        raise ValueError(f"sim must be ({n}, {n}), got shape {sim.shape}")
    return sim


def plackett_luce_position_probs(scores: np.ndarray, slate: np.ndarray, temperature: float = 1.0,
                                 sim: np.ndarray | None = None, penalty: float = 0.0) -> np.ndarray:
    """(K,) probability of each slate item at its position given the items placed before it."""
    z = _logits(scores, temperature)
    slate = np.asarray(slate, dtype=np.int64)
    _check_k(len(slate), len(z))
    if len(set(slate.tolist())) != len(slate):
        raise ValueError("slate repeats an item")
    sim = _check_penalty(sim, penalty, len(z))
    remaining = np.ones(len(z), dtype=bool)
    max_sim = np.zeros(len(z))
    out = np.empty(len(slate))
    for j, item in enumerate(slate):
        zj = z - (penalty / temperature) * max_sim if sim is not None else z
        zr = zj[remaining]
        m = zr.max()
        denom = np.exp(zr - m).sum()
        out[j] = np.exp(zj[item] - m) / denom
        remaining[item] = False
        if sim is not None:
            max_sim = sim[item] if j == 0 else np.maximum(max_sim, sim[item])
    return out


def plackett_luce_logp(scores: np.ndarray, slate: np.ndarray, temperature: float = 1.0,
                       sim: np.ndarray | None = None, penalty: float = 0.0) -> float:
    """log P(slate) under Plackett-Luce(scores / temperature) (with the diversity penalty, if any)."""
    return float(np.log(plackett_luce_position_probs(scores, slate, temperature, sim, penalty)).sum())


def plackett_luce_sample(scores: np.ndarray, k: int, rng: np.random.Generator, temperature: float = 1.0,
                         sim: np.ndarray | None = None, penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw a slate: (K,) candidate indices and (K,) their per-position probabilities.

    Without a penalty: the Gumbel-top-k trick (the top-k of logits + Gumbel noise is a
    Plackett-Luce sample). With one: position by position from the penalised softmax.
    """
    z = _logits(scores, temperature)
    _check_k(k, len(z))
    simm = _check_penalty(sim, penalty, len(z))
    if simm is None:
        g = z + rng.gumbel(size=len(z))
        slate = np.argsort(-g, kind="stable")[:k]
        return slate, plackett_luce_position_probs(scores, slate, temperature)
    remaining = np.ones(len(z), dtype=bool)
    max_sim = np.zeros(len(z))
    slate = np.empty(k, dtype=np.int64)
    probs = np.empty(k)
    for j in range(k):
        zj = np.where(remaining, z - (penalty / temperature) * max_sim, -np.inf)
        p = np.exp(zj - zj.max())
        p /= p.sum()
        item = int(rng.choice(len(z), p=p))
        slate[j], probs[j] = item, p[item]
        remaining[item] = False
        max_sim = simm[item] if j == 0 else np.maximum(max_sim, simm[item])
    return slate, probs


def greedy_slate(scores: np.ndarray, k: int) -> np.ndarray:
    """(K,) indices of the k highest scores, best first (ties broken by index)."""
    s = np.asarray(scores, dtype=np.float64)
    _check_k(k, len(s))
    return np.argsort(-s, kind="stable")[:k]


def diverse_greedy(scores: np.ndarray, sim: np.ndarray | None, k: int, penalty: float) -> np.ndarray:
    """(K,) the zero-temperature limit of the diverse Plackett-Luce: argmax of score - penalty * max sim."""
    return diverse_greedy_batch(np.asarray(scores)[None, :], sim, k, penalty)[0]


def diverse_greedy_batch(scores: np.ndarray, sim: np.ndarray | None, k: int, penalty: float) -> np.ndarray:
    """(M, K) :func:`diverse_greedy` of each row of (M, N) ``scores`` (same ties: lowest index first)."""
    s = np.asarray(scores, np.float64)
    m, n = s.shape
    _check_k(k, n)
    if penalty <= 0 or sim is None:
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
    rows = np.arange(m)
    avail = np.ones((m, n), bool)
    max_sim = np.zeros((m, n))
    out = np.empty((m, k), np.int64)
    for j in range(k):
        out[:, j] = np.argmax(np.where(avail, s - penalty * max_sim, -np.inf), axis=1)
        avail[rows, out[:, j]] = False
        max_sim = sim[out[:, j]] if j == 0 else np.maximum(max_sim, sim[out[:, j]])
    return out


def prefix_frequencies(slates: np.ndarray, slate: np.ndarray, include_target: bool = True) -> np.ndarray:
    """(K,) P(slate[j] at position j | slate[:j] above), estimated from (M, K) sampled ``slates``.

    The product down to position j is the fraction of samples that agree with ``slate`` on
    positions 0..j. ``include_target``: ``slate`` is ``slates[0]`` (the sample that was served),
    so every count is >= 1; otherwise a prefix no sample took has probability 0 from there on."""
    agree = np.cumprod(np.asarray(slates) == np.asarray(slate)[None, :], axis=1).sum(0).astype(np.float64)  # (K,)
    above = np.concatenate([[len(slates)], agree[:-1]])
    return np.divide(agree, above, out=np.zeros_like(agree), where=above > 0)


def mixture_position_probs(served: np.ndarray, other: np.ndarray, served_share: float) -> np.ndarray:
    """(K,) per-position probabilities of one slate under a mixture of two slate policies ((B, K) for
    B slates at once).

    A request is served by policy A with probability ``served_share`` and by B otherwise (epsilon-greedy:
    the greedy slate and a uniform one; two loggers pooled by the balance heuristic). ``served`` and
    ``other``: (K,) each policy's probability of the slate's item at each position given the items
    above it. The mixture's probability of the slate's first k items is
    a * prod_{j<=k} served_j + (1 - a) * prod_{j<=k} other_j; the result is the ratio of consecutive
    prefixes, so its product is the slate's mixture probability and the cascade weights of
    :func:`rl.ope.cascade_dr` stay exact. Positive wherever ``served`` is.
    """
    a = float(served_share)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"served_share must be in [0, 1], got {served_share}")
    p, q = np.asarray(served, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if p.shape != q.shape or p.ndim not in (1, 2):
        raise ValueError(f"served and other must be (K,) or (B, K) alike, got {p.shape} and {q.shape}")
    prefix = a * np.cumprod(p, axis=-1) + (1.0 - a) * np.cumprod(q, axis=-1)
    above = np.concatenate([np.ones_like(prefix[..., :1]), prefix[..., :-1]], axis=-1)
    return np.divide(prefix, above, out=np.zeros_like(prefix), where=above > 0)
