"""Operator experiments: the definition's checks, sticky assignment, the store's record, and what
replicas serve and log for each arm (a served arm, a shadow arm), measured per arm by the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.experiment import Experiment
from rl.logged import samples_to_logged
from rl.trainer_loop import TrainerLoop
from serve.follower import PolicyFollower
from serve.ranking import Ranking
from streamrec.index import ItemIndex
from tests.learning_world import served_samples, trainer_settings, world
from tests.unit.test_trainer_loop import _ListBuffer

ARM = {"name": "b", "version": 1, "share": 0.3}


@pytest.mark.parametrize("definition, message", [
    ({"arms": [ARM]}, "name: required"),
    ({"name": "x"}, "arms: required"),
    ({"name": "x y", "arms": [ARM]}, "name: 'x y' must be 1-64 letters"),
    ({"name": "x", "arms": []}, "arms: an experiment needs at least one arm"),
    ({"name": "x", "arms": [ARM], "color": 1}, "color: unknown field"),
    ({"name": "x", "arms": [{**ARM, "weight": 1}]}, r"arms\[0\].weight: unknown field"),
    ({"name": "x", "arms": [{"name": "b", "share": 0.1}]}, r"arms\[0\].version: required"),
    ({"name": "x", "arms": [{**ARM, "name": "control"}]}, r"arms\[0\].name: 'control' is reserved"),
    ({"name": "x", "arms": [{**ARM, "name": "policy"}]}, r"arms\[0\].name: 'policy' is reserved"),
    ({"name": "x", "arms": [ARM, ARM]}, r"arms\[1\].name: 'b' names two arms"),
    ({"name": "x", "arms": [{**ARM, "version": 0}]}, r"arms\[0\].version: must be a stored policy version"),
    ({"name": "x", "arms": [{**ARM, "version": True}]}, r"arms\[0\].version: must be a stored policy version"),
    ({"name": "x", "arms": [{**ARM, "share": 1.0}]}, r"arms\[0\].share: must be in \(0, 1\), got 1.0"),
    ({"name": "x", "arms": [{**ARM, "share": "0.2"}]}, r"arms\[0\].share: must be in \(0, 1\)"),
    ({"name": "x", "arms": [{**ARM, "shadow": "yes"}]}, r"arms\[0\].shadow: must be true or false"),
    ({"name": "x", "arms": [ARM, {**ARM, "name": "c", "share": 0.7}]}, "arms: shares add up to 1"),
    ({"name": "x", "arms": [ARM], "started": "now"}, "started: must be epoch seconds"),
    ([ARM], "an experiment is an object with name and arms, got list"),
])
def test_bad_definitions_are_refused_naming_the_field(definition, message):
    with pytest.raises(ValueError, match=message):
        Experiment.from_dict(definition)


def test_assignment_is_sticky_in_consecutive_share_ranges_and_drawn_per_experiment():
    exp = Experiment.from_dict({"name": "e1", "arms": [{"name": "b", "version": 2, "share": 0.2},
                                                       {"name": "s", "version": 3, "share": 0.1, "shadow": True}]})
    users = [f"user{i}" for i in range(20_000)]
    arms = [exp.arm_of(u) for u in users]
    assert arms == [exp.arm_of(u) for u in users]  # sticky
    share = {n: sum(a is not None and a.name == n for a in arms) / len(users) for n in ("b", "s")}
    assert 0.19 < share["b"] < 0.21 and 0.09 < share["s"] < 0.11
    assert exp.salt == "e1" and Experiment.from_dict(exp.to_dict()) == exp  # the stored form round-trips
    other = Experiment.from_dict({"name": "e2", "arms": [{"name": "b", "version": 2, "share": 0.2}]})
    in_b = {u for u, a in zip(users, arms) if a is not None and a.name == "b"}
    again = {u for u in users if other.arm_of(u) is not None}
    assert len(in_b & again) < 0.3 * len(in_b)  # another experiment, another group


def test_the_store_checks_arm_versions_keeps_them_and_records_start_and_stop(tmp_path):
    ids, vecs, user_vecs, sim = world()
    store = PolicyDirectory(tmp_path / "store", keep=1)
    loop = TrainerLoop(trainer_settings(tmp_path, algorithm="popularity", min_samples=100), ids, vecs, _ListBuffer(), store)
    loop.publish_initial()
    with pytest.raises(ValueError, match=r"arms\[0\].version: policy version 7 is not in the store"):
        store.start_experiment({"name": "e", "arms": [{**ARM, "version": 7}]})
    stored = store.start_experiment({"name": "e", "arms": [ARM]}, operator="alice")
    assert store.serving()["experiment"] == stored and stored["salt"] == "e"
    with pytest.raises(ValueError, match="experiment 'e' is running: stop it first"):
        store.start_experiment({"name": "f", "arms": [ARM]})
    m, blob = store.get(1)
    store.publish(blob, {k: v for k, v in m.items() if k not in ("version", "parent", "created", "stage")})
    assert 1 in store.versions()  # kept (keep=1) while the experiment serves it
    assert store.stop_experiment("done", operator="bob")["name"] == "e"
    assert store.experiment() is None and store.versions() == [2]
    with pytest.raises(ValueError, match="no experiment is running"):
        store.stop_experiment()
    record = [(h["action"], h["reason"]) for h in store.history()]
    assert ("experiment_start", "e by alice: b=v1 30%") in record and ("experiment_stop", "e by bob: done") in record


def test_replicas_serve_a_served_arm_its_version_log_a_shadow_arms_slate_and_the_trainer_measures_each(tmp_path):
    ids, vecs, user_vecs, sim = world()
    store = PolicyDirectory(tmp_path / "store", 10)
    buffer = _ListBuffer()
    loop = TrainerLoop(trainer_settings(tmp_path, algorithm="popularity", min_samples=100), ids, vecs, buffer, store)
    loop.publish_initial()
    m, blob = store.get(1)
    store.publish(blob, {k: v for k, v in m.items() if k not in ("version", "parent", "created", "stage")})  # v2 live
    exp = {"name": "e", "arms": [{"name": "old", "version": 1, "share": 0.3},
                                 {"name": "shadow-old", "version": 1, "share": 0.3, "shadow": True}]}
    store.start_experiment(exp)
    follower = PolicyFollower(store, ids, vecs)
    assert follower.poll() and follower.version == 2 and sorted(follower.experiment.policies) == ["old", "shadow-old"]
    cur = follower.current
    ranking = Ranking(cur.featurizer, ItemIndex.build(ids, vecs), cur.policy, cur.version, 20)
    ranking.swap(cur.featurizer, cur.policy, cur.version, experiment=follower.experiment)
    rng = np.random.default_rng(0)
    samples = served_samples(ranking, sim, user_vecs, 600, rng)
    assigned = Experiment.from_dict(store.experiment())
    for s in samples:
        arm = assigned.arm_of(s.user_id)
        f = s.features
        if arm is not None and not arm.shadow:
            assert s.policy_version == 1 and f["arm"] == "old" and "shadow" not in f
        else:
            assert s.policy_version == 2 and f["arm"] == "policy"
            if arm is not None:  # shadow: shown the live slate; the shadow version's own one logged beside it
                assert f["shadow"]["arm"] == "shadow-old" and f["shadow"]["version"] == 1
                assert len(f["shadow"]["items"]) == 3 and all(0 < p <= 1 for p in f["shadow"]["propensities"])
            else:
                assert "shadow" not in f
    logged = samples_to_logged(samples, loop.featurizer, loop.spec, 0.1)
    buffer.items = samples
    loop.round()
    arms = loop.stats["arms"]
    served_old = logged.arms == "old"
    assert arms["by_arm"]["old"]["impressions"] == served_old.sum() > 100
    assert arms["by_arm"]["old"]["ctr"] == pytest.approx(logged.ctr[served_old].mean())
    assert arms["policy"]["impressions"] == (logged.arms == "policy").sum()
    assert arms["shadow"]["shadow-old"]["slates"] == sum(s.features.get("shadow") is not None for s in samples) > 100
    shadow = arms["shadow"]["shadow-old"]
    assert 0 <= shadow["overlap"] <= 1 and shadow["version"] == 1
    shown_with_shadow = np.asarray([s.features.get("shadow") is not None for s in samples])
    assert shadow["served_ctr"] == pytest.approx(logged.ctr[shown_with_shadow].mean())
    est = shadow["estimate"]  # version 1 valued off-policy on the slates its users were shown
    assert est["estimator"] in ("snips", "dr", "cascade-dr") and 0 <= est["ctr_low"] <= est["ctr"] <= est["ctr_high"] <= 1

    store.stop_experiment()
    assert follower.poll() and follower.experiment is None
