"""Learning through the real parts: RLlib PPO on logged slates, the Trainer and PolicyStore actors, the loop on Kafka."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import ray
import torch

from actors.remote import Blocking
from cluster.loop import start_learning, start_stream
from rl.learners.ppo import PPOHyper, SlateLearner
from rl.logged_batch import LoggedBatch
from rl.slate import plackett_luce_logp
from rl.spec import Observation, PolicySpec
from serve.follower import PolicyFollower
from serve.ranking import Ranking
from streamrec.eventbus import KafkaEventSink
from streamrec.events import Feedback, Impression, encode
from streamrec.index import ItemIndex
from tests.integration.stream_helpers import create_topics, drain, samples_reader, write_samples
from tests.learning_world import served_samples, trainer_settings, world

pytestmark = pytest.mark.integration


def test_module_scores_and_slate_logp_match_the_serving_model():
    spec = PolicySpec("ppo", m=4, num_candidates=10, slate_size=3, num_rows=21, penalty=1.5, temperature=0.7)
    learner = SlateLearner(spec)
    try:
        module = learner.module()
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


def test_a_trained_policy_ranks_the_same_user_differently_by_context():
    """Clicks depend on the device: on mobile users take the candidate strongest on feature 0, on
    desktop the one strongest on feature 1. After PPO on logged slates alone, the same user and
    candidates get a different slate distribution on each device."""
    from rl.features import context_features

    spec = PolicySpec("ppo", m=4, num_candidates=10, slate_size=3, num_rows=21)
    learner = SlateLearner(spec, PPOHyper(lr=3e-3, minibatch_size=128))
    rng = np.random.default_rng(0)
    lay = spec.layout
    ctx = {d: context_features({"device": d, "hour": 12}) for d in ("mobile", "desktop")}

    def observe(device, base):
        o = base.copy()
        o[2 * spec.m:lay.user_dim] = ctx[device]
        return o

    def draw(b):
        obs = rng.normal(size=(b, lay.size)).astype(np.float32)
        obs[:, -10:] = rng.integers(1, 21, size=(b, 10))
        return obs

    try:
        for _ in range(12):
            obs, acts, logps, rewards = [], [], [], []
            policy = learner.serving_policy()
            for o, device in zip(draw(512), rng.choice(["mobile", "desktop"], 512)):
                o = observe(device, o)
                ob = Observation.from_flat(o, lay)
                slate, probs, _ = policy.select(ob, 3, rng)
                wanted = int(np.argmax(ob.items[:, 0 if device == "mobile" else 1]))
                obs.append(o)
                acts.append(slate)
                logps.append(np.log(probs).sum())
                rewards.append(float(slate[0] == wanted))
            learner.update(LoggedBatch(np.array(obs), np.array(acts), np.array(logps), np.array(rewards)))
        policy = learner.serving_policy()
        base = draw(1)[0]
        base[lay.user_dim:lay.user_dim + 10 * spec.m] = 0
        items = base[lay.user_dim:lay.user_dim + 10 * spec.m].reshape(10, spec.m)
        items[3, 0], items[7, 1] = 2.0, 2.0  # candidate 3 is mobile's pick, 7 desktop's
        top = {d: Observation.from_flat(observe(d, base), lay) for d in ctx}
        first = {d: policy.position_probabilities(top[d], np.array([3, 7, 0]))[0] for d in ctx}
        second = {d: policy.position_probabilities(top[d], np.array([7, 3, 0]))[0] for d in ctx}
        assert first["mobile"] > first["desktop"] + 0.1 and second["desktop"] > second["mobile"] + 0.1, (first, second)
    finally:
        learner.shutdown()


class _Payload:
    """Unpickling this creates a file: the proof that a restore unpickled what it read."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_learner_checkpoint_round_trips_and_a_tampered_one_is_refused_unrun(tmp_path):
    import hashlib
    import json
    import pickle

    from rl.weights import WeightsError

    spec = PolicySpec("ppo", m=4, num_candidates=10, slate_size=3, num_rows=21)
    saved, fresh = SlateLearner(spec, PPOHyper(seed=1)), SlateLearner(spec, PPOHyper(seed=2))
    ckpt, marker = tmp_path / "learner", tmp_path / "payload-ran"
    try:
        saved.save(str(ckpt))
        assert sorted(p.name for p in ckpt.iterdir()) == ["learner.json", "module.safetensors"]
        fresh.restore(str(ckpt))
        mine, theirs = saved.module_state(), fresh.module_state()
        assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)

        payload = pickle.dumps(_Payload(marker))
        (ckpt / "module.safetensors").write_bytes(payload)
        with pytest.raises(WeightsError, match="do not match their sha256"):
            fresh.restore(str(ckpt))
        record = json.loads((ckpt / "learner.json").read_text())
        record["sha256"] = hashlib.sha256(payload).hexdigest()  # a tamperer who also rewrote the record
        (ckpt / "learner.json").write_text(json.dumps(record))
        with pytest.raises(WeightsError, match="not a safetensors file"):
            fresh.restore(str(ckpt))
        (ckpt / "learner.json").write_bytes(payload)  # a pickle where the record should be
        with pytest.raises(WeightsError, match="is unreadable"):
            fresh.restore(str(ckpt))
        assert not marker.exists()
        assert all(np.array_equal(theirs[k], v) for k, v in fresh.module_state().items())  # nothing loaded
    finally:
        saved.shutdown()
        fresh.shutdown()


