"""The lag controller's decision (pure) and its loop over a group in memory."""

from __future__ import annotations

import pytest

from actors.ingest_scaling import LagController, LagPolicy


def policy(**kw) -> LagPolicy:
    return LagPolicy(**{"min_actors": 1, "max_actors": 3, "scale_up_lag": 1_000, "scale_down_lag": 100,
                        "scale_down_after_s": 10.0, **kw})


@pytest.mark.parametrize("actors, lag, want", [
    (1, 0, 1), (1, 999, 1), (1, 1_000, 1), (1, 1_001, 2), (1, 2_500, 3), (1, 10**9, 3),  # capped at max
    (2, 1_500, 2), (3, 2_500, 3),  # enough actors already: no change
    (3, 500, 3),  # above scale_down_lag: no shrinking
])
def test_grow_at_once_to_lag_over_scale_up_lag(actors, lag, want):
    assert policy().decide(actors, lag, now=0.0) == want


def test_shrink_one_actor_per_quiet_period_never_below_the_least():
    p = policy()
    assert p.decide(3, 50, now=0.0) == 3  # quiet since 0
    assert p.decide(3, 50, now=9.9) == 3
    assert p.decide(3, 50, now=10.0) == 2  # quiet for 10 s: one fewer
    assert p.decide(2, 50, now=15.0) == 2  # the next step waits as long again
    assert p.decide(2, 50, now=20.0) == 1
    assert p.decide(1, 0, now=100.0) == 1  # min_actors


def test_a_burst_of_lag_restarts_the_quiet_period():
    p = policy()
    p.decide(3, 50, now=0.0)
    assert p.decide(3, 500, now=8.0) == 3  # not quiet: the period starts over
    assert p.decide(3, 50, now=9.0) == 3
    assert p.decide(3, 50, now=18.0) == 3
    assert p.decide(3, 50, now=19.0) == 2


@pytest.mark.parametrize("kw, message", [
    ({"min_actors": 0}, "need 1 <= min_actors <= max_actors, got 0 and 3"),
    ({"min_actors": 4}, "need 1 <= min_actors <= max_actors, got 4 and 3"),
    ({"scale_up_lag": 0}, "scale_up_lag must be >= 1, got 0"),
])
def test_bad_bounds_are_refused_naming_them(kw, message):
    with pytest.raises(ValueError, match=message):
        policy(**kw)


class _Group:
    def __init__(self, n: int):
        self.actors = [object()] * n
        self.calls: list[int] = []

    def scale(self, n: int) -> int:
        self.calls.append(n)
        self.actors = [object()] * n
        return n


def test_the_controller_scales_the_group_and_records_each_change():
    lags = iter([5_000, 2_000, 50, 50, 50])
    group = _Group(1)
    c = LagController(group, policy(scale_down_after_s=1.0), lambda: next(lags))
    steps = [c.step(now=t) for t in (0.0, 1.0, 2.0, 2.5, 3.0)]
    assert [s["target"] for s in steps] == [3, 3, 3, 3, 2]
    assert group.calls == [3, 2]
    assert [(h["lag"], h["actors"], h["target"]) for h in c.history] == [(5_000, 1, 3), (50, 3, 2)]
