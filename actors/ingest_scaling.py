"""The ingest group's size follows its consumer lag.

:class:`LagPolicy` is the decision, pure: grow at once to ``ceil(lag / scale_up_lag)`` actors
(between the least and the most allowed, never past the partition count: an actor beyond that
would own no partition); shrink by one actor each time the lag stayed below ``scale_down_lag``
for ``scale_down_after_s``. Growing fast and shrinking slowly keeps a draining backlog from
flapping the group through rebalances.

:class:`LagController` applies it to an :class:`actors.ingest.IngestGroup` from a thread of the
process that owns the group (the stream job, ``streamrec up``), reading the lag the way an
operator would: the group's committed offsets against the topics' end offsets. A rebalance
replays uncommitted records; the trainer's reader drops the samples it already took.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["LagPolicy", "LagController"]

log = logging.getLogger(__name__)


@dataclass
class LagPolicy:
    min_actors: int
    max_actors: int
    scale_up_lag: int
    scale_down_lag: int
    scale_down_after_s: float
    _low_since: float | None = field(default=None, repr=False)

    def __post_init__(self):
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors} and {self.max_actors}")
        if self.scale_up_lag < 1:
            raise ValueError(f"scale_up_lag must be >= 1, got {self.scale_up_lag}")

    def decide(self, actors: int, lag: int, now: float) -> int:
        """How many actors the group should have, given how many it has and its lag now."""
        want = min(self.max_actors, max(self.min_actors, math.ceil(lag / self.scale_up_lag)))
        if want > actors:
            self._low_since = None
            return want
        if lag >= self.scale_down_lag or actors <= self.min_actors:
            self._low_since = None
            return min(actors, self.max_actors)
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since < self.scale_down_after_s:
            return actors
        self._low_since = now  # the next step down waits as long again
        return actors - 1


class LagController:
    """Every ``interval_s``: read the lag, ask the policy, scale the group; ``history`` records each change."""

    def __init__(self, group, policy: LagPolicy, read_lag: Callable[[], int], interval_s: float = 5.0):
        self.group, self.policy, self.read_lag, self.interval_s = group, policy, read_lag, interval_s
        self.history: list[dict] = []
        self.last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-lag-controller", daemon=True)

    @classmethod
    def for_group(cls, group, bootstrap: str, kafka_settings, ingest_settings) -> "LagController":
        """The controller ``ingest.max_parallelism`` asks for, capped at the partition count."""
        from streamrec.eventbus import group_lag

        i, k = ingest_settings, kafka_settings
        topics = [k.topics.impressions, k.topics.feedback]
        policy = LagPolicy(min_actors=i.parallelism, max_actors=min(i.max_parallelism, k.partitions),
                           scale_up_lag=i.scale_up_lag, scale_down_lag=i.scale_down_lag,
                           scale_down_after_s=i.scale_down_after_s)
        return cls(group, policy, lambda: sum(group_lag(bootstrap, i.group_id, topics, k.security).values()),
                   i.scale_interval_s)

    def start(self) -> "LagController":
        self._thread.start()
        return self

    def step(self, now: float | None = None) -> dict:
        """One reading and, when the policy says so, one scaling; what happened."""
        now = time.monotonic() if now is None else now
        lag = self.read_lag()
        have = len(self.group.actors)
        want = self.policy.decide(have, lag, now)
        out = {"t": time.time(), "lag": lag, "actors": have, "target": want}
        if want != have:
            self.history.append(out)
            log.info("ingest: lag %d, %d -> %d actors", lag, have, want)
            self.group.scale(want)
        self.last = out
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # a broker hiccup: try again next interval
                log.warning("ingest lag controller: %s: %s", type(e).__name__, e)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
