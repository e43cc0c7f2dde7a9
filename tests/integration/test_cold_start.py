"""Live cold start on a running stack: items added to the catalog and embedded are served without a
restart and without a failed request, and the trainer grows its tables for them."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx
import numpy as np
import pytest
import ray

from cluster.broker import ensure_topics, free_port, loop_topics
from cluster.stack import wait_http
from streamrec.config import settings_from_args
from streamrec.vectors import load_catalog

pytestmark = pytest.mark.integration


def test_items_added_to_a_running_stack_are_served_without_a_restart_or_a_failed_request(broker, ray_session, tmp_path):
    """200 synthetic items embedded by the real job; the whole loop up (ingest, trainer, two Ranker
    replicas) with simulated users calling it. Then 20 items join the catalog and the incremental
    job embeds them (and only them): every replica puts them in slates, a request naming them as
    candidates ranks them by their vectors, the trainer grows its tables to 221 rows and publishes a
    version the replicas serve. No request fails at any point."""
    from ray import serve

    from cluster.jobs.embed import run_embedding_job
    from cluster.loop import serving_app, start_learning, start_stream
    from cluster.simulate import synthetic_users_for
    from tests.integration.test_serving import _deployments

    tag = uuid.uuid4().hex[:6]
    args = {
        "kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 2,
                  "topics": {"impressions": f"c.imp.{tag}", "feedback": f"c.fb.{tag}", "dlq": f"c.dlq.{tag}",
                             "samples": f"c.samples.{tag}"}},
        "ingest": {"group_id": f"c-{tag}", "reward_window_s": 1.0, "parallelism": 1},
        "profile": {"snapshot_dir": str(tmp_path / "profiles")},
        "embedding": {"output_dir": str(tmp_path / "embeddings")},
        "encoder": {"device": "cpu"},
        "catalog": {"num_items": 200, "num_users": 60},
        "policy": {"algorithm": "ppo", "slate_size": 5, "num_candidates": 40},
        "trainer": {"train_every_s": 1.0, "min_samples": 100, "min_holdout": 1, "store_dir": str(tmp_path / "store"),
                    "group_id": f"c-trainer-{tag}", "checkpoint_dir": str(tmp_path / "ckpt"), "gate_tolerance": 10.0},
        "serve": {"catalog_poll_s": 1.0},
    }
    s = settings_from_args(args, env={})
    run_embedding_job(s, num_encoders=1)
    first = load_catalog(s.embedding.output_dir)
    ensure_topics(broker.bootstrap, loop_topics(s.kafka))
    stream = start_stream(s, broker.bootstrap, first.ids, first.vectors)
    learning = start_learning(s, broker.bootstrap)  # the trainer follows the embedding output itself
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serving_app(args, _deployments(2)), name="streamrec", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", timeout_s=120)

    sim = synthetic_users_for(settings_from_args({"catalog": {"num_items": 220, "num_users": 60}}, env={}))
    new_items = {f"item{i}" for i in range(200, 220)}
    statuses: Counter = Counter()
    seen_new: dict[str, int] = Counter()  # replica -> slates holding a new item
    versions: list[int] = []
    stop = threading.Event()

    def users() -> None:
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                u, uid, ctx = sim.sample_user(rng)
                r = c.post("/v1/recommend", json={"user_id": uid, "context": ctx, "k": 5})
                statuses[r.status_code] += 1
                if r.status_code != 200:
                    continue
                b = r.json()
                items = [i["item_id"] for i in b["items"]]
                versions.append(int(b["policy_version"]))
                if new_items & set(items):
                    seen_new[r.headers["X-Streamrec-Replica"]] += 1
                for item, clicked in zip(items, sim.clicks(u, items, ctx, rng)):
                    if clicked:
                        f = c.post("/v1/feedback", json={"event_id": b["event_id"], "user_id": uid, "item_id": item})
                        statuses[f.status_code] += 1

    thread = threading.Thread(target=users, daemon=True)
    thread.start()
    try:
        time.sleep(10)
        assert not seen_new and statuses[200] > 0
        grown = settings_from_args({**args, "catalog": {"num_items": 220, "num_users": 60}}, env={})
        m = run_embedding_job(grown, num_encoders=1)  # while the users keep calling
        assert m["outputs"]["items"]["embedded"] == 20 and m["outputs"]["items"]["kept"] == 200
        catalog = load_catalog(s.embedding.output_dir)
        assert catalog.num_rows == 221 and {i for i, r in zip(catalog.ids, catalog.rows) if r > 200} == new_items

        deadline = time.monotonic() + 60  # both Ranker replicas put new items in their slates
        while len(seen_new) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(seen_new) == 2, seen_new
        with httpx.Client(base_url=url, timeout=30) as c:  # named as candidates: ranked by their text vectors
            r = c.post("/v1/recommend", json={"user_id": "user1", "k": 3, "candidates": sorted(new_items)[:6]})
            assert r.status_code == 200 and {i["item_id"] for i in r.json()["items"]} <= new_items, r.text
            assert len({i["score"] for i in r.json()["items"]}) == 3  # distinct scores: not the zero vector

        trainer = learning.trainer
        deadline = time.monotonic() + 120  # the trainer grows its tables and publishes for them
        while time.monotonic() < deadline:
            latest = ray.get(learning.store.latest.remote())
            if latest["spec"]["num_rows"] == 221 and versions and versions[-1] >= latest["version"]:
                break
            time.sleep(1)
        tm = ray.get(trainer.metrics.remote())
        assert latest["spec"]["num_rows"] == 221 and versions[-1] >= latest["version"], (latest, tm)
        assert tm["catalog"] == catalog.version and tm["item_rows"] == 220 and tm["catalog_error"] is None
    finally:
        stop.set()
        thread.join(60)
        serve.shutdown()
        stream.ingest.stop()
        ray.get(learning.trainer.stop.remote())
        for a in (learning.trainer, learning.store, stream.profiles):
            ray.kill(a)
    assert set(statuses) <= {200, 202} and statuses[200] > 100, statuses
