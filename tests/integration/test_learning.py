"""Learning through the real parts: RLlib PPO on logged slates, the Trainer and PolicyStore actors, the loop on Kafka."""

from __future__ import annotations

import dataclasses
import time
import uuid

import numpy as np
import pytest
import ray
import torch

from actors.ingest import IngestGroup
from actors.policy_store import PolicyDirectory, PolicyStore
from actors.profile_store import ProfileStore
from actors.sample_buffer import SampleBuffer
from actors.trainer import Trainer, TrainerLoop
from cluster.broker import ensure_topics
from rl.gate import evaluate
from rl.logged import samples_to_logged
from rl.policies import Observation, PolicySpec, policy_from_state
from rl.ppo import LoggedBatch, PPOHyper, SlateLearner
from rl.simulators import SyntheticUsers
from rl.slate import plackett_luce_logp
from serve.follower import Canary, PolicyFollower
from serve.ranking import RankingCore
from streamrec.config import settings_from_args
from streamrec.eventbus import KafkaEventSink
from streamrec.events import Feedback, Impression, TrainingSample, encode
from streamrec.index import ItemIndex

pytestmark = pytest.mark.integration


def _world(n_items=300, n_users=100, topics=6, dim=24, seed=0):
    """Items as noisy topic centroids (unit vectors) and a simulator whose users like topics."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(topics, dim))
    main = rng.integers(topics, size=n_items)
    vecs = centroids[main] + 0.3 * rng.normal(size=(n_items, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    item_topics = np.eye(topics)[main]
    taste = rng.dirichlet(np.full(topics, 0.3), size=n_users)
    ids = [f"item{i}" for i in range(n_items)]
    sim = SyntheticUsers(ids, item_topics, main, np.zeros(n_items), [f"user{u}" for u in range(n_users)], taste,
                         rng.integers(15, 70, size=n_users).astype(float), sharpness=6.0, base=-2.5)
    user_vecs = (taste @ centroids).astype(np.float32)
    user_vecs /= np.linalg.norm(user_vecs, axis=1, keepdims=True)
    return ids, vecs, user_vecs, sim


def test_module_scores_and_slate_logp_match_the_serving_model():
    spec = PolicySpec("ppo", m=4, num_candidates=10, slate_size=3, num_rows=21, penalty=1.5, temperature=0.7)
    learner = SlateLearner(spec)
    try:
        module = learner.group._learner.module["default_policy"]
        rng = np.random.default_rng(0)
        obs = rng.normal(size=(6, spec.layout.size)).astype(np.float32)
        obs[:, -10:] = rng.integers(0, 21, size=(6, 10))
        policy = learner.serving_policy()
        with torch.no_grad():
            torch_scores = module.scores(torch.as_tensor(obs)).numpy()
            dist = module.get_train_action_dist_cls().from_logits(module.dist_inputs(torch.as_tensor(obs)))
            slates = np.stack([policy.select(Observation.from_flat(o, spec.layout), 3, rng)[0] for o in obs])
            torch_logp = dist.logp(torch.as_tensor(slates)).numpy()
        numpy_scores = np.stack([policy.scores(Observation.from_flat(o, spec.layout)) for o in obs])
        assert np.abs(torch_scores - numpy_scores).max() < 1e-4
        for o, s, lp in zip(obs, slates, torch_logp):
            ob = Observation.from_flat(o, spec.layout)
            assert lp == pytest.approx(plackett_luce_logp(policy.scores(ob), s, 0.7, ob.similarity(), 1.5), abs=1e-4)
    finally:
        learner.shutdown()


def test_ppo_learns_from_logged_slates_only():
    """No environment: the behaviour policy's logged slates and log-probabilities are all PPO sees."""
    spec = PolicySpec("ppo", m=4, num_candidates=10, slate_size=3, num_rows=21)
    learner = SlateLearner(spec, PPOHyper(lr=3e-3, minibatch_size=128))
    rng = np.random.default_rng(0)
    try:
        def collect(policy, b=512):
            obs = rng.normal(size=(b, spec.layout.size)).astype(np.float32)
            obs[:, -10:] = rng.integers(0, 21, size=(b, 10))
            acts, logps, rewards = [], [], []
            for o in obs:
                ob = Observation.from_flat(o, spec.layout)
                slate, probs, _ = policy.select(ob, 3, rng)
                acts.append(slate)
                logps.append(np.log(probs).sum())
                rewards.append(float(np.argmax(ob.items[:, 0]) in slate))  # the item strongest on feature 0
            return LoggedBatch(obs, np.array(acts), np.array(logps), np.array(rewards))

        first = collect(learner.serving_policy())
        batch = first
        for _ in range(10):
            learner.update(batch)
            batch = collect(learner.serving_policy())
        assert batch.rewards.mean() > first.rewards.mean() + 0.15
    finally:
        learner.shutdown()


