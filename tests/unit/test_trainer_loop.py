"""The learning loop as plain code: rounds, the publish cadence, the first version, canaries, restarts.

:class:`rl.trainer_loop.TrainerLoop` over a list of samples and a :class:`actors.policy_store.PolicyDirectory`
(no Ray); slates come from the serving code (:class:`serve.ranking.Ranking`) and a simulated population.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.gate import evaluate
from rl.logged import samples_to_logged
from rl.policies import policy_from_state
from rl.trainer_loop import CHECKPOINT, LineageError, TrainerLoop
from rl.experiment import Experiment, canary_experiment
from rl.slate import mixture_position_probs
from serve.follower import PolicyFollower, ServedExperiment
from serve.ranking import Ranking
from streamrec.events import TrainingSample
from streamrec.index import ItemIndex
from tests.learning_world import served_samples, trainer_settings, world


class _ListBuffer:
    """The samples log's calls the trainer makes, over a list (TrainerLoop takes plain objects);
    the position is how many were taken."""

    def __init__(self):
        self.items: list = []
        self.taken = 0

    def take(self, n: int, min_n: int = 1) -> list:
        if len(self.items) < min_n:
            return []
        out, self.items = self.items[:n], self.items[n:]
        self.taken += len(out)
        return out

    def position(self) -> dict:
        return {"0": self.taken}

    def seek(self, position, written_at=None) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_publish_every_s_defers_passing_candidates_and_keeps_training(tmp_path):
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm="linucb", publish_every_s=3600.0, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    assert loop.publish_initial()["version"] == 1
    core = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(3):
        buffer.items = served_samples(core, sim, user_vecs, 300, rng)
        outs.append(loop.round())
    assert outs[0]["ok"] and outs[0]["version"] == 2  # the first trained version goes out at once
    assert [o["deferred"] for o in outs[1:]] == [True, True]  # later passes wait for publish_every_s
    assert all("publish_every_s" in o["why"] for o in outs[1:])
    assert store.latest()["version"] == 2 and loop.serving_version == 2
    assert loop.stats["deferred"] == 2 and loop.stats["rejected"] == 0 and loop.stats["samples"] == 900
    assert not np.array_equal(loop.policy.state()["b"], loop.serving.state()["b"])  # training went on
    # DR's click model grew on every round's training samples only (holdout_fraction 0.2 of 300 held out)
    assert loop.click_model.n == sum(o["train"] for o in outs) == 3 * 240


def test_a_bandits_first_version_explores_uniformly_and_a_restart_keeps_its_lineage(tmp_path):
    """Before any data a bandit's scores tie; version 1 serves uniform random slates with exact
    propensities instead, so the gate's estimators have support for the first trained candidate.
    A trainer restarted before that candidate keeps version 1's projection and trains its own
    algorithm from scratch."""
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    first = loop.publish_initial()
    assert first["algorithm"] == "random" and first["spec"]["algorithm"] == "random" and first["version"] == 1
    assert loop.serving.algorithm == "random" and loop.policy.algorithm == "linucb"
    core = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    samples = served_samples(core, sim, user_vecs, 50, np.random.default_rng(0))
    k = s.policy.slate_size
    assert all(x.propensities == pytest.approx(1.0 / (20 - np.arange(k))) for x in samples)

    again = TrainerLoop(s, ids, vecs, buffer, store)  # a restart before any trained version
    assert again.publish_initial() is None and again.serving_version == 1
    assert np.array_equal(again.featurizer.projection, loop.featurizer.projection)
    assert again.serving.algorithm == "random" and again.policy.algorithm == "linucb"
    buffer.items = served_samples(core, sim, user_vecs, 300, np.random.default_rng(1))
    out = again.round()
    assert out["ok"] and out["version"] == 2 and store.latest()["algorithm"] == "linucb"
    # 60 held-out random slates over 20 candidates: ~3 start like the candidate's, an ESS below
    # min_ess, so DR keeps whole-slate weights (cascade DR needs more top-position evidence)
    assert out["ope"]["estimator"] == "dr" and out["ope"]["ess"] < s.trainer.min_ess
    assert out["current_ope"]["estimator"] == "snips"  # the random version on its own logs


class _SeekingBuffer(_ListBuffer):
    """Remembers where the trainer told it to start."""

    def __init__(self, items):
        super().__init__()
        self.items, self.all, self.sought = list(items), list(items), "never"

    def seek(self, position, written_at=None) -> None:
        self.sought = position
        if position is not None:
            self.taken = int(position["0"])
            self.items = self.all[self.taken:]


def test_a_restarted_trainer_resumes_its_checkpoint_weights_position_and_counts(tmp_path):
    """Each round checkpoints the policy being trained with the log position after its samples; a
    trainer started again continues from there (not from the last published version), so each
    sample is consumed once. A checkpoint that fails its checks is refused."""
    from rl.weights import pack

    ids, vecs, user_vecs, sim = world()
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=100, max_batch=300)
    store = PolicyDirectory(tmp_path / "store", 10)
    probe = TrainerLoop(s, ids, vecs, _ListBuffer(), store)
    probe.publish_initial()
    core = Ranking(probe.featurizer, ItemIndex.build(ids, vecs), probe.serving, 1, 20)
    log = served_samples(core, sim, user_vecs, 900, np.random.default_rng(0))
    buffer = _SeekingBuffer(log)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    assert buffer.sought is None  # nothing checkpointed yet: the log's committed position
    loop.round(), loop.round()  # each publishes, then learns from its holdout too
    assert store.latest()["version"] >= 2 and loop.stats["consumed"] == 600
    again = TrainerLoop(s, ids, vecs, _SeekingBuffer(log), store)
    assert again.source.sought == {"0": 600}
    assert again.stats["consumed"] == 600 and again.stats["digest"] == loop.stats["digest"]
    assert np.allclose(again.policy.state()["b"], loop.policy.state()["b"], rtol=1e-6)  # (stored as float32)
    assert not np.allclose(again.policy.state()["b"], again.serving.state()["b"], rtol=1e-6)  # not the published weights
    again.round()
    assert again.stats["consumed"] == 900 and [x.event_id for x in again.source.all[600:]] == [
        x.event_id for x in log[600:]]
    record = again.checkpoint.read_json(CHECKPOINT)
    assert record["position"] == {"0": 900} and record["consumed"] == 900
    # a tampered state file: refused, the trainer resumes from the published version at the committed position
    blob, _ = pack({"b": np.zeros(3, np.float32)})
    again.checkpoint.write_bytes(f"{record['state']}/policy.safetensors", blob)
    third = TrainerLoop(s, ids, vecs, _SeekingBuffer(log), store)
    assert third.source.sought is None and "sha256" in third.stats["checkpoint_refused"]
    assert np.allclose(third.policy.state()["b"], third.serving.state()["b"])


def test_a_checkpoint_of_another_brokers_log_keeps_its_weights_and_reads_the_new_log_from_its_start(tmp_path):
    """The embedded broker's topics are new on every `streamrec up` (kafka.log_id): offsets the
    checkpoint names belong to a log that is gone, and reading from them would skip the new one."""
    ids, vecs, user_vecs, sim = world()
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=100, max_batch=300)
    first_run = s.model_copy(update={"kafka": s.kafka.model_copy(update={"log_id": "embedded:a"})})
    store = PolicyDirectory(tmp_path / "store", 10)
    probe = TrainerLoop(first_run, ids, vecs, _ListBuffer(), store)
    probe.publish_initial()
    core = Ranking(probe.featurizer, ItemIndex.build(ids, vecs), probe.serving, 1, 20)
    log = served_samples(core, sim, user_vecs, 600, np.random.default_rng(0))
    loop = TrainerLoop(first_run, ids, vecs, _SeekingBuffer(log), store)
    loop.round(), loop.round()
    same = TrainerLoop(first_run, ids, vecs, _SeekingBuffer(log), store)
    assert same.source.sought == {"0": 600} and "log_changed" not in same.stats
    second_run = s.model_copy(update={"kafka": s.kafka.model_copy(update={"log_id": "embedded:b"})})
    fresh = TrainerLoop(second_run, ids, vecs, _SeekingBuffer(log), store)
    assert fresh.source.sought is None and "'embedded:a'" in fresh.stats["log_changed"]
    assert np.allclose(fresh.policy.state()["b"], loop.policy.state()["b"], rtol=1e-6)  # the weights carry on


def test_a_canary_serves_a_sticky_share_of_users_with_its_own_exact_propensities(tmp_path):
    """Live version: LinUCB before any data (one deterministic slate); canary: uniform random for 30%
    of users, an experiment of one arm under a salt of its own. A user's requests all go to one
    version, and a canary user's impressions log the candidate's own probabilities and its arm."""
    ids, vecs, _, _ = world()
    s = trainer_settings(tmp_path, algorithm="linucb")
    loop = TrainerLoop(s, ids, vecs, _ListBuffer(), PolicyDirectory(tmp_path / "store", 10))
    live = loop.policy
    uniform = policy_from_state(dataclasses.replace(loop.spec, algorithm="random"), live.state())
    core = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), live, 1, 20)
    core.swap(loop.featurizer, live, 1, ServedExperiment(canary_experiment(2, 0.3), {"canary": (uniform, 2)}))
    rng = np.random.default_rng(0)
    cands, profile = ids[:20], vecs[0]

    def rank(user):
        return core.rank(profile, None, {"hour": 9}, 3, rng, ts=0.0, candidates=cands, user_id=user)

    users = [f"user{i}" for i in range(3000)]
    first = {u: rank(u) for u in users}
    on_canary = {u for u, r in first.items() if r.version == 2}
    assert abs(len(on_canary) / len(users) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(users))
    assert all((rank(u).version == 2) == (u in on_canary) for u in users[:300])  # sticky
    greedy = {tuple(r.items) for u, r in first.items() if u not in on_canary}
    assert len(greedy) == 1  # the live version: deterministic given its state
    for u, r in first.items():
        if u in on_canary:  # the candidate's own probabilities, not a mixture's
            assert r.features.arm == "canary" and np.allclose(r.propensities, 1.0 / (20 - np.arange(3)))
        else:
            assert r.features.arm == "policy" and np.allclose(r.propensities, 1.0)
    assert core.rank(profile, None, {}, 3, rng, candidates=cands).version == 1  # no user: nobody to keep sticky
    operator = ServedExperiment(Experiment.from_dict({"name": "e", "arms": [{"name": "b", "version": 7, "share": 0.5}]}),
                                {"b": (live, 7)})
    core.swap(loop.featurizer, live, 1, core.canary, experiment=operator)  # side by side: the canary's users first
    for u in users[:600]:
        want = 2 if u in on_canary else 7 if operator.experiment.arm_of(u) is not None else 1
        assert rank(u).version == want
    next_canary = {u for u in users if canary_experiment(3, 0.3).arm_of(u) is not None}
    assert len(next_canary & on_canary) < 0.5 * len(on_canary)  # each candidate is tried on other users
    samples = [TrainingSample(str(i), 0.0, u, tuple(r.items), tuple(r.propensities), r.version, (0.0,) * 3,
                              {}, r.features.to_dict()) for i, (u, r) in enumerate(first.items())]
    logged = samples_to_logged(samples, loop.featurizer, loop.spec, 0.0)
    assert set(logged.arms[logged.versions == 2]) == {"canary"} and set(logged.arms[logged.versions == 1]) == {"policy"}
    # what a version logged is read back as its own probabilities (weights 1 on what it served itself)
    mine = logged.subset(np.flatnonzero(logged.versions == 2))
    args = dict(estimator="snips", rng=np.random.default_rng(0), dr_weights="cascade")
    report = evaluate(uniform, mine, target_probs=mine.propensities, **args)
    assert report.support == pytest.approx(1.0) and report.estimator == "snips"
    with pytest.raises(ValueError, match=r"target_probs must be \(\d+, 3\) like the logged slates"):
        evaluate(uniform, mine, target_probs=mine.propensities[:5], **args)
    # pooled with a second logger (the balance heuristic), the behaviour probabilities change, the samples do not
    pooled = mine.logged_by(mixture_position_probs(mine.propensities, np.full_like(mine.propensities, 1.0), 0.5))
    assert np.allclose(np.exp(pooled.batch.logp), pooled.propensities.prod(1)) and (pooled.slates == mine.slates).all()
    with pytest.raises(ValueError, match=r"propensities must be \(\d+, 3\) like the slates"):
        mine.logged_by(mine.propensities[:, :2])


def test_canary_gathers_evidence_then_is_promoted_or_refused(tmp_path):
    """With trainer.canary_share the trainer publishes a frozen candidate to the store's canary slot;
    the follower serves it to that share of users; once canary_samples samples logged since it went
    live are in, the gate values both versions on them (the two arms' loggers pooled) and the store
    promotes or ends it."""
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm="linucb", canary_share=0.3, canary_samples=400, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    loop.publish_initial()
    follower = PolicyFollower(store, ids, vecs)
    assert follower.poll() and follower.version == 1 and follower.canary is None
    core = Ranking(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy, 1, 20)

    def serve(n, t0):
        if follower.poll():
            core.swap(follower.current.featurizer, follower.current.policy, follower.version, follower.canary)
        buffer.items = served_samples(core, sim, user_vecs, n, rng, t0)
        return loop.round()

    rng = np.random.default_rng(0)
    out = serve(300, 0)
    assert out["canary"] == 2 and not out["ok"] and loop.stats["canaries"] == 1
    assert store.latest()["version"] == 1 and store.canary()["version"] == 2 and store.canary()["share"] == 0.3
    out = serve(300, 300)  # ~300 logged since the canary went live (its first slate): not enough yet
    assert follower.canary_version == 2 and follower.canary.experiment.arms[0].share == 0.3
    assert 280 < out["holdout"] <= 300 and "ope" not in out and store.latest()["version"] == 1
    out = serve(300, 600)
    assert out["ok"] and out["version"] == 2 and out["canary"] == 3  # judged, promoted, the next one out
    live = store.latest()
    assert live["version"] == 2 and live["stage"] == "live" and 580 < live["ope_samples"] <= 600
    assert 0.15 * 600 < live["ope_canary_samples"] < 0.45 * 600
    # both arms' impressions pooled (balance heuristic): the candidate's weights are bounded by 1 /
    # its share, and SNIPS keeps its estimate (no DR fallback)
    assert live["ope"]["estimator"] == "snips" and live["ope"]["support"] > 0.7
    assert loop.serving_version == 2 and loop.click_model.n == 900  # the evidence joins the click model after the judgement
    assert follower.poll() and follower.version == 2 and follower.canary_version == 3

    strict = loop.settings.trainer.model_copy(update={"gate_tolerance": -1.0})  # nothing passes now
    loop.settings = loop.settings.model_copy(update={"trainer": strict})
    core.swap(follower.current.featurizer, follower.current.policy, follower.version, follower.canary)
    serve(300, 900)
    out = serve(300, 1200)
    assert not out["ok"] and out["canary"] == 4 and loop.stats["rejected"] == 1
    assert store.manifest(3)["stage"] == "refused" and "lower bound" in store.manifest(3)["refused_because"]
    assert store.latest()["version"] == 2
    with pytest.raises(ValueError, match="version 3 was never served"):
        store.rollback(3)
    assert follower.poll() and follower.version == 2 and follower.canary_version == 4

    again = TrainerLoop(s, ids, vecs, buffer, store)  # a restart loses the evidence: the canary ends
    assert store.canary() is None and store.manifest(4)["stage"] == "refused" and again.serving_version == 2
    assert follower.poll() and follower.canary is None


def test_a_canary_no_replica_serves_is_ended_counting_only_samples_logged_after_it(tmp_path):
    """A trainer behind the stream first reads samples logged before the canary existed: those do not
    count against it. 3 * canary_samples samples logged after it without one of its slates end it."""
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm="linucb", canary_share=0.3, canary_samples=100, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    loop.publish_initial()
    core = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)  # never takes the canary
    rng = np.random.default_rng(0)
    buffer.items = served_samples(core, sim, user_vecs, 300, rng)
    assert loop.round()["canary"] == 2
    buffer.items = served_samples(core, sim, user_vecs, 400, rng, t0=300)  # logged long before it (ts 300-699)
    assert loop.round()["canary"] == 2 and store.canary()["version"] == 2
    buffer.items = served_samples(core, sim, user_vecs, 300, rng, t0=int(time.time()) + 1)
    out = loop.round()
    assert out["why"] == "no replica served it in 300 samples logged since it was published"
    assert store.manifest(2)["stage"] == "refused" and out["canary"] == 3 and loop.stats["rejected"] == 1


def _version_2_live_after_300_of_version_1(tmp_path, seed):
    """A LinUCB loop whose version 1 served 300 impressions and whose version 2 just went live:
    (loop, store, buffer, the ranking serving version 2, the world's users, the simulator, rng)."""
    ids, vecs, user_vecs, sim = world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=100, publish_every_s=3600.0,
                         rollback_min_impressions=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    loop.publish_initial()
    core = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    rng = np.random.default_rng(seed)
    buffer.items = served_samples(core, sim, user_vecs, 300, rng)
    first = loop.round()
    assert first["version"] == 2 and "rolled_back" not in first
    core.swap(loop.featurizer, loop.serving, 2)
    return loop, store, buffer, core, user_vecs, sim, rng


def test_a_live_version_found_worse_by_the_sequential_test_is_rolled_back(tmp_path):
    """Version 2 goes live after version 1 served 300 impressions; its own impressions then get no
    clicks. The SPRT against version 1's CTR decides "worse" and the loop rolls back: version 3 is
    version 1's weights, with the reason in its manifest and the store's history."""
    loop, store, buffer, core, user_vecs, sim, rng = _version_2_live_after_300_of_version_1(tmp_path, seed=0)
    dead = [x._replace(rewards=(0.0,) * len(x.rewards)) for x in served_samples(core, sim, user_vecs, 300, rng, t0=350)]
    buffer.items = dead
    out = loop.round()
    assert out["rolled_back"]["from"] == 2 and out["rolled_back"]["to"] == 3 and out["rolled_back"]["rollback_of"] == 1
    live = store.latest()
    assert live["version"] == 3 and live["rollback_of"] == 1
    assert live["rollback_reason"].startswith("automatic: version 2 is worse than version 1: CTR ")
    assert loop.serving_version == 3 and loop.stats["rolled_back"] == 1
    assert [(h["action"], h["version"]) for h in store.history()] == [("publish", 1), ("publish", 2), ("rollback", 3)]
    assert store.history()[0]["reason"] == "first version" and "lower bound" in store.history()[1]["reason"]


def test_the_live_versions_test_goes_on_after_a_trainer_restart(tmp_path):
    """The same worse version 2, but the trainer restarts right after it went live: the checkpoint
    carries version 1's measured CTR and version 2's test, so the restarted loop rolls back."""
    loop, store, buffer, core, user_vecs, sim, rng = _version_2_live_after_300_of_version_1(tmp_path, seed=0)
    ids, vecs, _, _ = world()
    again = TrainerLoop(loop.settings, ids, vecs, buffer, store)
    assert again.watch.live == 2 and again.watch.predecessor == 1 and again.watch.counts[1][0] == 300
    buffer.items = [x._replace(rewards=(0.0,) * len(x.rewards))
                    for x in served_samples(core, sim, user_vecs, 300, rng, t0=350)]
    out = again.round()
    assert out["rolled_back"]["from"] == 2 and out["rolled_back"]["rollback_of"] == 1


def test_a_live_version_as_good_as_its_predecessor_is_kept(tmp_path):
    loop, store, buffer, core, user_vecs, sim, rng = _version_2_live_after_300_of_version_1(tmp_path, seed=1)
    for t0 in (300, 900, 1500):
        buffer.items = served_samples(core, sim, user_vecs, 600, rng, t0=t0)
        assert "rolled_back" not in loop.round()
    assert loop.watch.settled and store.latest()["version"] == 2 and loop.stats["rolled_back"] == 0


def test_the_context_reaches_the_logged_impression_and_the_rebuilt_training_input(tmp_path):
    from rl.features import context_features

    ids, vecs, user_vecs, _ = world()
    s = trainer_settings(tmp_path, algorithm="linucb")
    loop = TrainerLoop(s, ids, vecs, _ListBuffer(), PolicyDirectory(tmp_path / "store", 10))
    loop.publish_initial()
    ranking = Ranking(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    m = loop.featurizer.m
    users = {}
    for ctx in ({"hour": 3, "device": "tv", "gender": "female", "locale": "de-DE", "age": 70},
                {"hour": 15, "device": "mobile", "gender": "male", "locale": "ja", "age": 19}):
        r = ranking.rank(user_vecs[0], None, ctx, 3, np.random.default_rng(0), ts=1000.0)
        f = r.features.to_dict()
        sample = TrainingSample("e", 1000.0, "u", tuple(r.items), tuple(map(float, r.propensities)), 1, (1.0, 0, 0),
                                ctx, f)
        logged = samples_to_logged([sample], loop.featurizer, loop.spec, 0.0)
        rebuilt = logged.observations[0].user[2 * m:]
        assert np.array_equal(rebuilt, context_features(ctx, 1000.0))
        users[ctx["device"]] = rebuilt
    assert not np.array_equal(users["tv"], users["mobile"])


def test_a_new_lineage_goes_live_only_by_a_named_operator_decision(tmp_path):
    ids, vecs, user_vecs, sim = world()
    store = PolicyDirectory(tmp_path / "store", 10)
    TrainerLoop(trainer_settings(tmp_path, algorithm="linucb"), ids, vecs, _ListBuffer(), store).publish_initial()
    with pytest.raises(LineageError, match=r"the store serves version 1 \(random, 300 item rows\); this trainer is ppo "
                                           r"for a catalog of 300 item rows .* set trainer.force_new_lineage"):
        TrainerLoop(trainer_settings(tmp_path, algorithm="ppo"), ids, vecs, _ListBuffer(), store)
    with pytest.raises(LineageError, match=r"this trainer is linucb for a catalog of 299 item rows"):  # renumbered
        TrainerLoop(trainer_settings(tmp_path, algorithm="linucb"), ids[:-1], vecs[:-1], _ListBuffer(), store)
    assert store.latest()["version"] == 1
    forced = trainer_settings(tmp_path, algorithm="linucb", force_new_lineage="alice: one item withdrawn")
    loop = TrainerLoop(forced, ids[:-1], vecs[:-1], _ListBuffer(), store)
    m = loop.publish_initial()
    assert m["version"] == 2 and m["gate"] == "forced new lineage over version 1: alice: one item withdrawn"
    assert m["spec"]["num_rows"] == 300
    assert store.history()[-1] == {**store.history()[-1], "action": "publish", "version": 2, "reason": m["gate"]}


def test_a_replica_started_before_embeddings_and_policy_says_why_then_serves(tmp_path):
    """Start in any order: the replica answers "not ready" naming what is missing, and serves
    once the embedding run and then the first version appear, without a restart."""
    from serve.replica import NotReady, Replica
    from streamrec.vectors import write_vectors

    ids, vecs, _, _ = world()
    s = trainer_settings(tmp_path, algorithm="linucb")
    store = PolicyDirectory(s.trainer.store_dir, 10)
    replica = Replica(s, store, seed=0)
    assert replica.not_ready().startswith("no embeddings yet: nothing at ")
    with pytest.raises(NotReady, match="no embeddings yet"):
        replica.rank({"user_id": "u1", "k": 3}, None)
    replica.healthy()  # waiting is healthy: Serve must not restart it
    write_vectors(s.embedding.output_dir, {"items": (ids, vecs, "item_id")}, model_id="test@1")
    assert replica.follow(0) is False  # the catalog is found; nothing published to serve yet
    assert replica.not_ready().startswith("no policy yet")
    assert replica.status()["not_ready"] == replica.not_ready()
    assert replica.follow(0) is False
    TrainerLoop(s, ids, vecs, _ListBuffer(), store).publish_initial()
    assert replica.follow(0) is True and replica.follow(0) is False  # swapped once
    assert replica.not_ready() is None and replica.status()["version"] == 1
    assert len(replica.rank({"user_id": "u1", "k": 3}, None)["items"]) == 3


@pytest.mark.parametrize("algorithm", ["popularity", "ppo"])
def test_a_grown_catalog_keeps_the_learned_rows_and_serves_new_items_before_and_after_their_rows(tmp_path, algorithm):
    """Live cold start, the plain code: 20 items join a catalog of 280. The replica takes the new
    catalog under the live version (a new item ranks by its text vector, row 0 in that version);
    the trainer grows its tables (learned rows kept; a new row is a copy of row 0 for the network,
    zero counts for a bandit) and publishes a version with rows for them, which a replica still on
    the old catalog waits for (not refused) and takes once it follows the catalog. A restarted
    trainer continues the lineage on the grown catalog."""
    from rl.policies import grow_rows
    from streamrec.vectors import assign_rows

    ids, vecs, user_vecs, sim = world()
    old_ids, old_vecs, new_ids = ids[:280], vecs[:280], ids[280:]
    rows = assign_rows(dict(zip(old_ids, range(1, 281))), ids)  # the embedding job's numbering: old rows kept
    assert [rows[i] for i in old_ids] == list(range(1, 281)) and [rows[i] for i in sorted(new_ids)] == list(range(281, 301))
    grown_rows = [rows[i] for i in ids]
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = trainer_settings(tmp_path, algorithm=algorithm, min_samples=100)
    loop = TrainerLoop(s, old_ids, old_vecs, buffer, store)
    loop.publish_initial()
    follower = PolicyFollower(store, old_ids, old_vecs)
    assert follower.poll()
    core = Ranking(follower.current.featurizer, ItemIndex.build(old_ids, old_vecs), follower.current.policy, 1, 20)
    rng = np.random.default_rng(0)
    buffer.items = served_samples(core, sim, user_vecs, 400, rng)
    assert loop.round()["ok"]

    def trained(t: TrainerLoop) -> dict:  # the weights in training (PPO: its learner's)
        return t.learner.module_state() if t.learner is not None else t.policy.state()

    before = trained(loop)

    # a replica follows the grown catalog first: the live version ranks the new items (row 0 for it)
    follower.set_catalog(ids, vecs, grown_rows)
    core.swap(follower.current.featurizer, follower.current.policy, follower.version, follower.canary,
              index=ItemIndex.build(ids, vecs))
    r = core.rank(None, None, {}, 3, rng, candidates=new_ids[:5] + old_ids[:5])
    assert len(r.items) == 3 and np.isfinite(r.scores).all()
    assert list(r.features.candidates[:5]) == new_ids[:5]

    assert loop.set_catalog(ids, vecs, grown_rows) and loop.spec.num_rows == 301
    assert loop.stats["grown_to_rows"] == 301 and not loop.set_catalog(ids, vecs, grown_rows)  # the same again: no-op
    after = trained(loop)
    for name, t in before.items():
        if name != "projection" and len(t) == 281:
            assert after[name].shape[0] == 301 and np.array_equal(after[name][:281], t)
            new = after[name][281:]
            assert np.array_equal(new, np.zeros_like(new) if algorithm == "popularity" else np.repeat(t[:1], 20, 0))
    with pytest.raises(ValueError, match="fewer than the lineage's 300"):
        loop.set_catalog(old_ids, old_vecs)  # renumbered: refused
    with pytest.raises(ValueError, match="rows are never given back"):
        grow_rows(loop.spec, after, 10)

    stale = PolicyFollower(store, old_ids, old_vecs)  # a replica that has not seen the new catalog yet
    assert stale.poll()
    buffer.items = served_samples(core, sim, user_vecs, 400, rng, 400)  # samples name the new items' rows now
    out = loop.round()
    assert out["ok"] and store.latest()["spec"]["num_rows"] == 301
    assert not stale.poll() and stale.version == out["version"] - 1 and "waits" in stale.last_error and stale.refused == 0
    stale.set_catalog(ids, vecs, grown_rows)
    assert stale.poll() and stale.version == out["version"]
    assert follower.poll() and follower.current.featurizer.rows([new_ids[0]])[0] == rows[new_ids[0]]

    again = TrainerLoop(s, ids, vecs, _ListBuffer(), store, rows=grown_rows)  # a restart on the grown catalog
    assert again.spec.num_rows == 301 and again.serving_version == out["version"]
    for name, t in trained(loop).items():
        assert np.allclose(trained(again)[name], t)
    loop.close()
    again.close()


def _catalog(where, ids, vecs):
    from streamrec.vectors import load_catalog, write_vectors

    write_vectors(where, {"items": (list(ids), np.asarray(vecs), "item_id")}, model_id="test@1")
    return load_catalog(where)


def _loop(s, store, c):
    return TrainerLoop(s, c.ids, c.vectors, _ListBuffer(), store, rows=c.rows, num_rows=c.num_rows, row_ids=c.row_ids)


def _follower(store, c):
    return PolicyFollower(store, c.ids, c.vectors, rows=c.rows, num_rows=c.num_rows, row_ids=c.row_ids)


def test_versions_record_which_item_each_row_stands_for_and_nothing_uses_them_over_other_rows(tmp_path):
    """A catalog that grew keeps its rows; an embedding output started afresh numbers the same
    items otherwise. Each version records the digest of its rows' items: a replica refuses a
    version, or a catalog, whose rows stand for other items, and the trainer does not continue
    such a lineage unless an operator forces a new one. The same numbering made afresh is fine."""
    from streamrec.vectors import rows_digest

    ids, vecs, _, _ = world()
    first = _catalog(tmp_path / "emb", ids[20:], vecs[20:])
    grown = _catalog(tmp_path / "emb", ids, vecs)  # 20 items more: they take rows 281-300
    other = _catalog(tmp_path / "afresh", ids, vecs)  # the same 300 items, numbered in one go
    same = _catalog(tmp_path / "afresh-same", ids[20:], vecs[20:])  # afresh, but numbered as the first run was
    assert grown.row_ids[:281] == first.row_ids and set(grown.row_ids[281:]) == set(ids[:20])
    assert other.row_ids != grown.row_ids and same.row_ids == first.row_ids

    s = trainer_settings(tmp_path, algorithm="linucb")
    store = PolicyDirectory(tmp_path / "store", 10)
    loop = _loop(s, store, first)
    assert loop.publish_initial()["rows_digest"] == rows_digest(first.row_ids, 281)
    assert loop.set_catalog(grown.ids, grown.vectors, grown.rows, grown.num_rows, grown.row_ids)
    with pytest.raises(ValueError, match="item rows 1-300 stand for other items than the lineage's"):
        loop.set_catalog(other.ids, other.vectors, other.rows, other.num_rows, other.row_ids)

    refusing = _follower(store, other)
    assert not refusing.poll() and refusing.refused == 1 and refusing.version is None
    assert "version 1 learned its item rows for other items" in refusing.last_error
    assert _follower(store, same).poll()
    serving = _follower(store, grown)
    assert serving.poll() and serving.version == 1
    with pytest.raises(ValueError, match="item rows 1-280 stand for other items than version 1 learned them for"):
        serving.set_catalog(other.ids, other.vectors, other.rows, other.num_rows, other.row_ids)
    assert serving.row_ids == grown.row_ids  # still serving what it served

    with pytest.raises(LineageError, match=r"version 1 \(random, 280 item rows\); this trainer is linucb for a "
                                           r"catalog of 300 item rows whose rows stand for other items"):
        _loop(s, store, other)
    assert _loop(s, store, same).serving_version == 1  # the same numbering continues
    forced = trainer_settings(tmp_path, algorithm="linucb", force_new_lineage="bob: embeddings rebuilt from scratch")
    m = _loop(forced, store, other).publish_initial()
    assert m["rows_digest"] == rows_digest(other.row_ids, 301) and m["gate"].endswith("bob: embeddings rebuilt from scratch")
    assert refusing.poll() and refusing.version == m["version"]


def test_a_replica_keeps_serving_over_a_renumbered_catalog_until_a_new_lineage_for_it(tmp_path):
    import shutil

    from serve.replica import Replica

    ids, vecs, _, _ = world()
    s = trainer_settings(tmp_path, algorithm="linucb")
    out = s.embedding.output_dir
    c = _catalog(out, ids[20:], vecs[20:])
    store = PolicyDirectory(s.trainer.store_dir, 10)
    _loop(s, store, c).publish_initial()
    replica = Replica(s, store, seed=0)
    assert replica.status()["version"] == 1  # it took the catalog and the version as it started
    shutil.rmtree(out)  # the output directory started afresh: its rows stand for other items
    afresh = _catalog(out, ids, vecs)
    assert replica.sync_catalog() is False
    assert replica.catalog_version == c.version and replica.refused_catalog[0] == afresh.version
    assert replica.last_error.startswith(f"catalog {afresh.version} refused: the catalog's item rows 1-280 stand for "
                                         "other items than version 1 learned them for")
    replica.last_error = None
    assert replica.sync_catalog() is False and replica.last_error is None  # not loaded again while nothing changed
    assert len(replica.rank({"user_id": "u1", "k": 3}, None)["items"]) == 3  # still serving version 1

    forced = trainer_settings(tmp_path, algorithm="linucb", force_new_lineage="bob: embeddings rebuilt")
    assert _loop(forced, store, afresh).publish_initial()["version"] == 2
    assert replica.follow(0) is False and replica.status()["version"] == 1  # not over the catalog it has
    assert replica.sync_catalog() is True  # the new lineage and its catalog swap in together
    assert replica.status()["version"] == 2 and replica.catalog_version == afresh.version
    assert len(replica.rank({"user_id": "u1", "k": 3}, None)["items"]) == 3
