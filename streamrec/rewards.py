"""What each kind of feedback is worth to the learner: the one place a feedback type becomes a reward.

    table = RewardTable.from_settings(settings.rewards)
    table.reward("dislike", 1.0)      # -1.0: a dislike is never a click, whatever its value
    table.reward("dwell", 45.0)       # 0.9: seconds times dwell_per_s, capped at dwell_cap

Only ``dwell`` reads the event's ``value`` (seconds); every other type is worth its own weight.
CTR counts click-like positives only: an impression "got a click" when some position's reward is
above zero (:func:`is_positive`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RewardTable", "is_positive"]


@dataclass(frozen=True)
class RewardTable:
    click: float = 1.0
    purchase: float = 3.0
    like: float = 1.5
    dislike: float = -1.0
    skip: float = -0.1
    dwell_per_s: float = 0.02
    dwell_cap: float = 1.0

    def __post_init__(self):
        # on the ingest hot path: one dict lookup for every type but dwell
        fixed = {t: float(getattr(self, t)) for t in ("click", "purchase", "like", "dislike", "skip")}
        object.__setattr__(self, "_fixed", fixed)

    @classmethod
    def from_settings(cls, s) -> "RewardTable":
        return cls(**{f: getattr(s, f) for f in cls.__dataclass_fields__})

    def reward(self, feedback_type: str, value: float = 1.0) -> float:
        """The reward of one feedback event (ValueError for a type the event schema does not have)."""
        fixed = self._fixed.get(feedback_type)
        if fixed is not None:
            return fixed
        if feedback_type == "dwell":  # decode checked the value is finite; a negative time is no time
            return min(max(float(value), 0.0) * self.dwell_per_s, self.dwell_cap)
        raise ValueError(f"unknown feedback type {feedback_type!r}")


def is_positive(reward: float) -> bool:
    """A click-like positive: what CTR counts."""
    return reward > 0
