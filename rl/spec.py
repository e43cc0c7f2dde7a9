"""What a policy version is (:class:`PolicySpec`) and what it ranks (:class:`Observation`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from rl.features import ObsLayout
from rl.slate import cosine_similarity

__all__ = ["ALGORITHMS", "PolicySpec", "Observation"]

ALGORITHMS = ("ppo", "linucb", "thompson", "egreedy", "popularity", "random")


@dataclass(frozen=True)
class PolicySpec:
    """What a version is: algorithm and sizes. Travels as JSON in the manifest next to the weights."""

    algorithm: str
    m: int
    """Projected text-vector size."""
    num_candidates: int
    slate_size: int
    num_rows: int
    """Item-id rows (catalog + 1 unknown)."""
    text_dim: int = 384
    """D: size of the text vectors the published projection maps from."""
    temperature: float = 1.0
    penalty: float = 0.0
    """Diversity penalty of the slate distribution (0 = plain Plackett-Luce / top-k)."""
    epsilon: float = 0.1
    alpha: float = 1.0
    draws: int = 64
    """Thompson: posterior draws per impression behind its logged propensities (Monte Carlo)."""
    hidden: int = 64
    embed: int = 32
    id_dim: int = 8

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if not 1 <= self.slate_size <= self.num_candidates:
            raise ValueError(f"slate_size must be in [1, num_candidates={self.num_candidates}], got {self.slate_size}")

    @property
    def layout(self) -> ObsLayout:
        return ObsLayout(self.m, self.num_candidates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicySpec":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Observation:
    """One impression's policy input. user: (U,), items: (N, m), rows: (N,) int."""

    user: np.ndarray
    items: np.ndarray
    rows: np.ndarray

    @classmethod
    def from_flat(cls, obs: np.ndarray, layout: ObsLayout) -> "Observation":
        u, i, r = layout.split(np.asarray(obs, np.float32))
        return cls(u, i, r.astype(np.int64))

    def similarity(self) -> np.ndarray:
        return cosine_similarity(self.items)
