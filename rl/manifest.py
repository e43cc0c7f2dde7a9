"""PolicyManifest: what the store records beside a version's weights (``manifest.json``).

The trainer fills what it knows (spec, sha256, offsets trained through, the gate's figures);
the store assigns ``version``, ``parent``, ``created`` and ``stage``. Versions are ints
everywhere: in the store, in every response and on every logged impression.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from rl.spec import PolicySpec

__all__ = ["PolicyManifest", "STAGES", "serving_key"]

STAGES = ("live", "canary", "refused", "arm")


def serving_key(state: Mapping[str, Any]) -> list:
    """What a store's ``serving()`` state says replicas should serve, reduced to what changes it:
    ``[latest version, canary version, canary share, experiment name, experiment start, its arms'
    versions]`` (None where there is none; an algorithm arm's version moves as the trainer stores
    its next one)."""
    latest, canary, exp = state.get("latest"), state.get("canary"), state.get("experiment")
    return [None if latest is None else int(latest["version"]),
            None if canary is None else int(canary["version"]),
            None if canary is None else float(canary["share"]),
            None if exp is None else str(exp.get("name")),
            None if exp is None else float(exp.get("started", 0.0)),
            None if exp is None else [a.get("version") for a in exp.get("arms", [])]]


@dataclass(frozen=True)
class PolicyManifest:
    sha256: str
    """sha256 of the safetensors blob."""
    spec: PolicySpec
    trained_through: dict[str, int] = field(default_factory=dict)
    """``topic:partition`` -> the highest offset whose samples this version was trained on."""
    samples_trained: int = 0
    ope: dict | None = None
    """The gate's report on the candidate (:meth:`rl.gate.GateReport.to_dict`); None for a first version."""
    gate: str | None = None
    """Why it went live: the gate's decision, "first version", or the operator action that forced it."""
    current_ope: dict | None = None
    """The gate's report on the live version, on the same samples (canary judgements)."""
    ope_samples: int | None = None
    """Canary judgements: the impressions both versions were valued on (both arms')."""
    ope_canary_samples: int | None = None
    """Canary judgements: how many of them the canary's users were served."""
    rows_digest: str | None = None
    """Which item each row of its item-id tables stands for (:func:`streamrec.vectors.rows_digest`
    over ``spec.num_rows``): replicas serve it, and the trainer continues it, only over a catalog
    whose rows give the same digest. None: not recorded."""
    version: int = 0
    """Assigned by the store on publish (0 before)."""
    parent: int | None = None
    """The version that was live when this one was stored."""
    created: float = 0.0
    stage: str = "live"
    """``live`` (served as the latest at some point), ``canary``, ``refused``, or ``arm`` (a version
    of an experiment's algorithm arm: never live, never a rollback target)."""
    canary_share: float | None = None
    promoted: float | None = None
    refused_because: str | None = None
    rollback_of: int | None = None
    """A rollback republishes this earlier version's weights under a new version number."""
    rolled_back: int | None = None
    rollback_of_parent: int | None = None
    rollback_reason: str | None = None
    """Why: an operator's words, or the sequential test that found the live version worse."""

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"version must be an int >= 0, got {self.version!r}")

    @property
    def algorithm(self) -> str:
        return self.spec.algorithm

    def replace(self, **changes) -> "PolicyManifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        out["algorithm"] = self.spec.algorithm
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyManifest":
        """Raises ValueError naming an unknown key or a bad spec."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"algorithm"}
        if unknown:
            raise ValueError(f"manifest has unknown key(s): {', '.join(sorted(unknown))}")
        if "spec" not in d or "sha256" not in d:
            raise ValueError("manifest needs 'spec' and 'sha256'")
        try:
            spec = d["spec"] if isinstance(d["spec"], PolicySpec) else PolicySpec.from_dict(d["spec"] or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"manifest spec is invalid: {e}") from None
        return cls(**{**{k: v for k, v in d.items() if k in known}, "spec": spec})
