"""The logged policy input: what an impression carries so the trainer can rebuild it exactly.

Serving writes an :class:`ImpressionFeatures` (as a JSON object) into ``Impression.features``;
the trainer reads samples back into a :class:`rl.logged_batch.LoggedBatch` (and the per-sample
observations the bandits and the off-policy estimators need) with :func:`samples_to_logged`.
Vectors travel as base64 little-endian float32 (float16 for the behaviour scores): compact
JSON, exact where it matters.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rl.diversity import ild, position_weights
from rl.features import Featurizer
from rl.logged_batch import LoggedBatch
from rl.spec import Observation, PolicySpec

__all__ = ["ImpressionFeatures", "ShadowSlate", "samples_to_logged", "Logged", "b64_array", "array_b64",
           "CONTROL_VERSION"]

CONTROL_VERSION = 0
"""``Logged.versions`` of a sample the control arm served (on the wire it names the live version)."""


def array_b64(a: np.ndarray, dtype=np.float32) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def b64_array(s: str, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


@dataclass(frozen=True)
class ShadowSlate:
    """The slate a shadow arm's version chose for a request it did not serve: its items (ids) and
    their exact per-position probabilities under that version, logged beside the served slate."""

    arm: str
    version: int
    items: tuple[str, ...]
    propensities: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"arm": self.arm, "version": self.version, "items": list(self.items),
                "propensities": list(self.propensities)}

    @classmethod
    def from_dict(cls, d) -> "ShadowSlate | None":
        """None for a missing or malformed entry (a shadow slate is evidence, never needed to train)."""
        try:
            return cls(str(d["arm"]), int(d["version"]), tuple(map(str, d["items"])),
                       tuple(map(float, d["propensities"])))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ImpressionFeatures:
    """``Impression.features``: the serving-time policy input, enough to rebuild it exactly.

    On the wire a JSON object: ``candidates`` (N ids), ``user`` (base64 float32, the user part of
    the observation), ``scores`` (base64 float16, the behaviour scores), ``algorithm``, and
    and ``arm``."""

    candidates: tuple[str, ...]
    user: np.ndarray
    scores: np.ndarray | None
    algorithm: str
    arm: str = "policy"
    """``policy`` (the live version), ``control`` (the uniform control arm), ``canary`` (the
    trainer's candidate) or the name of the experiment arm that served it (:mod:`rl.experiment`)."""
    shadow: "ShadowSlate | None" = None
    """What a shadow arm would have shown for this request (never shown), or None."""

    def to_dict(self) -> dict:
        out = {"candidates": list(map(str, self.candidates)), "user": array_b64(self.user),
               "scores": array_b64(self.scores, np.float16), "algorithm": self.algorithm, "arm": self.arm}
        if self.shadow is not None:
            out["shadow"] = self.shadow.to_dict()
        return out

    @classmethod
    def from_dict(cls, f: dict) -> "ImpressionFeatures":
        """Raises KeyError/TypeError/ValueError when a required field is missing or malformed."""
        scores = b64_array(f["scores"], np.float16).astype(np.float32) if "scores" in f else None
        arm = f.get("arm")
        return cls(tuple(f["candidates"]), b64_array(f["user"]), scores, str(f.get("algorithm", "")),
                   arm if isinstance(arm, str) and 0 < len(arm) <= 64 else "policy",
                   ShadowSlate.from_dict(f.get("shadow")))


@dataclass
class Logged:
    """Decoded samples. batch: the PPO view; observations/slates/clicks: (B,) per-sample views."""

    batch: LoggedBatch
    observations: list[Observation]
    slates: np.ndarray
    """(B, K) candidate indices shown."""
    clicks: np.ndarray
    """(B, K) rewards by position (each position's feedback through :class:`streamrec.rewards.RewardTable`;
    above zero: a click-like positive)."""
    skipped: int
    """Samples that could not be rebuilt (another layout, missing features)."""
    propensities: np.ndarray | None = None
    """(B, K) the behaviour policy's probability of each shown item given the items above it."""
    ts: np.ndarray | None = None
    """(B,) when each impression was served (epoch seconds)."""
    versions: np.ndarray | None = None
    """(B,) the policy version that chose each slate (int; ``CONTROL_VERSION`` for the control arm)."""
    arms: np.ndarray | None = None
    """(B,) the arm that served each impression (``ImpressionFeatures.arm``)."""
    ild: np.ndarray | None = None
    """(B,) each shown slate's intra-list diversity."""
    shadows: np.ndarray | None = None
    """(B,) (the shadow arm's name, its version, the share of its slate's items the served slate
    also showed) for an impression served while a shadow arm computed its own slate (else None)."""

    _PER_SAMPLE = ("propensities", "ts", "versions", "arms", "ild", "shadows")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def ctr(self) -> np.ndarray:
        """(B,) 1 when the impression got any click."""
        return (self.clicks > 0).any(1).astype(np.float64)

    def subset(self, idx: np.ndarray) -> "Logged":
        """The samples at ``idx``, every per-sample view alike."""
        b = self.batch
        batch = LoggedBatch(b.obs[idx], b.actions[idx], b.logp[idx], b.rewards[idx],
                            None if b.dist_inputs is None else b.dist_inputs[idx])
        extra = {f: None if getattr(self, f) is None else getattr(self, f)[idx] for f in self._PER_SAMPLE}
        return Logged(batch, [self.observations[i] for i in idx], self.slates[idx], self.clicks[idx], 0, **extra)

    def logged_by(self, propensities: np.ndarray) -> "Logged":
        """The same samples as if logged with ``propensities`` ((B, K) per position): the behaviour
        an estimator divides by, e.g. two loggers pooled by the balance heuristic."""
        p = np.asarray(propensities, np.float64)
        if p.shape != self.slates.shape:
            raise ValueError(f"propensities must be {self.slates.shape} like the slates, got {p.shape}")
        with np.errstate(divide="ignore"):
            logp = np.log(p).sum(1)
        b = self.batch
        batch = LoggedBatch(b.obs, b.actions, logp, b.rewards, b.dist_inputs)
        return dataclasses.replace(self, batch=batch, propensities=p)

    @staticmethod
    def concat(parts: Sequence["Logged"]) -> "Logged":
        """One Logged of ``parts`` in order."""
        b = [p.batch for p in parts]
        batch = LoggedBatch(np.concatenate([x.obs for x in b]), np.concatenate([x.actions for x in b]),
                            np.concatenate([x.logp for x in b]), np.concatenate([x.rewards for x in b]),
                            np.concatenate([x.dist_inputs for x in b]))
        extra = {f: None if any(getattr(p, f) is None for p in parts)
                 else np.concatenate([getattr(p, f) for p in parts]) for f in Logged._PER_SAMPLE}
        return Logged(batch, [o for p in parts for o in p.observations], np.concatenate([p.slates for p in parts]),
                      np.concatenate([p.clicks for p in parts]), 0, **extra)


def samples_to_logged(samples: Sequence, featurizer: Featurizer, spec: PolicySpec, lam: float) -> Logged:
    """TrainingSamples -> observations, slates and rewards (position-weighted typed rewards + lam * ILD)."""
    lay = spec.layout
    obs, acts, logps, rewards, dis, observations, clicks, props, ts, versions = [], [], [], [], [], [], [], [], [], []
    arms, ilds, shadows = [], [], []
    skipped = 0
    pw = position_weights(spec.slate_size)
    for s in samples:
        try:
            f = ImpressionFeatures.from_dict(s.features or {})
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        cands, user, scores = f.candidates, f.user, f.scores
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
        diversity = ild(o.items[slate])
        rewards.append(float(c @ pw + lam * diversity))
        ilds.append(diversity)
        arms.append(f.arm)
        sh = f.shadow
        shadows.append(None if sh is None or not sh.items else
                       (sh.arm, sh.version, len(set(sh.items) & set(s.items)) / len(sh.items)))
        dis.append(scores / spec.temperature if scores is not None else np.zeros(len(cands), np.float32))
        observations.append(o)
        clicks.append(c)
        ts.append(s.ts)
        versions.append(CONTROL_VERSION if f.arm == "control" else int(s.policy_version))
    k, n = spec.slate_size, spec.num_candidates
    batch = LoggedBatch(np.asarray(obs, np.float32).reshape(-1, lay.size), np.asarray(acts, np.int64).reshape(-1, k),
                        np.asarray(logps, np.float64), np.asarray(rewards, np.float64),
                        np.asarray(dis, np.float32).reshape(-1, n))
    return Logged(batch, observations, batch.actions, np.asarray(clicks, np.float64).reshape(-1, k), skipped,
                  np.asarray(props, np.float64).reshape(-1, k), np.asarray(ts, np.float64),
                  np.asarray(versions, np.int64), _objects(arms),
                  np.asarray(ilds, np.float64), _objects(shadows))


def _objects(values: list) -> np.ndarray:
    """A (B,) object array of ``values`` (tuples stay whole elements)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