def test_trainer_publishes_resumes_after_a_crash_and_rolls_back(broker, ray_session, tmp_path):
    ids, vecs, user_vecs, sim = world()
    s = trainer_settings(tmp_path)
    create_topics(broker.bootstrap, s)
    learning = start_learning(s, broker.bootstrap, ids, vecs, named=False)
    store, trainer = learning.store, learning.trainer
    try:
        m = ray.get(trainer.metrics.remote())
        assert m["serving_version"] == 1  # the untrained policy is published at start
        follower = PolicyFollower(Blocking(store), ids, vecs)
        assert follower.poll() and follower.version == 1
        core = Ranking(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy, 1, 20)
        rng = np.random.default_rng(0)
        write_samples(broker.bootstrap, s.kafka.topics.samples, served_samples(core, sim, user_vecs, 600, rng))
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
        write_samples(broker.bootstrap, s.kafka.topics.samples, served_samples(core, sim, user_vecs, 300, rng))
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
        for a in (trainer, store):
            ray.kill(a)


def test_closed_loop_on_kafka_trains_and_serves_new_versions(broker, ray_session, tmp_path):
    """simulated clients -> impressions/feedback on Kafka -> ingest -> trainer -> store -> clients."""
    ids, vecs, user_vecs, sim = world(seed=1)
    s = trainer_settings(tmp_path, algorithm="linucb")
    t = s.kafka.topics
    create_topics(broker.bootstrap, s)
    stream = start_stream(s, broker.bootstrap, ids, vecs, named=False, parallelism=1)
    profiles, group = stream.profiles, stream.ingest
    learning = start_learning(s, broker.bootstrap, ids, vecs, named=False)
    store, trainer = learning.store, learning.trainer
    sink = KafkaEventSink(broker.bootstrap)
    try:
        assert ray.get(trainer.metrics.remote())["serving_version"] == 1
        follower = PolicyFollower(Blocking(store), ids, vecs)
        follower.poll()
        core = Ranking(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy,
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
                                                                ctx, r.features.to_dict())))
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
        for a in (trainer, store, profiles):
            ray.kill(a)


