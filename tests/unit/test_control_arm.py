"""The control arm: who is in it, what it serves and logs, and the lift measured against it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.logged import CONTROL_VERSION, samples_to_logged
from rl.metrics import lift_over_control
from rl.trainer_loop import TrainerLoop
from serve.ranking import Ranking, in_control
from streamrec.index import ItemIndex
from tests.learning_world import served_samples, trainer_settings, world
from tests.unit.test_trainer_loop import _ListBuffer


def test_lift_is_the_difference_of_ctrs_with_its_interval_and_p_value():
    r = lift_over_control(1000, 300, 400, 80)
    se = math.sqrt(0.3 * 0.7 / 1000 + 0.2 * 0.8 / 400)
    assert r["policy"] == {"impressions": 1000, "ctr": 0.3} and r["control"] == {"impressions": 400, "ctr": 0.2}
    assert r["lift"] == pytest.approx(0.1) and r["low"] == pytest.approx(0.1 - 1.96 * se)
    assert r["high"] == pytest.approx(0.1 + 1.96 * se) and r["significant"]
    assert r["p_value"] == pytest.approx(math.erfc(0.1 / se / math.sqrt(2)))
    same = lift_over_control(100, 20, 100, 20)
    assert same["lift"] == 0 and same["p_value"] == pytest.approx(1.0) and not same["significant"]
    waiting = lift_over_control(50, 10, 0, 0)
    assert waiting["lift"] is None and waiting["control"]["ctr"] is None and not waiting["significant"]


@pytest.mark.parametrize("args, message", [((10, 11, 5, 1), r"policy: clicked must be in \[0, impressions\], got 11 of 10"),
                                           ((10, 1, 5, -1), r"control: clicked must be in \[0, impressions\], got -1 of 5"),
                                           ((-1, 0, 5, 1), "policy: clicked must be in")])
def test_lift_refuses_counts_that_cannot_be(args, message):
    with pytest.raises(ValueError, match=message):
        lift_over_control(*args)


def test_the_control_arm_is_sticky_about_its_share_and_redrawn_by_the_salt():
    users = [f"user{i}" for i in range(20_000)]
    inside = {u for u in users if in_control(u, 0.05, "s1")}
    assert 0.045 < len(inside) / len(users) < 0.055
    assert inside == {u for u in users if in_control(u, 0.05, "s1")}  # the same users every time
    assert inside <= {u for u in users if in_control(u, 0.10, "s1")}  # a larger share keeps them
    other = {u for u in users if in_control(u, 0.05, "s2")}
    assert len(inside & other) < 0.2 * len(inside)  # another salt, another group
    assert not any(in_control(u, 0.0, "s1") for u in users[:1000])


def test_control_slates_are_uniform_logged_as_control_and_measured_against_the_policy(tmp_path):
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    loop = TrainerLoop(trainer_settings(tmp_path, algorithm="popularity", min_samples=100), ids, vecs, buffer, store)
    loop.publish_initial()
    ranking = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    rng = np.random.default_rng(0)
    r = ranking.rank(user_vecs[0], None, {}, 3, rng, control=True)
    assert r.version == 1 and r.features.arm == "control" and r.features.algorithm == "random"
    assert np.allclose(r.propensities, [1 / 20, 1 / 19, 1 / 18])
    assert ranking.rank(user_vecs[0], None, {}, 3, rng).features.arm == "policy"

    samples = served_samples(ranking, sim, user_vecs, 300, rng)
    control = served_samples(_Control(ranking), sim, user_vecs, 100, rng, 300)
    logged = samples_to_logged(samples + control, loop.featurizer, loop.spec, 0.1)
    assert (logged.versions[300:] == CONTROL_VERSION).all() and (logged.versions[:300] == 1).all()
    buffer.items = samples + control
    loop.round()
    arms = loop.stats["arms"]
    assert arms["policy"]["impressions"] == 300 and arms["control"]["impressions"] == 100
    assert arms["lift"] == pytest.approx(logged.ctr[:300].mean() - logged.ctr[300:].mean())
    by_arm = arms["by_arm"]
    assert by_arm["policy"]["ctr"] == pytest.approx(logged.ctr[:300].mean())
    assert by_arm["policy"]["ild"] == pytest.approx(logged.ild[:300].mean())
    assert by_arm["control"]["lift"] is None and by_arm["policy"]["lift"]["lift"] == pytest.approx(arms["lift"])
    shown = {r for o, s in zip(logged.observations[300:], logged.slates[300:]) for r in o.rows[s]}
    assert by_arm["control"]["coverage"] == pytest.approx(len(shown) / len(ids))
    point = loop.timeline[-1]  # the dashboard's point of this round
    assert point["serving_version"] == loop.serving_version and point["lift"] == arms["lift"]
    assert point["arms"]["control"]["impressions"] == 100 and point["gate"]["candidate"] is not None


class _Control:
    """A Ranking whose every request is in the control arm."""

    def __init__(self, ranking):
        self.ranking = ranking

    def rank(self, *args, **kw):
        return self.ranking.rank(*args, **kw, control=True)