def _trainer_settings(tmp_path, algorithm="ppo", **trainer):
    tag = uuid.uuid4().hex[:6]
    return settings_from_args({
        "kafka": {"partitions": 2, "topics": {"impressions": f"lt.imp.{tag}", "feedback": f"lt.fb.{tag}",
                                              "dlq": f"lt.dlq.{tag}"}},
        "ingest": {"group_id": f"lt-{tag}", "reward_window_s": 1.0},
        "policy": {"algorithm": algorithm, "slate_size": 3, "num_candidates": 20, "feature_dim": 6,
                   "diversity_lambda": 0.1, "diversity_penalty": 1.0},
        "trainer": {"train_every_s": 0.5, "min_samples": 200, "min_holdout": 1, "store_dir": str(tmp_path / f"store-{tag}"),
                    "checkpoint_dir": str(tmp_path / f"ckpt-{tag}"), "gate_tolerance": 10.0, **trainer},
    }, env={})


def _samples(core, sim, user_vecs, n, rng, t0=0):
    out = []
    for e in range(t0, t0 + n):
        u, uid, ctx = sim.sample_user(rng)
        r = core.rank(user_vecs[u], None, ctx, 3, rng, ts=float(e))
        c = sim.clicks(u, r.items, ctx, rng)
        out.append(TrainingSample(uuid.uuid4().hex, float(e), uid, tuple(r.items), tuple(map(float, r.propensities)),
                                  r.version, tuple(map(float, c)), ctx, r.features, source=("imp", 0, e)))
    return out


class _ListBuffer:
    """The SampleBuffer's two calls the trainer makes, over a list (TrainerLoop takes plain objects)."""

    def __init__(self):
        self.items: list = []

    def size(self) -> int:
        return len(self.items)

    def take(self, n: int) -> list:
        out, self.items = self.items[:n], self.items[n:]
        return out


