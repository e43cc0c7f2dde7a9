"""The click stream over a real broker: exactly-once samples through crashes and rescaling, DLQ."""

from __future__ import annotations

import json
import time

import pytest
import ray
from kafka import KafkaConsumer

from actors.ingest import IngestGroup
from actors.profile_store import ProfileStore
from serve.profile_mirror import ProfileMirror
from streamrec.events import encode
from tests.integration.stream_helpers import (create_topics, drain, make_events, produce, samples_reader,
                                              stream_settings)

pytestmark = pytest.mark.integration


def _stream(broker, window_s: float, partitions: int = 3):
    """Fresh topics, a reader of the samples log (as the trainer's) and an (empty) ingest group on them."""
    s = stream_settings(window_s=window_s, partitions=partitions)
    create_topics(broker.bootstrap, s)
    return s, samples_reader(broker.bootstrap, s), _group(broker, s)


def _group(broker, s, profile_store=None):
    return IngestGroup(bootstrap=broker.bootstrap, kafka_settings=s.kafka, ingest_settings=s.ingest,
                       profile_store=profile_store, name_prefix=f"ing-{s.ingest.group_id}")


def test_10k_events_with_a_killed_ingest_actor_give_each_sample_exactly_once(broker, ray_session):
    s, reader, group = _stream(broker, window_s=2.0)
    group.scale(2)
    try:
        imps, fbs = make_events(10_000)
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[:5_000])
        produce(broker.bootstrap, s.kafka.topics.feedback, [f for f in fbs if int(f.event_id[1:]) < 5_000])
        time.sleep(4)
        ray.kill(group.actors[0], no_restart=False)  # crash mid-stream; Ray restarts it
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[5_000:])
        produce(broker.bootstrap, s.kafka.topics.feedback, [f for f in fbs if int(f.event_id[1:]) >= 5_000])
        got = drain(reader, 10_000, timeout_s=180)
        time.sleep(3)  # anything extra would show up now
        got += reader.take(50_000)
        ids = [x.event_id for x in got]
        assert len(ids) == 10_000 and set(ids) == {i.event_id for i in imps}  # none lost, none twice
        clicked = {f.event_id for f in fbs}
        for x in got:
            assert x.rewards == ((0.0, 1.0, 0.0, 0.0, 0.0) if x.event_id in clicked else (0.0,) * 5)
        assert reader.metrics()["taken"] == 10_000
    finally:
        group.stop()


def test_poison_events_go_to_the_dlq_with_their_reason_and_the_stream_goes_on(broker, ray_session):
    s, reader, group = _stream(broker, window_s=1.0)
    group.scale(1)
    imps, _ = make_events(20)
    base = json.loads(encode(imps[0]))
    poison = {
        "not JSON": b"{oops",
        "missing field 'user_id'": json.dumps({k: v for k, v in base.items() if k != "user_id"}).encode(),
        "field 'ts' must be a number, got str": json.dumps({**base, "ts": "yesterday"}).encode(),
        "unknown schema 'streamrec.impression.v7'": json.dumps({**base, "schema": "streamrec.impression.v7"}).encode(),
        "bytes exceeds the": b"{" + b" " * 2_000_000 + b"}",
    }
    fb_poison = b'{"schema":"streamrec.feedback.v1","event_id":"e1","ts":1,"user_id":"u1","item_id":"i1","value":NaN}'
    try:
        records = []
        for i, imp in enumerate(imps):
            records.append((imp.user_id.encode(), encode(imp)))
            if i < len(poison):
                records.append((b"u-bad", list(poison.values())[i]))
        produce(broker.bootstrap, s.kafka.topics.impressions, records, raw=True)
        produce(broker.bootstrap, s.kafka.topics.feedback, [(b"u1", fb_poison)], raw=True)
        got = drain(reader, 20, timeout_s=60)
        assert sorted(x.event_id for x in got) == sorted(i.event_id for i in imps)
        c = KafkaConsumer(s.kafka.topics.dlq, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                          consumer_timeout_ms=5_000, max_partition_fetch_bytes=4_000_000, fetch_max_bytes=8_000_000)
        dead = list(c)
        c.close()
        reasons = [dict(r.headers)["streamrec.error"].decode() for r in dead]
        assert len(dead) == len(poison) + 1
        for expected in poison:
            assert any(expected in r for r in reasons), (expected, reasons)
        assert any("field 'value' must be finite" in r for r in reasons)
        nan_letter = next(r for r in dead if b"NaN" in r.value)
        h = dict(nan_letter.headers)
        assert h["streamrec.source_topic"].decode() == s.kafka.topics.feedback
        assert h["streamrec.source_partition"] is not None and h["streamrec.source_offset"] == b"0"
        assert nan_letter.value == fb_poison  # the original bytes
        assert sum(m["dlq"] for m in group.metrics()) == len(poison) + 1
    finally:
        group.stop()


