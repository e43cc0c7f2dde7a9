"""The serving interface every policy implements, and the one table from algorithm to class.

::

    pol = make_policy(spec)                         # a fresh policy; policy_from_state(spec, tensors) rebuilds one
    slate, probs, scores = pol.select(obs, k, rng)  # (K,) candidate indices, (K,) per-position probs, (N,)
    pol.position_probabilities(obs, slate)          # (K,) target probabilities for off-policy estimates
    tensors = pol.state()                           # what the PolicyStore publishes (safetensors)

The classes live in :mod:`rl.bandits` (random, popularity, epsilon-greedy, LinUCB, Thompson) and
:mod:`rl.neural` (PPO's serving model). Nothing here imports torch or Ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from rl.bandits import EpsilonGreedyPolicy, LinUCBPolicy, PopularityPolicy, RandomPolicy, ThompsonPolicy
from rl.neural import NeuralPolicy, SlateScorer
from rl.spec import ALGORITHMS, Observation, PolicySpec

__all__ = ["Policy", "POLICIES", "make_policy", "policy_from_state", "expected_shapes", "grow_rows"]


class Policy(Protocol):
    """A slate policy at serving time: no I/O, exact (or stated Monte Carlo) probabilities."""

    algorithm: str
    spec: PolicySpec

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        """(N,) the candidates' scores (with ``rng``: a draw's, for a randomised policy)."""

    def select(self, obs: Observation, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """((K,) the slate, (K,) each position's probability given the ones above, (N,) scores)."""

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """(K,) this policy's probability of each item of ``slate`` given the items above it."""

    def slate_probability(self, obs: Observation, slate: np.ndarray) -> float:
        """The product of :meth:`position_probabilities`."""

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator,
                      draws: int = 4) -> Sequence[tuple[np.ndarray, float]]:
        """The slate distribution as (slate, weight) pairs (the direct method averages over it)."""

    def state(self) -> dict[str, np.ndarray]:
        """The tensors a version publishes."""

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> "Policy":
        """Take published tensors (shapes already checked); returns self."""


#: algorithm -> policy class
POLICIES: dict[str, type] = {p.algorithm: p for p in (NeuralPolicy, LinUCBPolicy, ThompsonPolicy, EpsilonGreedyPolicy,
                                                      PopularityPolicy, RandomPolicy)}
assert set(POLICIES) == set(ALGORITHMS)


def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a published version of ``spec`` holds: the policy's, plus the (D, m) projection."""
    return {**POLICIES[spec.algorithm].expected_shapes(spec), "projection": (spec.text_dim, spec.m)}


def grow_rows(spec: PolicySpec, tensors: Mapping[str, Any], num_rows: int) -> tuple[PolicySpec, dict[str, Any]]:
    """``spec`` and its tensors for item-id tables of ``num_rows`` rows (a grown catalog): the
    learned rows kept, each new row a copy of row 0, the unknown item, so a new item scores as it
    did before it had a row (by its text vector) and learns from there; a bandit's counts start
    at zero (no evidence yet). Tensors come back as numpy arrays."""
    if num_rows < spec.num_rows:
        raise ValueError(f"tables shrink from {spec.num_rows} to {num_rows} rows: rows are never given back")
    grown = dataclasses.replace(spec, num_rows=num_rows)
    before, after = expected_shapes(spec), expected_shapes(grown)
    zero = spec.algorithm != NeuralPolicy.algorithm
    out = dict(tensors)
    for name, shape in after.items():
        if name in out and shape != before[name]:
            t = out[name]
            t = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
            extra = num_rows - len(t)
            new = np.zeros((extra, *t.shape[1:]), t.dtype) if zero else np.repeat(t[:1], extra, 0)
            out[name] = np.concatenate([t, new])
    return grown, out


def make_policy(spec: PolicySpec, module_state: Mapping[str, Any] | None = None) -> Policy:
    """A fresh policy of ``spec`` (the neural one needs its module's initial state)."""
    if spec.algorithm == NeuralPolicy.algorithm:
        if module_state is None:
            raise ValueError("the ppo policy is built from an RLlib module state (rl.learners.ppo.SlateLearner)")
        return NeuralPolicy(spec, SlateScorer.from_module_state(spec.layout, module_state))
    return POLICIES[spec.algorithm](spec)


def policy_from_state(spec: PolicySpec, tensors: Mapping[str, np.ndarray], explore: bool = True) -> Policy:
    """Rebuild a serving policy from published tensors (shapes already checked by rl.weights.unpack)."""
    own = {k: v for k, v in tensors.items() if k != "projection"}
    if spec.algorithm == NeuralPolicy.algorithm:
        return NeuralPolicy(spec, SlateScorer(spec.layout, {}), explore).load_state(own)
    return POLICIES[spec.algorithm](spec).load_state(own)