def test_publish_every_s_defers_passing_candidates_and_keeps_training(tmp_path):
    ids, vecs, user_vecs, sim = _world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = _trainer_settings(tmp_path, algorithm="linucb", publish_every_s=3600.0, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    assert loop.publish_initial()["version"] == 1
    core = RankingCore(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(3):
        buffer.items = _samples(core, sim, user_vecs, 300, rng)
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
    ids, vecs, user_vecs, sim = _world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = _trainer_settings(tmp_path, algorithm="linucb", min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    first = loop.publish_initial()
    assert first["algorithm"] == "random" and first["spec"]["algorithm"] == "random" and first["version"] == 1
    assert loop.serving.algorithm == "random" and loop.policy.algorithm == "linucb"
    core = RankingCore(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)
    samples = _samples(core, sim, user_vecs, 50, np.random.default_rng(0))
    k = s.policy.slate_size
    assert all(x.propensities == pytest.approx(1.0 / (20 - np.arange(k))) for x in samples)

    again = TrainerLoop(s, ids, vecs, buffer, store)  # a restart before any trained version
    assert again.publish_initial() is None and again.serving_version == 1
    assert np.array_equal(again.featurizer.projection, loop.featurizer.projection)
    assert again.serving.algorithm == "random" and again.policy.algorithm == "linucb"
    buffer.items = _samples(core, sim, user_vecs, 300, np.random.default_rng(1))
    out = again.round()
    assert out["ok"] and out["version"] == 2 and store.latest()["algorithm"] == "linucb"
    # 60 held-out random slates over 20 candidates: ~3 start like the candidate's, an ESS below
    # min_ess, so DR keeps whole-slate weights (cascade DR needs more top-position evidence)
    assert out["ope"]["estimator"] == "dr" and out["ope"]["ess"] < s.trainer.min_ess
    assert out["current_ope"]["estimator"] == "snips"  # the random version on its own logs


def test_a_canary_logs_the_mixtures_exact_probabilities(tmp_path):
    """Live version: LinUCB before any data (one deterministic slate); canary: uniform random on 30%
    of requests. Each slate's logged probability is the mixture's, as sampling frequencies show."""
    ids, vecs, _, _ = _world()
    s = _trainer_settings(tmp_path, algorithm="linucb")
    loop = TrainerLoop(s, ids, vecs, _ListBuffer(), PolicyDirectory(tmp_path / "store", 10))
    live = loop.policy
    uniform = policy_from_state(dataclasses.replace(loop.spec, algorithm="random"), live.state())
    core = RankingCore(loop.featurizer, ItemIndex.build(ids, vecs), live, 1, 20)
    core.swap(loop.featurizer, live, 1, Canary(uniform, 2, 0.3))
    rng = np.random.default_rng(0)
    cands, profile = ids[:20], vecs[0]
    runs = [core.rank(profile, None, {"hour": 9}, 3, rng, ts=0.0, candidates=cands) for _ in range(4000)]
    live_slates = {tuple(r.items) for r in runs if r.version == "1"}
    assert len(live_slates) == 1  # deterministic given its state
    greedy = live_slates.pop()
    p_greedy = 0.7 + 0.3 / (20 * 19 * 18)
    canary_share = np.mean([r.version == "2" for r in runs])
    assert abs(canary_share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    shown_greedy = np.mean([tuple(r.items) == greedy for r in runs])
    assert abs(shown_greedy - p_greedy) < 4 * np.sqrt(p_greedy * (1 - p_greedy) / 4000)
    for r in runs:
        if tuple(r.items) == greedy:  # served by either version: one probability
            assert np.prod(r.propensities) == pytest.approx(p_greedy)
            assert r.propensities[0] == pytest.approx(0.7 + 0.3 / 20)
        else:  # only the canary shows it; the top matches the live slate's 70% share of the time
            assert r.version == "2" and np.prod(r.propensities) == pytest.approx(0.3 / (20 * 19 * 18))
            top = 0.7 + 0.3 / 20 if r.items[0] == greedy[0] else 0.3 / 20
            assert r.propensities[0] == pytest.approx(top)
    # each impression also records both versions' own probabilities of its slate; the gate reads
    # them back (here: equal to what it would compute) instead of recomputing
    samples = [TrainingSample(str(i), 0.0, "u", tuple(r.items), tuple(r.propensities), r.version, (0.0,) * 3,
                              {}, r.features) for i, r in enumerate(runs[:200])]
    logged = samples_to_logged(samples, loop.featurizer, loop.spec, 0.0)
    assert (logged.mixture_versions == ("1", "2")).all()
    pairs = list(zip(logged.observations, logged.slates))
    assert np.allclose(logged.mixture[:, 0], [live.position_probabilities(o, sl) for o, sl in pairs])
    assert np.allclose(logged.mixture[:, 1], 1.0 / (20 - np.arange(3)))
    args = dict(estimator="snips", rng=np.random.default_rng(0), dr_weights="cascade")
    assert (evaluate(uniform, logged, target_probs=logged.mixture[:, 1], **args).estimate
            == evaluate(uniform, logged, **args).estimate)
    with pytest.raises(ValueError, match=r"target_probs must be \(200, 3\) like the logged slates"):
        evaluate(uniform, logged, target_probs=logged.mixture[:5, 1], **args)


def test_canary_gathers_evidence_then_is_promoted_or_refused(tmp_path):
    """With trainer.canary_share the trainer publishes a frozen candidate to the store's canary slot;
    the follower serves it on that share; once canary_samples samples logged since it went live are
    in, the gate judges it on them (weights bounded by 1 / share) and the store promotes or ends it."""
    ids, vecs, user_vecs, sim = _world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = _trainer_settings(tmp_path, algorithm="linucb", canary_share=0.3, canary_samples=400, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    loop.publish_initial()
    follower = PolicyFollower(store, ids, vecs)
    assert follower.poll() and follower.version == 1 and follower.canary is None
    core = RankingCore(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy, 1, 20)

    def serve(n, t0):
        if follower.poll():
            core.swap(follower.current.featurizer, follower.current.policy, follower.version, follower.canary)
        buffer.items = _samples(core, sim, user_vecs, n, rng, t0)
        return loop.round()

    rng = np.random.default_rng(0)
    out = serve(300, 0)
    assert out["canary"] == 2 and not out["ok"] and loop.stats["canaries"] == 1
    assert store.latest()["version"] == 1 and store.canary()["version"] == 2 and store.canary()["share"] == 0.3
    out = serve(300, 300)  # ~300 logged since the canary went live (its first slate): not enough yet
    assert follower.canary.version == 2 and follower.canary.share == 0.3
    assert 280 < out["holdout"] <= 300 and "ope" not in out and store.latest()["version"] == 1
    out = serve(300, 600)
    assert out["ok"] and out["version"] == 2 and out["canary"] == 3  # judged, promoted, the next one out
    live = store.latest()
    assert live["version"] == 2 and live["stage"] == "live" and 580 < live["ope_samples"] <= 600
    assert 0.15 * 600 < live["ope_canary_samples"] < 0.45 * 600
    # the candidate's weights are bounded by 1 / share: SNIPS keeps its estimate (no DR fallback)
    assert live["ope"]["estimator"] == "snips" and live["ope"]["support"] > 0.7
    assert loop.serving_version == 2 and loop.click_model.n == 900  # the evidence joins the click model after the judgement
    assert follower.poll() and follower.version == 2 and follower.canary.version == 3

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
    assert follower.poll() and follower.version == 2 and follower.canary.version == 4

    again = TrainerLoop(s, ids, vecs, buffer, store)  # a restart loses the evidence: the canary ends
    assert store.canary() is None and store.manifest(4)["stage"] == "refused" and again.serving_version == 2
    assert follower.poll() and follower.canary is None


def test_a_canary_no_replica_serves_is_ended_counting_only_samples_logged_after_it(tmp_path):
    """A trainer behind the stream first reads samples logged before the canary existed: those do not
    count against it. 3 * canary_samples samples logged after it without one of its slates end it."""
    ids, vecs, user_vecs, sim = _world()
    buffer, store = _ListBuffer(), PolicyDirectory(tmp_path / "store", 10)
    s = _trainer_settings(tmp_path, algorithm="linucb", canary_share=0.3, canary_samples=100, min_samples=100)
    loop = TrainerLoop(s, ids, vecs, buffer, store)
    loop.publish_initial()
    core = RankingCore(loop.featurizer, ItemIndex.build(ids, vecs), loop.serving, 1, 20)  # never takes the canary
    rng = np.random.default_rng(0)
    buffer.items = _samples(core, sim, user_vecs, 300, rng)
    assert loop.round()["canary"] == 2
    buffer.items = _samples(core, sim, user_vecs, 400, rng, t0=300)  # logged long before it (ts 300-699)
    assert loop.round()["canary"] == 2 and store.canary()["version"] == 2
    buffer.items = _samples(core, sim, user_vecs, 300, rng, t0=int(time.time()) + 1)
    out = loop.round()
    assert out["why"] == "no replica served it in 300 samples logged since it was published"
    assert store.manifest(2)["stage"] == "refused" and out["canary"] == 3 and loop.stats["rejected"] == 1


def test_trainer_publishes_resumes_after_a_crash_and_rolls_back(ray_session, tmp_path):
    ids, vecs, user_vecs, sim = _world()
    s = _trainer_settings(tmp_path)
    buffer = SampleBuffer.remote(capacity=100_000)
    store = PolicyStore.remote(s.trainer.store_dir, 10)
    trainer = Trainer.remote(s.model_dump(mode="python"), ids, vecs, buffer, store)
    try:
        m = ray.get(trainer.metrics.remote())
        assert m["serving_version"] == 1  # the untrained policy is published at start
        follower = PolicyFollower(store, ids, vecs)
        assert follower.poll() and follower.version == 1
        core = RankingCore(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy, 1, 20)
        rng = np.random.default_rng(0)
        ray.get(buffer.put.remote(_samples(core, sim, user_vecs, 600, rng)))
        deadline = time.monotonic() + 120
        while ray.get(trainer.metrics.remote())["published"] < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        m = ray.get(trainer.metrics.remote())
        assert m["published"] >= 1 and m["error"] is None, m
        latest = ray.get(store.latest.remote())
        assert latest["version"] >= 2 and latest["parent"] == latest["version"] - 1
        assert latest["ope"]["n"] > 0 and latest["trained_through"] == {"imp:0": 599}
        assert follower.poll() and follower.version == latest["version"]

        # crash: the actor restarts, continues the published lineage from its checkpoint
        before = latest["version"]
        ray.kill(trainer, no_restart=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                m = ray.get(trainer.metrics.remote(), timeout=30)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(1)
        assert m["serving_version"] == before  # no new "initial" version after the restart
        ray.get(buffer.put.remote(_samples(core, sim, user_vecs, 300, rng)))
        deadline = time.monotonic() + 120
        while ray.get(store.latest.remote())["version"] == before and time.monotonic() < deadline:
            time.sleep(0.5)
        after = ray.get(store.latest.remote())
        assert after["version"] == before + 1 and after["trained_through"]["imp:0"] == 599

        rolled = ray.get(trainer.rollback.remote())
        assert rolled["version"] == after["version"] + 1 and rolled["rollback_of"] == before
        assert rolled["sha256"] == ray.get(store.manifest.remote(before))["sha256"]
    finally:
        ray.get(trainer.stop.remote())
        for a in (trainer, store, buffer):
            ray.kill(a)


def test_closed_loop_on_kafka_trains_and_serves_new_versions(broker, ray_session, tmp_path):
    """simulated clients -> impressions/feedback on Kafka -> ingest -> trainer -> store -> clients."""
    ids, vecs, user_vecs, sim = _world(seed=1)
    s = _trainer_settings(tmp_path, algorithm="linucb")
    t = s.kafka.topics
    ensure_topics(broker.bootstrap, {t.impressions: 2, t.feedback: 2, t.dlq: 1})
    buffer = SampleBuffer.remote(capacity=100_000)
    profiles = ProfileStore.remote()
    ray.get(profiles.set_item_vectors.remote(ids, vecs))
    group = IngestGroup(bootstrap=broker.bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest,
                        buffer=buffer, profile_store=profiles, name_prefix=f"lt-{s.ingest.group_id}")
    group.scale(1)
    store = PolicyStore.remote(s.trainer.store_dir, 10)
    trainer = Trainer.remote(s.model_dump(mode="python"), ids, vecs, buffer, store)
    sink = KafkaEventSink(broker.bootstrap)
    try:
        assert ray.get(trainer.metrics.remote())["serving_version"] == 1
        follower = PolicyFollower(store, ids, vecs)
        follower.poll()
        core = RankingCore(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy,
                           follower.version, 20)
        rng = np.random.default_rng(0)
        served_versions = set()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(served_versions) < 3:
            for _ in range(200):
                u, uid, ctx = sim.sample_user(rng)
                r = core.rank(user_vecs[u], None, ctx, 3, rng)
                served_versions.add(r.version)
                eid = uuid.uuid4().hex
                now = time.time()
                sink.send(t.impressions, uid, encode(Impression(eid, now, uid, tuple(r.items),
                                                                tuple(map(float, r.propensities)), r.version,
                                                                ctx, r.features)))
                for item, c in zip(r.items, sim.clicks(u, r.items, ctx, rng)):
                    if c:
                        sink.send(t.feedback, uid, encode(Feedback(eid, now, uid, item)))
            sink.flush(10)
            time.sleep(0.5)
            if follower.poll():
                cur = follower.current
                core.swap(cur.featurizer, cur.policy, cur.version)
        m = ray.get(trainer.metrics.remote())
        assert len(served_versions) >= 3, (served_versions, m)
        assert m["samples"] > 0 and m["skipped"] == 0 and m["error"] is None
        assert ray.get(profiles.metrics.remote())["events"] > 0  # clicks reached the live profiles
    finally:
        sink.close()
        group.stop()
        ray.get(trainer.stop.remote())
        for a in (trainer, store, buffer, profiles):
            ray.kill(a)