def test_scaling_ingest_1_3_1_mid_stream_loses_nothing(broker, ray_session):
    s, reader, group = _stream(broker, window_s=1.0)
    imps, fbs = make_events(3_000, prefix="s")
    try:
        group.scale(1)
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[:1_000])
        time.sleep(2)
        group.scale(3)
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[1_000:2_000])
        time.sleep(2)
        group.scale(1)
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[2_000:])
        got = drain(reader, 3_000, timeout_s=180)
        time.sleep(2)
        got += reader.take(50_000)
        ids = [x.event_id for x in got]
        assert len(ids) == 3_000 and set(ids) == {i.event_id for i in imps}
    finally:
        group.stop()


def test_feedback_after_the_window_is_counted_not_trained(broker, ray_session):
    s, reader, group = _stream(broker, window_s=1.0)
    group.scale(1)
    imps, fbs = make_events(10, click_every=1, prefix="late")
    try:
        produce(broker.bootstrap, s.kafka.topics.impressions, imps)
        got = drain(reader, 10, timeout_s=60)
        assert all(x.rewards == (0.0,) * 5 for x in got)
        produce(broker.bootstrap, s.kafka.topics.feedback, fbs)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(m["late"] for m in group.metrics()) < 10:
            time.sleep(0.5)
        assert sum(m["late"] for m in group.metrics()) == 10
        assert reader.take(50_000) == []
    finally:
        group.stop()


def test_events_written_by_an_independent_client_are_consumed(broker, ray_session, independent_client):
    s, reader, group = _stream(broker, window_s=1.0, partitions=1)
    group.scale(1)
    imps, fbs = make_events(5, click_every=1, prefix="k")
    try:
        from msgspec.structs import asdict
        independent_client.write(s.kafka.topics.impressions, [(i.user_id, asdict(i)) for i in imps])
        independent_client.write(s.kafka.topics.feedback, [(f.user_id, asdict(f)) for f in fbs])
        got = drain(reader, 5, timeout_s=60)
        assert sorted(x.event_id for x in got) == sorted(i.event_id for i in imps)
        assert all(x.rewards[1] == 1.0 for x in got)
    finally:
        group.stop()


def test_profile_store_is_fed_live_and_survives_restart(broker, ray_session, tmp_path):
    import numpy as np

    s = stream_settings(window_s=1.0)
    create_topics(broker.bootstrap, s)
    reader = samples_reader(broker.bootstrap, s)
    store = ProfileStore.remote(history_length=3, snapshot_dir=str(tmp_path), snapshot_every_s=3600)
    ids = [f"i{k}" for k in range(97)]
    vecs = np.eye(97, dtype=np.float32)
    ray.get(store.set_item_vectors.remote(ids, vecs))
    group = _group(broker, s, profile_store=store)
    group.scale(1)
    imps, fbs = make_events(30, click_every=1, users=2, prefix="p")
    try:
        produce(broker.bootstrap, s.kafka.topics.impressions, imps)
        produce(broker.bootstrap, s.kafka.topics.feedback, fbs)
        drain(reader, 30, timeout_s=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and ray.get(store.metrics.remote())["events"] < 30:
            time.sleep(0.3)
        hist = ray.get(store.histories.remote(["u0", "u1", "nobody"]))
        assert [len(h) for h in hist] == [3, 3, 0]  # bounded history
        prof = ray.get(store.profiles.remote(["u0", "nobody"]))
        assert prof.shape == (2, 97) and np.isclose(np.linalg.norm(prof[0]), 1.0) and not prof[1].any()
        mirror = ProfileMirror(lambda e, seq, n: ray.get(store.changes_since.remote(e, seq, n)), capacity=100)
        assert mirror.sync() == 2 and np.allclose(mirror.get("u0"), prof[0]) and mirror.get("nobody") is None
        assert mirror.sync() == 0  # nothing changed since
        ray.get(store.snapshot.remote())
        ray.kill(store, no_restart=False)
        deadline = time.monotonic() + 30
        epoch = mirror.epoch
        while True:  # ray.kill is asynchronous: the old actor may still answer once or twice
            try:
                synced = mirror.sync()
                if mirror.epoch != epoch:
                    restored = ray.get(store.histories.remote(["u0"]), timeout=10)
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                pass
            assert time.monotonic() < deadline, "the ProfileStore did not come back with a new epoch"
            time.sleep(0.5)
        assert restored == hist[:1]
        assert synced == 2  # a restarted store: mirrored again from scratch
        assert np.allclose(mirror.get("u0"), prof[0], atol=1e-5)
    finally:
        group.stop()


def test_the_samples_log_keeps_what_no_trainer_has_read_and_a_reader_resumes_at_its_position(broker, ray_session):
    """Ingest never waits for the trainer: it commits with no reader running. A reader then reads
    every sample once, and another opened at the first one's position reads only what came after."""
    s = stream_settings(window_s=0.5)
    create_topics(broker.bootstrap, s)
    group = _group(broker, s)
    group.scale(1)
    imps, _ = make_events(1_500, prefix="log")
    try:
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[:1_000])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(m["samples"] for m in group.metrics()) < 1_000:
            time.sleep(0.3)
        first = samples_reader(broker.bootstrap, s)
        got = drain(first, 1_000, timeout_s=60)
        assert sorted(x.event_id for x in got) == sorted(i.event_id for i in imps[:1_000])
        at = first.position()
        produce(broker.bootstrap, s.kafka.topics.impressions, imps[1_000:])
        resumed = samples_reader(broker.bootstrap, s)
        resumed.seek(at)
        rest = drain(resumed, 500, timeout_s=60)
        assert sorted(x.event_id for x in rest) == sorted(i.event_id for i in imps[1_000:])
        m = group.metrics()[0]
        assert m["commits"] > 0 and m["alive"] and m["error"] is None
    finally:
        group.stop()


