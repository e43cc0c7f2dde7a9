"""Wald's sequential probability ratio test on a click-through rate: is the live version worse?

After a version goes live, every impression it serves is evidence about its CTR ``p``. The test
weighs H0: ``p = p0`` (the predecessor's measured CTR) against H1: ``p = p0 (1 - drop)``, one
impression at a time, with the log-likelihood ratio

    LLR = clicks * ln(p1 / p0) + (n - clicks) * ln((1 - p1) / (1 - p0))

and stops at the first crossing: LLR >= ln((1 - beta) / alpha) decides "worse" (roll back; the
chance of that under H0 is at most about alpha), LLR <= ln(beta / (1 - alpha)) decides "fine"
(the chance of missing a drop of ``drop`` is at most about beta). In between it waits for more
impressions. Wald's bounds hold at every look, so checking after each training round is sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["SPRT", "ctr_sprt", "LiveWatch"]


@dataclass(frozen=True)
class SPRT:
    decision: Literal["worse", "fine", "continue"]
    llr: float
    lower: float
    """ln(beta / (1 - alpha)): at or below, the version is as good as its predecessor."""
    upper: float
    """ln((1 - beta) / alpha): at or above, it is worse by ``drop``."""
    n: int
    clicks: int
    p0: float
    p1: float

    def describe(self) -> str:
        return (f"CTR {self.clicks}/{self.n} = {self.clicks / max(self.n, 1):.4f} vs predecessor {self.p0:.4f}: "
                f"sequential test LLR {self.llr:.2f} (worse at >= {self.upper:.2f}, fine at <= {self.lower:.2f})")


def ctr_sprt(clicks: int, n: int, p0: float, *, drop: float = 0.1, alpha: float = 0.01, beta: float = 0.1) -> SPRT:
    """The SPRT of ``clicks`` out of ``n`` impressions against the predecessor's CTR ``p0``."""
    if not (isinstance(n, int) and isinstance(clicks, int) and 0 <= clicks <= n):
        raise ValueError(f"clicks and n must be ints with 0 <= clicks <= n, got {clicks} of {n}")
    if not 0 < p0 < 1:
        raise ValueError(f"p0 must be in (0, 1), got {p0}")
    if not 0 < drop < 1:
        raise ValueError(f"drop must be in (0, 1), got {drop}")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not 0 < v < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {v}")
    p1 = p0 * (1 - drop)
    llr = clicks * math.log(p1 / p0) + (n - clicks) * math.log((1 - p1) / (1 - p0))
    lower, upper = math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)
    decision = "worse" if llr >= upper else "fine" if llr <= lower else "continue"
    return SPRT(decision, llr, lower, upper, n, clicks, p0, p1)


class LiveWatch:
    """Each version's measured CTR from the samples it chose, and the SPRT of the live version
    against the one it replaced (not for a rollback: that would only swing back and forth)."""

    def __init__(self, drop: float, alpha: float = 0.01, beta: float = 0.1, min_impressions: int = 300):
        self.drop, self.alpha, self.beta, self.min_impressions = drop, alpha, beta, min_impressions
        self.counts: dict[int, list[int]] = {}
        """version -> [impressions, impressions with a click-like positive]"""
        self.live: int | None = None
        self.predecessor: int | None = None
        self.settled = False

    def went_live(self, version: int, predecessor: int | None) -> None:
        self.live, self.predecessor, self.settled = int(version), predecessor, False

    def state(self) -> dict:
        """What a restarted trainer needs to go on testing the live version (JSON-able)."""
        return {"counts": {str(v): list(n) for v, n in self.counts.items()}, "live": self.live,
                "predecessor": self.predecessor, "settled": self.settled}

    def restore(self, state: dict) -> None:
        """Take back :meth:`state` (the thresholds stay the configured ones)."""
        self.counts = {int(v): [int(n[0]), int(n[1])] for v, n in state.get("counts", {}).items()}
        self.live, self.predecessor = state.get("live"), state.get("predecessor")
        self.settled = bool(state.get("settled", False))

    def add(self, versions, clicked) -> None:
        """``versions``: (B,) the version that chose each sample's slate; ``clicked``: (B,) 0/1."""
        for v, c in zip(versions, clicked):
            n = self.counts.setdefault(int(v), [0, 0])
            n[0] += 1
            n[1] += int(c > 0)

    def check(self) -> SPRT | None:
        """The test of the live version, once its predecessor's CTR is known (None before, or when
        switched off, or once the live version was found fine)."""
        if not self.drop or self.settled or self.live is None or self.predecessor is None:
            return None
        n0, c0 = self.counts.get(self.predecessor, (0, 0))
        if n0 < self.min_impressions or not 0 < c0 < n0:
            return None
        n, c = self.counts.get(self.live, (0, 0))
        result = ctr_sprt(c, n, c0 / n0, drop=self.drop, alpha=self.alpha, beta=self.beta)
        self.settled = result.decision == "fine"
        return result
