"""Ranking and exposure metrics (pure numpy)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, NamedTuple, Sequence

import numpy as np

__all__ = ["ctr", "recall_at_k", "ndcg_at_k", "hit_at_k", "coverage", "novelty", "gini", "lift_over_control",
           "ArmImpression", "arm_figures"]


def ctr(clicks: Sequence[float]) -> float:
    c = np.asarray(clicks, dtype=np.float64)
    if c.size == 0:
        raise ValueError("no impressions")
    return float((c > 0).mean())


def _check(ranked: Sequence, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def recall_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """|top-k ∩ relevant| / |relevant| (0 when nothing is relevant)."""
    _check(ranked, k)
    if not relevant:
        return 0.0
    return len(set(list(ranked)[:k]) & relevant) / len(relevant)


def hit_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    _check(ranked, k)
    return float(bool(set(list(ranked)[:k]) & relevant))


def ndcg_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """Binary-relevance NDCG@k: DCG / ideal DCG, gains 1/log2(rank + 1)."""
    _check(ranked, k)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(list(ranked)[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(dcg / ideal)


def coverage(slates: Iterable[Sequence], catalog_size: int) -> float:
    """Share of the catalog shown at least once."""
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    seen = set()
    for s in slates:
        seen.update(s)
    return len(seen) / catalog_size


def novelty(slates: Iterable[Sequence], popularity: dict, total: float) -> float:
    """Mean self-information -log2(p(item)) of shown items, p = popularity / total."""
    vals = [-np.log2(max(popularity.get(i, 0.0), 1e-12) / total) for s in slates for i in s]
    if not vals:
        raise ValueError("no slates")
    return float(np.mean(vals))


def gini(exposure: Sequence[float]) -> float:
    """Gini coefficient of exposure counts: 0 = equal exposure, -> 1 = one item gets everything."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    if x.size == 0 or (x < 0).any():
        raise ValueError("exposure must be a non-empty vector of counts >= 0")
    if x.sum() == 0:
        return 0.0
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def exposure_counts(slates: Iterable[Sequence]) -> Counter:
    c: Counter = Counter()
    for s in slates:
        c.update(s)
    return c


def lift_over_control(policy_n: int, policy_clicked: int, control_n: int, control_clicked: int,
                      z: float = 1.96) -> dict:
    """The policy arm's CTR minus the control arm's (``*_n`` impressions, ``*_clicked`` of them with
    a click), with the normal-approximation interval of a difference of two proportions (``z``:
    1.96 for 95%) and the two-sided p-value of the unpooled z-test. ``lift`` None while an arm has
    no impressions; ``significant`` when the interval excludes 0."""
    for name, n, c in (("policy", policy_n, policy_clicked), ("control", control_n, control_clicked)):
        if n < 0 or not 0 <= c <= max(n, 0):
            raise ValueError(f"{name}: clicked must be in [0, impressions], got {c} of {n}")
    out: dict = {"policy": {"impressions": policy_n, "ctr": policy_clicked / policy_n if policy_n else None},
                 "control": {"impressions": control_n, "ctr": control_clicked / control_n if control_n else None},
                 "lift": None, "low": None, "high": None, "p_value": None, "significant": False}
    if not policy_n or not control_n:
        return out
    p1, p0 = policy_clicked / policy_n, control_clicked / control_n
    d = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / policy_n + p0 * (1 - p0) / control_n)
    p_value = math.erfc(abs(d) / se / math.sqrt(2)) if se > 0 else float(d == 0)
    out.update(lift=d, low=d - z * se, high=d + z * se, p_value=p_value,
               significant=bool(d - z * se > 0 or d + z * se < 0))
    return out


class ArmImpression(NamedTuple):
    """One served impression as the per-arm figures count it."""

    arm: str
    """The arm that served it: ``policy`` (the live version), ``control`` or an experiment arm's name."""
    clicked: bool
    ild: float
    """Intra-list diversity of the slate (:func:`rl.diversity.ild`)."""
    items: tuple
    """The items shown (anything hashable: ids or table rows)."""


def arm_figures(impressions: Iterable[ArmImpression], catalog_size: int, control: str = "control",
                z: float = 1.96) -> dict:
    """Per-arm figures of served impressions: ``{arm: {impressions, clicked, ctr, low, high, ild,
    coverage, lift}}`` (``clicked``: impressions with a click). ``low``/``high``: the normal-approximation interval of the arm's CTR; ``ild``: the
    mean slate ILD; ``coverage``: the share of the catalog the arm showed; ``lift``: the arm's
    :func:`lift_over_control` against the ``control`` arm (None for the control arm itself and
    while there is no control arm)."""
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    by_arm: dict[str, list] = {}
    for imp in impressions:
        by_arm.setdefault(imp.arm, []).append(imp)
    counts = {arm: (len(rows), sum(bool(r.clicked) for r in rows)) for arm, rows in by_arm.items()}
    out: dict = {}
    for arm, rows in sorted(by_arm.items()):
        n, c = counts[arm]
        p = c / n
        half = z * math.sqrt(p * (1 - p) / n)
        lift = None
        if arm != control and control in counts:
            lift = lift_over_control(n, c, *counts[control], z=z)
            lift = {k: lift[k] for k in ("lift", "low", "high", "p_value", "significant")}
        out[arm] = {"impressions": n, "clicked": c, "ctr": p, "low": max(0.0, p - half), "high": min(1.0, p + half),
                    "ild": float(np.mean([r.ild for r in rows])), "coverage": coverage((r.items for r in rows), catalog_size),
                    "lift": lift}
    return out
