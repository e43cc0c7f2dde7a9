"""Operator experiments: the definition's checks, sticky assignment, the store's record, and what
replicas serve and log for each arm (a served arm, a shadow arm, an algorithm arm the trainer
trains), measured per arm by the trainer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.experiment import Experiment
from rl.logged import samples_to_logged
from rl.manifest import serving_key
from rl.policies import make_policy
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
    ({"name": "x", "arms": [{"name": "b", "algorithm": "ppo", "share": 0.1}]},
     r"arms\[0\].algorithm: must be one of linucb, .* got 'ppo' \(a second RLlib learner"),
    ({"name": "x", "arms": [{"name": "b", "algorithm": "xgboost", "share": 0.1}]}, r"arms\[0\].algorithm: must be one of"),
    ({"name": "x", "arms": [{"name": "b", "version": None, "share": 0.1}]}, r"arms\[0\]: needs a version .* or an algorithm"),
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


def test_an_algorithm_arm_advances_only_through_the_store_with_its_own_lineage(tmp_path):
    ids, vecs, user_vecs, sim = world()
    store = PolicyDirectory(tmp_path / "store", keep=1)
    loop = TrainerLoop(trainer_settings(tmp_path, algorithm="popularity", min_samples=100), ids, vecs, _ListBuffer(), store)
    loop.publish_initial()
    blob, manifest = loop._manifest(loop.policy, None, "x")  # popularity weights
    with pytest.raises(ValueError, match="no experiment is running"):
        store.advance_arm("ucb", blob, manifest)
    with pytest.raises(ValueError, match=r"arms\[0\].version: an algorithm arm starts without one"):
        store.start_experiment({"name": "e", "arms": [{"name": "ucb", "algorithm": "linucb", "version": 1, "share": 0.2}]})
    store.start_experiment({"name": "e", "arms": [{"name": "ucb", "algorithm": "linucb", "share": 0.2}, ARM]},
                           operator="alice")
    assert store.experiment()["arms"][0] == {"name": "ucb", "version": None, "share": 0.2, "shadow": False,
                                             "algorithm": "linucb"}
    with pytest.raises(ValueError, match="experiment 'e' has no arm 'nope'"):
        store.advance_arm("nope", blob, manifest)
    with pytest.raises(ValueError, match="arm 'b' serves stored version 1: only an algorithm arm advances"):
        store.advance_arm("b", blob, manifest)
    with pytest.raises(ValueError, match="arm 'ucb' trains linucb; these weights are popularity"):
        store.advance_arm("ucb", blob, manifest)
    linucb = dataclasses.replace(loop.spec, algorithm="linucb")
    blob, manifest = loop._manifest(make_policy(linucb), None, "arm")
    key = serving_key(store.serving())
    first = store.advance_arm("ucb", blob, manifest)
    second = store.advance_arm("ucb", blob, manifest)
    assert (first["stage"], first["parent"], second["parent"]) == ("arm", None, first["version"])
    assert store.latest()["version"] == 1  # never live
    assert store.experiment()["arms"][0]["version"] == second["version"]
    assert serving_key(store.serving()) != key  # replicas' long polls wake
    assert second["version"] in store.versions() and first["version"] not in store.versions()  # superseded: removed
    with pytest.raises(ValueError, match="never served"):
        store.rollback(to=second["version"])
    assert [h["action"] for h in store.history()][-2:] == ["arm_version", "arm_version"]


def test_the_trainer_trains_an_algorithm_arm_beside_the_live_lineage_and_replicas_serve_its_versions(tmp_path):
    ids, vecs, user_vecs, sim = world()
    store = PolicyDirectory(tmp_path / "store", 10)
    buffer = _ListBuffer()
    loop = TrainerLoop(trainer_settings(tmp_path, algorithm="popularity", min_samples=100, publish_every_s=0),
                       ids, vecs, buffer, store)
    loop.publish_initial()
    store.start_experiment({"name": "e", "arms": [{"name": "ucb", "algorithm": "linucb", "share": 0.4}]})
    follower = PolicyFollower(store, ids, vecs)
    assert follower.poll() and follower.experiment.policies == {}  # no version yet: its users see the live one
    cur = follower.current
    ranking = Ranking(cur.featurizer, ItemIndex.build(ids, vecs), cur.policy, cur.version, 20)
    ranking.swap(cur.featurizer, cur.policy, cur.version, experiment=follower.experiment)
    rng = np.random.default_rng(0)
    before = served_samples(ranking, sim, user_vecs, 300, rng)
    assert {s.features["arm"] for s in before} == {"policy"}
    buffer.items = before
    loop.round()
    live = loop.serving_version
    arm = store.experiment()["arms"][0]
    stored, _ = store.get(arm["version"])
    assert stored["spec"]["algorithm"] == "linucb" and stored["stage"] == "arm"
    assert loop.stats["algorithm_arms"]["ucb"] == {"algorithm": "linucb", "version": arm["version"], "samples": 300}
    assert store.latest()["version"] == live  # the live lineage went on by its own gate
    assert follower.poll() and follower.experiment.policies["ucb"][1] == arm["version"]
    cur = follower.current
    ranking.swap(cur.featurizer, cur.policy, cur.version, experiment=follower.experiment)
    after = served_samples(ranking, sim, user_vecs, 300, rng, t0=300)
    assigned = Experiment.from_dict(store.experiment())
    for s in after:
        in_arm = assigned.arm_of(s.user_id) is not None
        assert (s.features["arm"], s.policy_version, s.features["algorithm"]) == (
            ("ucb", arm["version"], "linucb") if in_arm else ("policy", cur.version, "popularity"))
    buffer.items = after
    loop.round()  # publish_every_s 0: the arm's next version, its parent the one before
    moved = store.experiment()["arms"][0]["version"]
    assert moved > arm["version"] and store.manifest(moved)["parent"] == arm["version"]
    assert loop.stats["algorithm_arms"]["ucb"]["samples"] == 600
    assert follower.poll() and follower.experiment.policies["ucb"][1] == moved
    store.stop_experiment()
    buffer.items = served_samples(ranking, sim, user_vecs, 200, rng, t0=600)
    loop.round()
    assert "algorithm_arms" not in loop.stats  # its arms went with it


@pytest.mark.parametrize("spec, shadow, arm", [
    ("b=12:0.1", False, {"name": "b", "version": 12, "share": 0.1, "shadow": False}),
    ("ucb=linucb:0.2", False, {"name": "ucb", "algorithm": "linucb", "share": 0.2, "shadow": False}),
    ("s=13:0.05", True, {"name": "s", "version": 13, "share": 0.05, "shadow": True}),
])
def test_the_cli_reads_an_arm_as_a_stored_version_or_an_algorithm(spec, shadow, arm):
    from cluster.cli import parse_arm

    assert parse_arm(spec, shadow) == arm
    assert Experiment.from_dict({"name": "e", "arms": [parse_arm(spec, shadow)]}).arms[0].name == arm["name"]


@pytest.mark.parametrize("spec, message", [
    ("b12:0.1", "write an arm as NAME=VERSION:SHARE or NAME=ALGORITHM:SHARE"),
    ("b=12", "write an arm as NAME=VERSION:SHARE or NAME=ALGORITHM:SHARE"),
    ("b=:0.1", "write an arm as NAME=VERSION:SHARE or NAME=ALGORITHM:SHARE"),
    ("b=12:lots", "SHARE must be a number"),
])
def test_the_cli_names_what_is_wrong_with_an_arm(spec, message):
    from cluster.cli import parse_arm

    with pytest.raises(ValueError, match=message):
        parse_arm(spec, False)
