"""The promotion gate: score a candidate version off-policy on held-out logged slates, then decide.

    report = evaluate(policy, holdout, estimator="snips", rng=rng)    # Estimate of the slate reward
    ok, why = promote(candidate_report, current_report, tolerance=0.02)

Slate-level importance weights: w = pi(slate) / mu(slate), mu being the logged (behaviour)
probability of the whole slate and pi the candidate's exact probability of the same slate
(Plackett-Luce for the neural policy; 0/1 for deterministic bandits). Where the weights carry
too little evidence (effective sample size below ``min_ess``, as for a deterministic bandit
whose slate rarely equals the logged one), SNIPS/IPS fall back to DR, whose direct-method term
(:class:`SlateRewardModel`, ridge on position-weighted item features) still gives an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.diversity import position_weights
from rl.ope import Estimate, dr, ips, snips
from rl.policies import bandit_features

__all__ = ["SlateRewardModel", "evaluate", "promote", "GateReport"]


@dataclass
class GateReport:
    estimator: str
    """The estimator that produced ``estimate`` (may be ``dr`` after a low-ESS fallback)."""
    estimate: Estimate
    ctr: Estimate
    """The same estimator on the any-click indicator: comparable with measured on-policy CTR."""

    def to_dict(self) -> dict:
        e, c = self.estimate, self.ctr
        return {"estimator": self.estimator, "value": e.value, "low": e.low, "high": e.high, "n": e.n,
                "ess": e.ess, "ctr": c.value, "ctr_low": c.low, "ctr_high": c.high}


class SlateRewardModel:
    """Direct-method model: reward ~ theta . (position-weighted mean of the slate's bandit features)."""

    def __init__(self, reg: float = 1.0):
        self.reg = reg
        self.theta: np.ndarray | None = None

    @staticmethod
    def phi(obs, slate) -> np.ndarray:
        x = bandit_features(obs)[np.asarray(slate)]
        w = position_weights(len(slate))
        return (w[:, None] * x).sum(0) / w.sum()

    def fit(self, observations, slates, rewards) -> "SlateRewardModel":
        x = np.stack([self.phi(o, s) for o, s in zip(observations, slates)])
        y = np.asarray(rewards, np.float64)
        self.theta = np.linalg.solve(x.T @ x + self.reg * np.eye(x.shape[1]), x.T @ y)
        return self

    def predict(self, obs, slate) -> float:
        return float(self.phi(obs, slate) @ self.theta)


def _estimate(name, r, pi, mu, q_t, q_l, clip):
    if name == "ips":
        return ips(r, pi, mu, clip=clip)
    if name == "snips":
        return snips(r, pi, mu, clip=clip)
    return dr(r, pi, mu, q_t, q_l, clip=clip)


def evaluate(policy, logged, *, estimator: str = "snips", rng: np.random.Generator, min_ess: float = 20.0,
             clip: float | None = 100.0, model_samples: int = 4) -> GateReport:
    """Off-policy value of ``policy`` (rl.policies) on ``logged`` (rl.logged.Logged) held-out samples."""
    if estimator not in ("ips", "snips", "dr"):
        raise ValueError(f"estimator must be ips, snips or dr, got {estimator!r}")
    n = len(logged.observations)
    if n == 0:
        raise ValueError("no held-out samples to evaluate on")
    mu = np.exp(logged.batch.logp)
    pi = np.asarray([policy.slate_probability(o, s) for o, s in zip(logged.observations, logged.slates)])
    w = np.minimum(pi / mu, clip) if clip else pi / mu
    ess = float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0
    name = estimator if ess >= min_ess else "dr"
    out = {}
    if name == "dr":  # the candidate's own slates, drawn once, serve both reward models
        k = logged.slates.shape[1]
        targets = [[policy.select(o, k, rng)[0] for _ in range(model_samples)] for o in logged.observations]
    for key, r in (("reward", logged.batch.rewards), ("ctr", logged.ctr)):
        q_t = q_l = np.zeros(n)
        if name == "dr":
            model = SlateRewardModel().fit(logged.observations, logged.slates, r)
            q_l = np.asarray([model.predict(o, s) for o, s in zip(logged.observations, logged.slates)])
            q_t = np.asarray([np.mean([model.predict(o, s) for s in ts]) for o, ts in zip(logged.observations, targets)])
        out[key] = _estimate(name, r, pi, mu, q_t, q_l, clip)
    return GateReport(name, out["reward"], out["ctr"])


def promote(candidate: GateReport, current: GateReport | None, tolerance: float) -> tuple[bool, str]:
    """Publish when the candidate's lower bound >= the current version's estimate - tolerance."""
    if current is None:
        return True, "first version"
    bound = current.estimate.value - tolerance
    if candidate.estimate.low >= bound:
        return True, f"lower bound {candidate.estimate.low:.4f} >= current {current.estimate.value:.4f} - {tolerance}"
    return False, f"lower bound {candidate.estimate.low:.4f} < current {current.estimate.value:.4f} - {tolerance}"
