"""LoggedBatch: B logged impressions as the arrays a learner trains on (no torch, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LoggedBatch"]


@dataclass
class LoggedBatch:
    """B logged impressions ready for the learner.

    obs: (B, size) float32; actions: (B, K) int64 candidate indices; logp: (B,) behaviour log-prob
    of each slate; rewards: (B,) slate rewards; dist_inputs: (B, N) behaviour logits (zeros if not logged).
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    rewards: np.ndarray
    dist_inputs: np.ndarray | None = None

    def __post_init__(self):
        b = len(self.obs)
        for name in ("actions", "logp", "rewards"):
            if len(getattr(self, name)) != b:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows for {b} observations")
        if not np.isfinite(self.logp).all() or (self.logp > 1e-6).any():
            raise ValueError("logp must be finite log-probabilities (<= 0)")
        if not np.isfinite(self.rewards).all():
            raise ValueError("rewards contain NaN or infinity")

    def __len__(self) -> int:
        return len(self.obs)
