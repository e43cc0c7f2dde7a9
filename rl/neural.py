"""The neural slate policy at serving time: :class:`SlateScorer` (numpy) and :class:`NeuralPolicy`.

The serving model is a different object from the training network
(:class:`rl.learners.module.SlateScorerModule`, torch): :meth:`SlateScorer.from_module_state`
converts the module's state dict, and the conversion is tested for equal scores and slate
log-probabilities. No torch on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rl.features import ObsLayout
from rl.slate import diverse_greedy, plackett_luce_position_probs, plackett_luce_sample
from rl.spec import Observation, PolicySpec
from rl.weights import WeightsError

__all__ = ["SlateScorer", "NeuralPolicy"]


def _relu(x):
    return np.maximum(x, 0.0)


@dataclass
class SlateScorer:
    """numpy twin of :meth:`rl.learners.module.SlateScorerModule.scores` (the serving model)."""

    layout: ObsLayout
    w: dict[str, np.ndarray]

    #: module state-dict names the scorer needs (the value head stays with the trainer)
    NAMES = ("user_tower.0.weight", "user_tower.0.bias", "user_tower.2.weight", "user_tower.2.bias",
             "id_embedding.weight", "item_bias.weight", "item_tower.weight", "item_tower.bias", "content_weights")

    @classmethod
    def from_module_state(cls, layout: ObsLayout, state: Mapping[str, Any]) -> "SlateScorer":
        """Convert an RLlib module state dict (torch tensors or arrays) into the serving model."""
        w = {}
        for n in cls.NAMES:
            if n not in state:
                raise WeightsError(f"missing tensor {n!r}")
            t = state[n]
            w[n] = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, np.float32)
        return cls(layout, w)

    @staticmethod
    def shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        u, h, e, m, r = spec.layout.user_dim, spec.hidden, spec.embed, spec.m, spec.num_rows
        return {"user_tower.0.weight": (h, u), "user_tower.0.bias": (h,), "user_tower.2.weight": (e, h),
                "user_tower.2.bias": (e,), "id_embedding.weight": (r, spec.id_dim), "item_bias.weight": (r, 1),
                "item_tower.weight": (e, m + spec.id_dim), "item_tower.bias": (e,), "content_weights": (2,)}

    def scores(self, obs: Observation) -> np.ndarray:
        """(N,) scores; rows beyond the table (items newer than the version) use row 0."""
        w, m = self.w, self.layout.m
        rows = np.where(obs.rows < len(w["id_embedding.weight"]), obs.rows, 0)
        u = _relu(obs.user @ w["user_tower.0.weight"].T + w["user_tower.0.bias"])
        u = u @ w["user_tower.2.weight"].T + w["user_tower.2.bias"]
        x = np.concatenate([obs.items, w["id_embedding.weight"][rows]], 1)
        v = x @ w["item_tower.weight"].T + w["item_tower.bias"]
        cw = w["content_weights"]
        content = cw[0] * (obs.items @ obs.user[:m]) + cw[1] * (obs.items @ obs.user[m:2 * m])
        return (v @ u + content + w["item_bias.weight"][rows, 0]).astype(np.float64)


class NeuralPolicy:
    """PPO's policy at serving time: diverse Plackett-Luce over the scorer's scores."""

    algorithm = "ppo"

    def __init__(self, spec: PolicySpec, scorer: SlateScorer, explore: bool = True):
        self.spec, self.scorer, self.explore = spec, scorer, explore

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.scorer.scores(obs)

    def _sim(self, obs: Observation) -> np.ndarray | None:
        return obs.similarity() if self.spec.penalty > 0 else None

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        s = self.scores(obs)
        if not self.explore:
            return diverse_greedy(s, self._sim(obs), k, self.spec.penalty), np.ones(k), s
        slate, probs = plackett_luce_sample(s, k, rng, self.spec.temperature, self._sim(obs), self.spec.penalty)
        return slate, probs, s

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """(K,) probability of each item of ``slate`` given the items above it."""
        return plackett_luce_position_probs(self.scores(obs), slate, self.spec.temperature, self._sim(obs),
                                            self.spec.penalty)

    def slate_probability(self, obs: Observation, slate: np.ndarray) -> float:
        return float(np.prod(self.position_probabilities(obs, slate)))

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        """``draws`` sampled slates, equally weighted (the exact distribution has N!/(N-K)! slates)."""
        return [(self.select(obs, k, rng)[0], 1.0 / draws) for _ in range(draws)]

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.scorer.w)

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> "NeuralPolicy":
        self.scorer = SlateScorer(self.spec.layout, {k: np.asarray(v, np.float32) for k, v in tensors.items()})
        return self

    @staticmethod
    def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        return SlateScorer.shapes(spec)
