"""The promotion gate: score a candidate version off-policy on held-out logged slates, then decide.

    report = evaluate(policy, holdout, estimator="snips", rng=rng)    # Estimate of the slate reward
    ok, why = promote(candidate_report, current_report, tolerance=0.02)

Slate-level importance weights: w = pi(slate) / mu(slate), mu being the logged (behaviour)
probability of the whole slate and pi the candidate's exact probability of the same slate
(Plackett-Luce for the neural policy; 0/1 for deterministic bandits). Where the weights carry
too little evidence, SNIPS/IPS fall back to DR, whose direct-method term (:class:`rl.click_model.ClickModel`,
ridge on the shown items' features and positions) still gives an estimate. Two checks:

* effective sample size below ``min_ess`` (a deterministic bandit whose slate rarely equals the
  logged one);
* *support* below ``min_support``: the mean (clipped) weight, whose expectation is 1 when the
  logs cover the candidate. An epsilon-greedy candidate whose greedy slates differ from the
  logged ones keeps weight ~1 on the exploration slates only, so its ESS looks healthy while
  SNIPS, renormalising, would value it as the exploration traffic (far too low).

With ``dr_weights="cascade"`` (the trainer's default) DR weighs evidence per position
(:func:`rl.ope.cascade_dr`): position k's click is corrected with the product of the probability
ratios of positions 1..k, so a logged slate that starts like the candidate's still corrects the
click model at the top, where whole-slate weights need all K items to agree. That needs logs with
support: a deterministic logger (LinUCB, Thompson at its mean) gives none for a candidate's new
picks, which is why a bandit's first version serves uniformly random slates
(:meth:`rl.trainer_loop.TrainerLoop.publish_initial`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.bandits import bandit_features
from rl.click_model import ClickModel, slate_reward_ctr
from rl.diversity import position_weights
from rl.ope import Estimate, cascade_dr, dr, effective_sample_size, ips, snips

__all__ = ["evaluate", "promote", "GateReport", "first_click"]


@dataclass
class GateReport:
    estimator: str
    """The estimator that produced ``estimate`` (may be ``dr`` after a low-ESS fallback)."""
    estimate: Estimate
    ctr: Estimate
    """The same estimator on the any-click indicator: comparable with measured on-policy CTR."""
    support: float = float("nan")
    """Mean clipped importance weight (1 when the logs cover the candidate's slates)."""

    def to_dict(self) -> dict:
        e, c = self.estimate, self.ctr
        return {"estimator": self.estimator, "value": e.value, "low": e.low, "high": e.high, "n": e.n,
                "ess": e.ess, "support": self.support, "ctr": c.value, "ctr_low": c.low, "ctr_high": c.high}


def first_click(clicks: np.ndarray) -> np.ndarray:
    """(B, K) P(the first click is at position k) from (B, K) click probabilities (or 0/1 clicks):
    c_k * prod_{j<k} (1 - c_j). Their sum over k is the slate's CTR, and position k depends on
    the items at positions <= k only, so CTR decomposes for :func:`rl.ope.cascade_dr`."""
    c = np.asarray(clicks, dtype=np.float64)
    above = np.cumprod(np.concatenate([np.ones((c.shape[0], 1)), 1.0 - c[:, :-1]], 1), axis=1)
    return c * above


ESTIMATORS = ("ips", "snips", "dr")
DR_WEIGHTS = ("slate", "cascade")


def evaluate(policy, logged, *, estimator: str = "snips", rng: np.random.Generator, min_ess: float = 20.0,
             min_support: float = 0.7, clip: float | None = 100.0, model_samples: int = 4,
             lam: float = 0.0, click_model: ClickModel | None = None, dr_weights: str = "slate",
             target_probs: np.ndarray | None = None) -> GateReport:
    """Off-policy value of ``policy`` (an :class:`rl.policies.Policy`) on ``logged`` (rl.logged.Logged) held-out samples.

    ``lam`` is the diversity weight the logged rewards were formed with (the direct-method model
    of DR rebuilds rewards the same way). ``click_model``: DR's direct method, fitted on other
    samples than ``logged`` (the trainer's, grown every round); without one (or an empty one) it
    is fitted on ``logged`` itself. ``dr_weights``: DR's importance weights, ``slate`` (whole-slate
    ratios) or ``cascade`` (per position, the ratios down to it: :func:`rl.ope.cascade_dr`; used
    where the logs carry per-position propensities, reported as
    ``cascade-dr``; slate weights otherwise, and when the top position's weights have an ESS below
    ``min_ess``: a few matches weighted 1/mu each, as after a uniform logger on a small holdout,
    can value a version at several times its CTR). ``target_probs``: (B, K) the policy's
    per-position probabilities of the logged slates where already known (the policy served them
    itself: a canary's arm), NaN rows where not (computed from the policy; for Thompson sampling a
    second Monte Carlo estimate, noisier than reading back what the replica logged).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be ips, snips or dr, got {estimator!r}")
    if dr_weights not in DR_WEIGHTS:
        raise ValueError(f"dr_weights must be slate or cascade, got {dr_weights!r}")
    n = len(logged.observations)
    if n == 0:
        raise ValueError("no held-out samples to evaluate on")
    mu = np.exp(logged.batch.logp)
    known = np.zeros(n, bool)
    if target_probs is not None:
        target_probs = np.asarray(target_probs, np.float64)
        if target_probs.shape != logged.slates.shape:
            raise ValueError(f"target_probs must be {logged.slates.shape} like the logged slates, got {target_probs.shape}")
        known = np.isfinite(target_probs).all(1)
    pi_k = mu_k = None
    if dr_weights == "cascade" and logged.propensities is not None:
        pi_k = np.stack([target_probs[i] if known[i] else policy.position_probabilities(o, s)
                         for i, (o, s) in enumerate(zip(logged.observations, logged.slates))])  # (B, K)
        mu_k = logged.propensities
        pi = pi_k.prod(1)
    else:
        pi = np.asarray([target_probs[i].prod() if known[i] else policy.slate_probability(o, s)
                         for i, (o, s) in enumerate(zip(logged.observations, logged.slates))])
    w = np.minimum(pi / mu, clip) if clip else pi / mu
    ess = effective_sample_size(w)
    support = float(w.mean())
    name = estimator if ess >= min_ess and support >= min_support else "dr"
    out = {}
    if name != "dr":
        for key, r in (("reward", logged.batch.rewards), ("ctr", logged.ctr)):
            out[key] = (ips if name == "ips" else snips)(r, pi, mu, clip=clip)
        return GateReport(name, out["reward"], out["ctr"], support)
    if pi_k is not None:  # a few large top-position weights (small holdout, uniform logger): too noisy
        top = pi_k[:, 0] / mu_k[:, 0]
        if effective_sample_size(np.minimum(top, clip) if clip else top) < min_ess:
            pi_k = None
    # DR: one click model; the candidate's slate distribution serves both values
    k = logged.slates.shape[1]
    model = (click_model if click_model is not None and click_model.theta is not None
             else ClickModel().fit(logged.observations, logged.slates, logged.clicks))
    p_l, q_l, q_t = np.zeros((n, k)), np.zeros((n, 2)), np.zeros((n, 2))
    for i, (o, s) in enumerate(zip(logged.observations, logged.slates)):
        x = bandit_features(o)
        p_l[i], sim = model.slate_probs(x, o.items, s)
        q_l[i] = slate_reward_ctr(p_l[i], sim, lam)
        for t, wt in policy.slate_mixture(o, k, rng, model_samples):
            q_t[i] += wt * np.asarray(model.slate_values(x, o.items, t, lam))
    if pi_k is not None:
        # per position: the evidence of every logged slate that agrees with the candidate down to it
        clicked = (logged.clicks > 0).astype(np.float64)
        out["reward"] = cascade_dr(q_t[:, 0], clicked, p_l, pi_k, mu_k, weights=position_weights(k), clip=clip)
        out["ctr"] = cascade_dr(q_t[:, 1], first_click(clicked), first_click(p_l), pi_k, mu_k, clip=clip)
        name = "cascade-dr"
    else:
        for j, (key, r) in enumerate((("reward", logged.batch.rewards), ("ctr", logged.ctr))):
            out[key] = dr(r, pi, mu, q_t[:, j], q_l[:, j], clip=clip)
    return GateReport(name, out["reward"], out["ctr"], support)


def promote(candidate: GateReport, current: GateReport | None, tolerance: float) -> tuple[bool, str]:
    """Publish when the candidate's lower bound >= the live estimate - tolerance * |live estimate|
    (a relative tolerance: the same rule at CTR 0.05 and at 0.5)."""
    if current is None:
        return True, "first version"
    live = current.estimate.value
    bound = live - tolerance * abs(live)
    rule = f"live {live:.4f} - {tolerance:g} x {abs(live):.4f} = {bound:.4f}"
    if candidate.estimate.low >= bound:
        return True, f"lower bound {candidate.estimate.low:.4f} >= {rule}"
    return False, f"lower bound {candidate.estimate.low:.4f} < {rule}"