def test_replay_from_the_start_rebuilds_every_sample(broker, ray_session):
    from streamrec.eventbus import reset_group_offsets

    s = stream_settings(window_s=0.5)
    create_topics(broker.bootstrap, s)
    imps, fbs = make_events(200, prefix="r")
    produce(broker.bootstrap, s.kafka.topics.impressions, imps)
    produce(broker.bootstrap, s.kafka.topics.feedback, fbs)
    group = _group(broker, s)
    group.scale(1)
    first = samples_reader(broker.bootstrap, s)
    try:
        a = drain(first, 200, timeout_s=60)
    finally:
        group.stop()
    t = s.kafka.topics
    target = reset_group_offsets(broker.bootstrap, s.ingest.group_id, [t.impressions, t.feedback], to_earliest=True)
    assert set(target.values()) == {0}
    group = _group(broker, s)
    group.scale(1)
    try:  # the replay writes the samples to the log again: a reader past the first copies reads them
        second = samples_reader(broker.bootstrap, s)
        second.seek(first.position())
        b = drain(second, 200, timeout_s=60)
    finally:
        group.stop()
    assert sorted((x.event_id, x.rewards) for x in a) == sorted((x.event_id, x.rewards) for x in b)


def test_a_backlog_grows_the_ingest_group_then_the_drained_group_shrinks_losing_nothing(broker, ray_session):
    """60,000 impressions wait before ingest starts with one actor: the lag controller reads the
    group's lag, grows it to the partition count, and once the lag has drained, shrinks it one
    actor per quiet period back to one. Every impression becomes exactly one sample."""
    from actors.ingest_scaling import LagController
    from streamrec.config import settings_from_args

    base = stream_settings(window_s=0.5, partitions=3)
    s = settings_from_args({**base.model_dump(mode="json", exclude={"auth"}), "ingest": {
        **base.ingest.model_dump(), "max_parallelism": 4, "scale_up_lag": 5_000, "scale_down_lag": 200,
        "scale_down_after_s": 3.0, "scale_interval_s": 1.0}}, env={})
    create_topics(broker.bootstrap, s)
    imps, _ = make_events(60_000, prefix="lag")
    produce(broker.bootstrap, s.kafka.topics.impressions, imps)
    reader = samples_reader(broker.bootstrap, s)
    group = _group(broker, s)
    group.scale(1)
    controller = LagController.for_group(group, broker.bootstrap, s.kafka, s.ingest)
    assert controller.policy.max_actors == 3  # max_parallelism 4, but only 3 partitions
    group.controller = controller.start()
    try:
        got = drain(reader, 60_000, timeout_s=240)
        deadline = time.monotonic() + 120
        while controller.history[-1]["target"] > 1 and time.monotonic() < deadline:
            time.sleep(1)
        moves = [(h["actors"], h["target"]) for h in controller.history]
        assert moves[0] == (1, 3) and controller.history[0]["lag"] > 10_000, controller.history
        assert moves[1:] == [(3, 2), (2, 1)], controller.history  # one actor per quiet period
        assert controller.last["lag"] < 200
        time.sleep(2)
        got += reader.take(100_000)
        ids = [x.event_id for x in got]
        assert len(ids) == 60_000 and set(ids) == {i.event_id for i in imps}  # none lost, none twice
    finally:
        group.stop()
