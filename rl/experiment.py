"""Experiments: which users an operator's arms serve. Pure (no I/O); the policy store keeps the one
running (:meth:`actors.policy_store.PolicyDirectory.start_experiment`) and every replica follows it.

::

    exp = Experiment.from_dict({"name": "v12-vs-live", "arms": [
        {"name": "v12", "version": 12, "share": 0.2},                 # served to 20% of users
        {"name": "v13-shadow", "version": 13, "share": 0.1, "shadow": True}]})  # computed, never shown
    exp.arm_of("user42")   # an Arm, or None: the live version serves this user

An arm serves a stored version, or an algorithm (``{"name": "ucb", "algorithm": "linucb",
"share": 0.2}``): the trainer trains that algorithm beside the live lineage on the same samples
and stores its versions as the arm's (:meth:`actors.policy_store.PolicyDirectory.advance_arm`);
the arm's ``version`` is then the newest of them, and its users see the live version until the
first one is stored.

Assignment is sticky: a user's bucket is a salted BLAKE2b hash of the id read as a number in
[0, 1) (:func:`bucket`), the same on every replica and every request, so a user sees one arm for
the whole experiment; arms take consecutive ranges of the buckets in their order. The control arm
(``serve.control_share``) is drawn first with its own salt and is never part of an experiment, so
every arm's lift is measured against the same control users. Users in no arm see the live version
(the arm ``policy``).

The trainer's canary (``trainer.canary_share``) is an experiment of one arm, ``canary``
(:func:`canary_experiment`): the candidate serves a sticky share of users drawn under a salt of
its own (before the operator's experiment, after the control arm), and is judged with the live
version on both arms' impressions of the same time.

A shadow arm's users see the live version; its version ranks the same candidates on the same
request and its slate is logged beside the served one with its exact propensities
(:class:`rl.logged.ShadowSlate`), for off-policy evaluation without showing it.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

__all__ = ["Arm", "Experiment", "bucket", "canary_experiment", "RESERVED_ARMS", "ARM_ALGORITHMS", "CANARY_ARM"]

CANARY_ARM = "canary"
"""The arm of the trainer's canary experiment (:func:`canary_experiment`)."""
RESERVED_ARMS = ("policy", "control", CANARY_ARM)
"""Arm names the loop uses itself: the live version, the control arm and the trainer's canary."""
ARM_ALGORITHMS = ("linucb", "thompson", "egreedy", "popularity", "random")
"""Algorithms an arm can name: those the trainer updates in place beside the live lineage. Not
``ppo``: a second RLlib learner beside the trainer's (a stored PPO version can be an arm)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def bucket(user_id: str, salt: str) -> float:
    """The user's position in [0, 1) under ``salt``: a keyed BLAKE2b hash of the id (sticky, and
    independent between salts)."""
    h = hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(h, "big") / 2**64


@dataclass(frozen=True)
class Arm:
    name: str
    """Letters, digits, ``_ . -`` (at most 64); not ``policy`` or ``control``."""
    version: int | None
    """The stored policy version this arm serves (or computes, in shadow); for an algorithm arm,
    the newest version of its lineage (None until the trainer stored one)."""
    share: float
    """Share of users in this arm, in (0, 1)."""
    shadow: bool = False
    """Compute this arm's slate beside the live one's and log it; show the live one."""
    algorithm: str | None = None
    """One of :data:`ARM_ALGORITHMS`: the trainer trains it for this arm (None: a stored version)."""


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    salt: str = ""
    """The assignment hash's salt (default: the experiment's name, so each experiment draws its own groups)."""
    started: float = field(default_factory=time.time)
    by_trainer: bool = False
    """The trainer's canary (:func:`canary_experiment`): its one arm is named ``canary``."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not self.arms:
            raise ValueError("arms: an experiment needs at least one arm")
        seen: set[str] = set()
        for i, a in enumerate(self.arms):
            where = f"arms[{i}]"
            if not isinstance(a.name, str) or not _NAME.match(a.name):
                raise ValueError(f"{where}.name: {a.name!r} must be 1-64 letters, digits, '_', '.' or '-'")
            if a.name in RESERVED_ARMS and not (self.by_trainer and a.name == CANARY_ARM):
                raise ValueError(f"{where}.name: {a.name!r} is reserved (the live version, the control arm and the trainer's canary)")
            if a.name in seen:
                raise ValueError(f"{where}.name: {a.name!r} names two arms")
            seen.add(a.name)
            if a.algorithm is not None and a.algorithm not in ARM_ALGORITHMS:
                why = (" (a second RLlib learner beside the trainer's; name a stored PPO version instead)"
                       if a.algorithm == "ppo" else "")
                raise ValueError(f"{where}.algorithm: must be one of {', '.join(ARM_ALGORITHMS)}, got {a.algorithm!r}{why}")
            if a.version is None and a.algorithm is None:
                raise ValueError(f"{where}: needs a version (a stored policy) or an algorithm (trained for the arm)")
            if a.version is not None and (isinstance(a.version, bool) or not isinstance(a.version, int) or a.version < 1):
                raise ValueError(f"{where}.version: must be a stored policy version (an integer >= 1), got {a.version!r}")
            if isinstance(a.share, bool) or not isinstance(a.share, (int, float)) or not 0 < a.share < 1:
                raise ValueError(f"{where}.share: must be in (0, 1), got {a.share!r}")
            if not isinstance(a.shadow, bool):
                raise ValueError(f"{where}.shadow: must be true or false, got {a.shadow!r}")
        total = sum(a.share for a in self.arms)
        if total >= 1:
            raise ValueError(f"arms: shares add up to {total:g}; they must leave some users to the live version (< 1)")
        if not self.salt:
            object.__setattr__(self, "salt", self.name)

    def arm_of(self, user_id: str) -> Arm | None:
        """The arm ``user_id`` is in, or None (the live version serves them)."""
        b, edge = bucket(user_id, self.salt), 0.0
        for a in self.arms:
            edge += a.share
            if b < edge:
                return a
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "salt": self.salt, "started": self.started,
                "arms": [{"name": a.name, "version": a.version, "share": a.share, "shadow": a.shadow,
                          **({"algorithm": a.algorithm} if a.algorithm is not None else {})} for a in self.arms]}

    @classmethod
    def from_dict(cls, d) -> "Experiment":
        """Raises ValueError naming the field that is missing, unknown or wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"an experiment is an object with name and arms, got {type(d).__name__}")
        unknown = set(d) - {"name", "arms", "salt", "started"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown field (known: name, arms, salt, started)")
        if "name" not in d or "arms" not in d:
            raise ValueError(f"{'name' if 'name' not in d else 'arms'}: required")
        if not isinstance(d["arms"], list):
            raise ValueError("arms: must be a list of {name, version or algorithm, share, shadow}")
        arms = []
        for i, a in enumerate(d["arms"]):
            if not isinstance(a, dict):
                raise ValueError(f"arms[{i}]: must be an object with name, version or algorithm, share")
            extra = set(a) - {"name", "version", "algorithm", "share", "shadow"}
            if extra:
                raise ValueError(f"arms[{i}].{sorted(extra)[0]}: unknown field "
                                 "(known: name, version, algorithm, share, shadow)")
            for k in ("name", "share"):
                if k not in a:
                    raise ValueError(f"arms[{i}].{k}: required")
            if "version" not in a and "algorithm" not in a:
                raise ValueError(f"arms[{i}].version: required (or an algorithm to train for the arm)")
            arms.append(Arm(a["name"], a.get("version"), a["share"], a.get("shadow", False), a.get("algorithm")))
        started = d.get("started", time.time())
        if isinstance(started, bool) or not isinstance(started, (int, float)):
            raise ValueError(f"started: must be epoch seconds, got {started!r}")
        salt = d.get("salt") or ""
        if not isinstance(salt, str):
            raise ValueError(f"salt: must be a string, got {salt!r}")
        return cls(d["name"], tuple(arms), salt, float(started))


def canary_experiment(version: int, share: float) -> Experiment:
    """The trainer's canary of ``version`` as an experiment: one arm, ``canary``, serving ``share``
    of users, drawn under a salt of its own per version (each candidate is tried on other users)."""
    name = f"canary-v{int(version)}"
    return Experiment(name, (Arm(CANARY_ARM, int(version), float(share)),), salt=name, started=0.0, by_trainer=True)