def _wait_actor(actor, timeout_s: float = 120.0) -> dict:
    """The metrics of an actor that Ray may be restarting, once it answers (``ray.kill`` takes a
    moment: an actor just killed may answer once more before it goes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.metrics.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(1)


def test_killing_an_ingest_actor_and_the_trainer_mid_stream_trains_every_joined_sample_once(
        broker, ray_session, tmp_path):
    """Impressions and clicks flow steadily through two ingest actors into the samples log and the
    trainer. An ingest actor and then the trainer are killed, then the trainer alone again; after
    one more trainer restart, copies of the last samples it took are written to the log:
    the trainer's lineage has taken every joined sample exactly once (its count and id digest,
    carried over its restart by the checkpoint, equal the impressions': a count restarted from
    zero, a sample lost or one taken twice would not), and it trained on."""
    from rl.trainer_loop import ids_digest

    ids, vecs, user_vecs, sim = world(seed=2)
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=1, max_batch=400)
    t = s.kafka.topics
    create_topics(broker.bootstrap, s)
    stream = start_stream(s, broker.bootstrap, ids, vecs, named=False, parallelism=2)
    learning = start_learning(s, broker.bootstrap, ids, vecs, named=False)
    store, trainer, group = learning.store, learning.trainer, stream.ingest
    follower = PolicyFollower(Blocking(store), ids, vecs)
    follower.poll()
    core = Ranking(follower.current.featurizer, ItemIndex.build(ids, vecs), follower.current.policy, 1, 20)
    rng = np.random.default_rng(0)
    sink = KafkaEventSink(broker.bootstrap, buffer_events=100_000)
    produced: list[str] = []

    stop = threading.Event()

    def produce_steadily() -> None:  # about 300 impressions/s until stopped
        while not stop.is_set():
            for x in served_samples(core, sim, user_vecs, 60, rng):
                now = time.time()
                sink.send(t.impressions, x.user_id, encode(Impression(
                    x.event_id, now, x.user_id, tuple(map(str, x.items)), x.propensities, x.policy_version,
                    x.context, x.features)))
                for item, r in zip(x.items, x.rewards):
                    if r > 0:
                        sink.send(t.feedback, x.user_id, encode(Feedback(x.event_id, now, x.user_id, str(item))))
                produced.append(x.event_id)
            stop.wait(0.2)

    def consumed() -> int:
        return _wait_actor(trainer)["consumed"]

    producer = threading.Thread(target=produce_steadily, daemon=True)
    producer.start()
    try:
        deadline = time.monotonic() + 120
        while consumed() == 0:
            assert time.monotonic() < deadline, "the trainer took nothing"
            time.sleep(0.5)
        time.sleep(2)
        # an ingest actor crashes mid-stream (it replays from its last commit), then the trainer
        ray.kill(group.actors[0], no_restart=False)
        time.sleep(1.5)
        ray.kill(trainer, no_restart=False)
        time.sleep(2)
        _wait_actor(group.actors[0]), _wait_actor(trainer)
        time.sleep(5)
        assert 0 < consumed() < len(produced)
        ray.kill(trainer, no_restart=False)  # and the trainer alone
        time.sleep(2)
        _wait_actor(trainer)
        time.sleep(3)
        stop.set()
        producer.join(30)
        assert sink.flush(30)

        def taken_all() -> dict:
            deadline = time.monotonic() + 180
            while (m := _wait_actor(trainer))["consumed"] < len(produced):
                assert time.monotonic() < deadline, (m["consumed"], len(produced), m["error"])
                time.sleep(1)
            return m

        taken_all()
        # copies of samples the trainer took shortly before a restart are written to the log after
        # it (an ingest actor that crashed between writing and committing rewrites its samples
        # once its group has rejoined): the restarted trainer recognises every copy
        ray.kill(trainer, no_restart=False)
        time.sleep(2)
        _wait_actor(trainer)
        whole = samples_reader(broker.bootstrap, s)
        whole.seek({"0": 0})
        taken = drain(whole, len(produced), timeout_s=60)
        write_samples(broker.bootstrap, t.samples, taken[-1_000:])
        deadline = time.monotonic() + 60
        while _wait_actor(trainer)["log"]["duplicates"] < 1_000:
            assert time.monotonic() < deadline, _wait_actor(trainer)["log"]
            time.sleep(1)
        m = _wait_actor(trainer)
        assert m["consumed"] == len(produced) and m["digest"] == ids_digest(produced)
        assert m["error"] is None and m["skipped"] == 0
        assert m["published"] >= 1 or ray.get(store.latest.remote())["version"] >= 2  # and it trained on
    finally:
        sink.close()
        group.stop()
        ray.get(trainer.stop.remote())
        for a in (trainer, store, stream.profiles):
            ray.kill(a)


def test_replicas_long_poll_the_store_and_a_publish_or_canary_wakes_them(ray_session, tmp_path):
    """PolicyStore.serving_change: answered at once for a follower that holds nothing, held while
    nothing changes (the store answering other calls meanwhile), and every waiter woken by a
    publish, a canary and an experiment, each with the state that woke it."""
    from actors.policy_store import PolicyStore
    from rl.manifest import serving_key
    from rl.policies import expected_shapes
    from rl.weights import pack

    spec = PolicySpec("linucb", m=2, num_candidates=4, slate_size=2, num_rows=5, text_dim=6)
    blob, sha = pack({k: np.ones(v, np.float32) for k, v in expected_shapes(spec).items()})
    man = {"sha256": sha, "spec": spec.to_dict()}
    store = PolicyStore.remote(str(tmp_path / "store"), 5)
    first = ray.get(store.serving_change.remote(None, 30), timeout=30)
    assert first == {"latest": None, "canary": None, "experiment": None}
    waiting = [store.serving_change.remote(serving_key(first), 30) for _ in range(3)]  # three replicas
    assert ray.wait(waiting, timeout=1.0)[0] == []  # nothing changed: they wait
    assert ray.get(store.metrics.remote(), timeout=10)["latest"] is None  # the store answers meanwhile
    ray.get(store.publish.remote(blob, man), timeout=30)
    woken = ray.get(waiting, timeout=10)  # well before their 30 s: the publish woke them
    assert [s["latest"]["version"] for s in woken] == [1, 1, 1]
    waiting = store.serving_change.remote(serving_key(woken[0]), 30)
    ray.get(store.publish_canary.remote(blob, man, 0.2), timeout=30)
    state = ray.get(waiting, timeout=10)
    assert serving_key(state) == [1, 2, 0.2, None, None, None]
    unchanged = ray.get(store.serving_change.remote(serving_key(state), 0.2), timeout=10)
    assert unchanged == state  # past wait_s with nothing new: the same state
    waiting = store.serving_change.remote(serving_key(state), 30)  # an operator's experiment wakes them too
    ray.get(store.start_experiment.remote({"name": "e", "arms": [{"name": "b", "version": 1, "share": 0.1}]}), timeout=30)
    state = ray.get(waiting, timeout=10)
    assert serving_key(state)[:4] == [1, 2, 0.2, "e"] and state["experiment"]["arms"][0]["version"] == 1
    ray.kill(store)
