"""Off-policy estimators of a target policy's value from logged slates, with confidence intervals.

Each logged sample i has: reward r_i, the behaviour policy's probability of what it showed
mu_i, and the target policy's probability of the same action pi_i. With w_i = pi_i / mu_i:

* IPS:   V = mean(w_i r_i)
* SNIPS: V = sum(w_i r_i) / sum(w_i)
* DR:    V = mean(q_hat_i + w_i (r_i - q_hat_logged_i)), with q_hat from a direct-method model:
  ``q_target_i`` the model's expected reward under the target policy, ``q_logged_i`` its
  prediction for the logged action.

For slates, :func:`cascade_dr` weights each position by the product of the per-position
(conditional) probability ratios down to it, so a position keeps its evidence wherever the
logged slate agrees with the target's above it, where whole-slate weights need the whole slate
to match.

Intervals are normal approximations (z * standard error; SNIPS by the delta method).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "ips", "snips", "dr", "cascade_dr", "importance_weights", "effective_sample_size"]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int
    ess: float
    """Effective sample size of the weights, (sum w)^2 / sum w^2."""


def _clip(clip: float | None) -> float | None:
    """None (no clipping) or a finite number >= 1: a weight is never clipped below 1 (the logger's own)."""
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.floating, np.integer)) \
            or not np.isfinite(clip) or clip < 1:
        raise ValueError(f"clip must be None or a finite number >= 1, got {clip!r}")
    return float(clip)


def importance_weights(target_probs: np.ndarray, logged_probs: np.ndarray, clip: float | None = None) -> np.ndarray:
    clip = _clip(clip)
    pi = np.asarray(target_probs, dtype=np.float64)
    mu = np.asarray(logged_probs, dtype=np.float64)
    if pi.shape != mu.shape or pi.ndim != 1:
        raise ValueError(f"target and logged probabilities must be (n,) alike, got {pi.shape} and {mu.shape}")
    if len(pi) == 0:
        raise ValueError("no samples")
    if not (np.isfinite(mu).all() and (mu > 0).all() and (mu <= 1).all()):
        raise ValueError("logged probabilities must be in (0, 1]")
    if not (np.isfinite(pi).all() and (pi >= 0).all() and (pi <= 1).all()):
        raise ValueError("target probabilities must be in [0, 1]")
    w = pi / mu
    return np.minimum(w, clip) if clip is not None else w


def _rewards(r: np.ndarray, n: int, name: str = "rewards") -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"{name} must be ({n},), got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"{name} contain NaN or infinity")
    return r


def effective_sample_size(w: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 of importance weights w (0 when all are 0)."""
    s2 = float((w ** 2).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def _mean_ci(x: np.ndarray, w: np.ndarray, z: float) -> Estimate:
    n = len(x)
    m = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(m, m - z * se, m + z * se, n, effective_sample_size(w))


def ips(rewards, target_probs, logged_probs, *, z: float = 1.96, clip: float | None = None) -> Estimate:
    w = importance_weights(target_probs, logged_probs, clip)
    r = _rewards(rewards, len(w))
    return _mean_ci(w * r, w, z)


def snips(rewards, target_probs, logged_probs, *, z: float = 1.96, clip: float | None = None) -> Estimate:
    w = importance_weights(target_probs, logged_probs, clip)
    r = _rewards(rewards, len(w))
    sw = w.sum()
    if sw <= 0:
        raise ValueError("the target policy gives probability 0 to every logged action")
    v = float((w * r).sum() / sw)
    n = len(w)
    # delta method: var(V) ~ sum(w^2 (r - V)^2) / (sum w)^2
    se = float(np.sqrt((w ** 2 * (r - v) ** 2).sum()) / sw) if n > 1 else float("inf")
    return Estimate(v, v - z * se, v + z * se, n, effective_sample_size(w))


def dr(rewards, target_probs, logged_probs, q_target, q_logged, *, z: float = 1.96,
       clip: float | None = None) -> Estimate:
    w = importance_weights(target_probs, logged_probs, clip)
    r = _rewards(rewards, len(w))
    qt = _rewards(q_target, len(w), "q_target")
    ql = _rewards(q_logged, len(w), "q_logged")
    return _mean_ci(qt + w * (r - ql), w, z)


def cascade_dr(q_target, outcomes, predicted, target_probs, logged_probs, *, weights=None, z: float = 1.96,
               clip: float | None = None) -> Estimate:
    """Doubly robust value of a ranking policy under the cascade model (Kiyohara et al., WSDM 2022).

        V = mean_i( q_target_i + sum_k v_k W_ik (y_ik - yhat_ik) ),   W_ik = prod_{j<=k} pi_ij / mu_ij

    q_target: (B,) the direct method's value of the target's slates; outcomes y and the model's
    predictions yhat for the logged slates: (B, K), the value being sum_k v_k y_k, where y at
    position k may depend on the items at positions <= k only; target_probs pi and logged_probs mu:
    (B, K) conditional probabilities of each logged item given the logged items above it (their
    product is the slate probability); weights v: (K,), ones by default. W is clipped at ``clip``.
    Unbiased when either the model or the cascade weights are right, like :func:`dr`; the ESS is
    that of the top position's weights.
    """
    y = np.asarray(outcomes, dtype=np.float64)
    if y.ndim != 2 or not np.isfinite(y).all():
        raise ValueError(f"outcomes must be a finite (B, K) array, got shape {y.shape}")
    b, k = y.shape
    yhat = np.asarray(predicted, dtype=np.float64)
    if yhat.shape != (b, k) or not np.isfinite(yhat).all():
        raise ValueError(f"predictions must be a finite ({b}, {k}) array like outcomes, got shape {yhat.shape}")
    pi = np.asarray(target_probs, dtype=np.float64)
    mu = np.asarray(logged_probs, dtype=np.float64)
    if pi.shape != (b, k) or mu.shape != (b, k):
        raise ValueError(f"target and logged probabilities must be ({b}, {k}) like outcomes, got {pi.shape} and {mu.shape}")
    clip = _clip(clip)
    w = importance_weights(pi.reshape(-1), mu.reshape(-1)).reshape(b, k)
    w = np.cumprod(w, axis=1)
    if clip is not None:
        w = np.minimum(w, clip)
    v = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.shape != (k,):
        raise ValueError(f"position weights must be ({k},), got shape {v.shape}")
    qt = _rewards(q_target, b, "q_target")
    return _mean_ci(qt + (w * (y - yhat)) @ v, w[:, 0], z)
