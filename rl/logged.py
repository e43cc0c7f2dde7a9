"""The logged policy input: what an impression carries so the trainer can rebuild it exactly.

Serving writes :func:`impression_features` into ``Impression.features``; the trainer reads
samples back into a :class:`rl.ppo.LoggedBatch` (and the per-sample observations the bandits
and the off-policy estimators need) with :func:`samples_to_logged`. Vectors travel as base64
little-endian float32 (float16 for the behaviour scores): compact JSON, exact where it matters.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rl.diversity import ild, position_weights
from rl.features import Featurizer
from rl.policies import Observation, PolicySpec
from rl.ppo import LoggedBatch

__all__ = ["impression_features", "samples_to_logged", "Logged", "b64_array", "array_b64"]


def array_b64(a: np.ndarray, dtype=np.float32) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def b64_array(s: str, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


def impression_features(candidate_ids: Sequence[str], user: np.ndarray, scores: np.ndarray, algorithm: str,
                        mixture: dict | None = None) -> dict:
    """Impression.features: the candidates, the user part of the observation, the behaviour scores,
    and while a canary runs, ``mixture``: both versions' (K,) probabilities of the slate
    (``live``, ``canary``), their version strings and the canary's share."""
    out = {"candidates": list(map(str, candidate_ids)), "user": array_b64(user),
           "scores": array_b64(scores, np.float16), "algorithm": algorithm}
    if mixture is not None:
        out["mixture"] = mixture
    return out


def _mixture_probs(f: dict, k: int) -> tuple[np.ndarray, str, str]:
    """((2, K) the live and canary versions' logged probabilities, live version, canary version);
    NaN and "" when the impression was not served beside a canary (or its record is malformed)."""
    m = f.get("mixture")
    try:
        probs = np.asarray([m["live"], m["canary"]], np.float64)
        if probs.shape == (2, k) and np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all():
            return probs, str(m["live_version"]), str(m["canary_version"])
    except (KeyError, TypeError, ValueError):
        pass
    return np.full((2, k), np.nan), "", ""


@dataclass
class Logged:
    """Decoded samples. batch: the PPO view; observations/slates/clicks: (B,) per-sample views."""

    batch: LoggedBatch
    observations: list[Observation]
    slates: np.ndarray
    """(B, K) candidate indices shown."""
    clicks: np.ndarray
    """(B, K) feedback values by position."""
    skipped: int
    """Samples that could not be rebuilt (another layout, missing features)."""
    propensities: np.ndarray | None = None
    """(B, K) the behaviour policy's probability of each shown item given the items above it."""
    ts: np.ndarray | None = None
    """(B,) when each impression was served (epoch seconds)."""
    versions: np.ndarray | None = None
    """(B,) the policy version that chose each slate (str)."""
    mixture: np.ndarray | None = None
    """(B, 2, K) the live and the canary version's per-position probabilities of each slate, as
    logged while a canary ran beside the live version (NaN for other samples)."""
    mixture_versions: np.ndarray | None = None
    """(B, 2) the (live, canary) version strings of ``mixture`` ("" for other samples)."""

    @property
    def ctr(self) -> np.ndarray:
        """(B,) 1 when the impression got any click."""
        return (self.clicks > 0).any(1).astype(np.float64)


def samples_to_logged(samples: Sequence, featurizer: Featurizer, spec: PolicySpec, lam: float) -> Logged:
    """TrainingSamples -> observations, slates and rewards (position-weighted clicks + lam * ILD)."""
    lay = spec.layout
    obs, acts, logps, rewards, dis, observations, clicks, props, ts, versions = [], [], [], [], [], [], [], [], [], []
    mixture, mixture_versions = [], []
    skipped = 0
    pw = position_weights(spec.slate_size)
    for s in samples:
        f = s.features or {}
        try:
            cands = f["candidates"]
            user = b64_array(f["user"])
            scores = b64_array(f["scores"], np.float16).astype(np.float32) if "scores" in f else None
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if (len(cands) != spec.num_candidates or len(user) != lay.user_dim or len(s.items) != spec.slate_size
                or (scores is not None and len(scores) != len(cands))):
            skipped += 1
            continue
        pos = {c: j for j, c in enumerate(cands)}
        try:
            slate = np.asarray([pos[i] for i in s.items], np.int64)
        except KeyError:
            skipped += 1
            continue
        flat = featurizer.observe(user, cands)
        o = Observation.from_flat(flat, lay)
        c = np.asarray(s.rewards, np.float64)
        obs.append(flat)
        acts.append(slate)
        logps.append(float(np.log(np.asarray(s.propensities)).sum()))
        props.append(s.propensities)
        rewards.append(float((c > 0) @ pw + lam * ild(o.items[slate])))
        dis.append(scores / spec.temperature if scores is not None else np.zeros(len(cands), np.float32))
        observations.append(o)
        clicks.append(c)
        ts.append(s.ts)
        versions.append(str(s.policy_version))
        m, live_v, canary_v = _mixture_probs(f, spec.slate_size)
        mixture.append(m)
        mixture_versions.append((live_v, canary_v))
    k, n = spec.slate_size, spec.num_candidates
    batch = LoggedBatch(np.asarray(obs, np.float32).reshape(-1, lay.size), np.asarray(acts, np.int64).reshape(-1, k),
                        np.asarray(logps, np.float64), np.asarray(rewards, np.float64),
                        np.asarray(dis, np.float32).reshape(-1, n))
    return Logged(batch, observations, batch.actions, np.asarray(clicks, np.float64).reshape(-1, k), skipped,
                  np.asarray(props, np.float64).reshape(-1, k), np.asarray(ts, np.float64),
                  np.asarray(versions, dtype=object), np.asarray(mixture, np.float64).reshape(-1, 2, k),
                  np.asarray(mixture_versions, dtype=object).reshape(-1, 2))
