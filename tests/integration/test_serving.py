"""Serving over HTTP on the local stack: the loop end to end, hot swaps under load, replica loss, bad requests, auth."""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml

from cluster.broker import ensure_topics, free_port, loop_topics
from cluster.stack import wait_http
from serve.ranking import in_control
from rl.weights import pack, unpack
from streamrec.config import settings_from_args
from streamrec.data.synthetic import synthetic_items, synthetic_users
from streamrec.encoder import TextEncoder
from streamrec.vectors import write_vectors

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789"


def _deployments(ranker_replicas: int = 2) -> list[dict]:
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    deps = copy.deepcopy(raw["applications"][0]["deployments"])
    for d in deps:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = ranker_replicas if d["name"] == "Ranker" else 1
    return deps


@pytest.fixture(scope="module")
def stack(broker, ray_session, tmp_path_factory):
    """Embeddings, topics, ingest, trainer, store and the Serve app with two Ranker replicas."""
    from ray import serve

    from cluster.loop import serving_app, start_learning, start_stream

    tmp = tmp_path_factory.mktemp("serving")
    items, users = synthetic_items(0, 300, 0), synthetic_users(60, 0)
    enc = TextEncoder()
    item_vecs = enc.encode(items.column("text").to_pylist())
    user_vecs = enc.encode(users.column("text").to_pylist())
    emb = tmp / "embeddings"
    write_vectors(emb, {"items": (np.array(items.column("item_id").to_pylist()), item_vecs, "item_id"),
                        "users": (np.array(users.column("user_id").to_pylist()), user_vecs, "user_id")}, enc.model_id)
    tag = uuid.uuid4().hex[:6]
    args = {
        "kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 2,
                  "topics": {"impressions": f"s.imp.{tag}", "feedback": f"s.fb.{tag}", "dlq": f"s.dlq.{tag}",
                             "samples": f"s.samples.{tag}"}},
        "ingest": {"group_id": f"s-{tag}", "reward_window_s": 1.0, "parallelism": 1},
        "profile": {"snapshot_dir": str(tmp / "profiles")},
        "embedding": {"output_dir": str(emb)},
        "catalog": {"num_items": 300, "num_users": 60},
        "policy": {"algorithm": "ppo", "slate_size": 5, "num_candidates": 40},
        "trainer": {"train_every_s": 1.0, "min_samples": 100, "min_holdout": 1, "store_dir": str(tmp / "store"),
                    "group_id": f"s-trainer-{tag}",
                    "checkpoint_dir": str(tmp / "ckpt"), "gate_tolerance": 10.0, "keep_versions": 50},
        "auth": {"api_keys": [KEY]},
    }
    s = settings_from_args(args, env={})
    ensure_topics(broker.bootstrap, loop_topics(s.kafka))
    item_ids = items.column("item_id").to_pylist()
    stream = start_stream(s, broker.bootstrap, item_ids, item_vecs)  # named: the Ranker replicas find them
    profiles, group = stream.profiles, stream.ingest
    learning = start_learning(s, broker.bootstrap, item_ids, item_vecs)
    store, trainer = learning.store, learning.trainer
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serving_app(args, _deployments(2)), name="streamrec", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", timeout_s=120)
    yield {"url": url, "store": store, "trainer": trainer, "settings": s, "args": args,
           "headers": {"Authorization": f"Bearer {KEY}"}, "users": users}
    serve.shutdown()
    group.stop()
    ray.get(trainer.stop.remote())
    for a in (trainer, store, profiles):
        ray.kill(a)


def _recommend(client, user="user1", **kw):
    return client.post("/v1/recommend", json={"user_id": user, "context": {"hour": 20, "age": 30}, "k": 5, **kw})


def test_recommend_feedback_sample_train_and_the_new_version_is_served(stack):
    from cluster.simulate import synthetic_users_for

    sim = synthetic_users_for(settings_from_args({"catalog": {"num_items": 300, "num_users": 60}}, env={}))
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        first = _recommend(c, context={"text": "a scary night in a haunted cabin", "hour": 23})
        assert first.status_code == 200, first.text
        body = first.json()
        assert len(body["items"]) == 5 and body["policy_version"] == 1
        assert [i["position"] for i in body["items"]] == [0, 1, 2, 3, 4]
        assert all(0 < i["propensity"] <= 1 for i in body["items"])
        deadline = time.monotonic() + 180
        version = 1
        while version < 2 and time.monotonic() < deadline:
            for _ in range(40):
                u, uid, ctx = sim.sample_user(rng)
                r = c.post("/v1/recommend", json={"user_id": uid, "context": ctx, "k": 5})
                assert r.status_code == 200, r.text
                b = r.json()
                version = max(version, int(b["policy_version"]))
                items = [i["item_id"] for i in b["items"]]
                for item, clicked in zip(items, sim.clicks(u, items, ctx, rng)):
                    if clicked:
                        assert c.post("/v1/feedback", json={"event_id": b["event_id"], "user_id": uid,
                                                            "item_id": item}).status_code == 202
        assert version >= 2, ray.get(stack["trainer"].metrics.remote())
        m = c.get("/metrics").text
        assert "streamrec_policy_version" in m and 'route="/v1/recommend",status="200"' in m
        # the clicks reached the replicas' profile mirrors (ingest -> ProfileStore -> changes_since)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mirrored = [float(line.split()[-1]) for line in c.get("/metrics").text.splitlines()
                        if line.startswith("streamrec_profiles_mirrored ")]
            if mirrored and mirrored[0] > 0:
                break
            time.sleep(1)
        assert mirrored and mirrored[0] > 0, mirrored
    tm = ray.get(stack["trainer"].metrics.remote())
    assert tm["samples"] > 0 and tm["skipped"] == 0


def test_a_2xx_means_its_event_is_in_kafka_and_a_broker_away_delays_answers_by_the_bound_only(stack):
    from ray import serve

    from cluster.loop import serving_app
    from streamrec.eventbus import KafkaLogReader

    s, b = stack["settings"], stack["args"]["kafka"]["bootstrap_servers"]
    readers = {t: KafkaLogReader(b, t, f"probe-{uuid.uuid4().hex[:6]}") for t in (s.kafka.topics.impressions,
                                                                                   s.kafka.topics.feedback)}

    def logged(topic: str) -> int:  # records in the topic right now (the broker's high watermarks)
        return sum(readers[topic].high_watermarks(range(s.kafka.partitions)).values())

    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        for i in range(10):
            before = logged(s.kafka.topics.impressions)
            r = _recommend(c, user=f"user{i}")
            assert r.status_code == 200 and logged(s.kafka.topics.impressions) == before + 1
            before = logged(s.kafka.topics.feedback)
            fb = c.post("/v1/feedback", json={"event_id": r.json()["event_id"], "user_id": f"user{i}",
                                              "item_id": r.json()["items"][0]["item_id"]})
            assert fb.status_code == 202 and logged(s.kafka.topics.feedback) == before + 1
    for reader in readers.values():
        reader.close()

    # the same app with its broker away (nothing listens there): answered after the bound, counted
    args = copy.deepcopy(stack["args"])
    args["kafka"]["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
    args["serve"] = {"event_ack_timeout_s": 0.5}
    serve.run(serving_app(args, _deployments(1)), name="away", route_prefix="/away")
    try:
        with httpx.Client(base_url=stack["url"] + "/away", headers=stack["headers"], timeout=30) as c:
            deadline = time.monotonic() + 120
            while (h := c.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert h.status_code == 200, h.text
            t0 = time.monotonic()
            r = _recommend(c)
            assert r.status_code == 200 and 0.5 <= time.monotonic() - t0 < 5, r.text
            m = c.get("/metrics").text
            assert "streamrec_events_unacked_responses 1" in m and "streamrec_events_buffered 1" in m, m
    finally:
        serve.delete("away")


def _republish(store, version: int, scale: float, *, num_rows: int | None = None) -> dict:
    manifest, blob = ray.get(store.get.remote(version))
    tensors = unpack(blob)
    tensors["item_bias.weight"] = tensors["item_bias.weight"] + scale
    spec = dict(manifest["spec"])
    if num_rows is not None:  # a version built for item rows no catalog has: the store accepts it, replicas wait
        spec["num_rows"] = num_rows
        for k in ("id_embedding.weight", "item_bias.weight"):
            tensors[k] = np.resize(tensors[k], (num_rows, tensors[k].shape[1]))
    new_blob, sha = pack(tensors)
    return ray.get(store.publish.remote(new_blob, {"sha256": sha, "spec": spec, "algorithm": "ppo"}))


def test_twenty_versions_while_requests_flow_zero_failures_never_backwards(stack):
    store = stack["store"]
    failures, seen = [], defaultdict(list)
    stop = threading.Event()

    def client(name: int):
        # per client and replica: a client's next request leaves after its last answer came back,
        # so it is ranked later on that replica (answers of concurrent clients may arrive in any order)
        with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
            while not stop.is_set():
                r = _recommend(c, user=f"user{np.random.randint(60)}")
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                    continue
                seen[(name, r.headers["x-streamrec-replica"])].append(int(r.json()["policy_version"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        base = ray.get(store.latest.remote())["version"]
        published = [_republish(store, base, 0.001 * i)["version"] for i in range(1, 21)]
        for _ in published:
            time.sleep(0.15)
        bad = _republish(store, published[-1], 0.0, num_rows=10_000)  # never served: no replica has those rows
        t0 = time.monotonic()
        last = published[-1]
        while time.monotonic() - t0 < 10 and not all(v and v[-1] >= last for v in seen.values()):
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len({replica for _, replica in seen}) == 2  # both Ranker replicas answered
    for (_, replica), versions in seen.items():
        assert versions == sorted(versions), f"replica {replica} went backwards"
        assert versions[-1] >= last, f"replica {replica} serves {versions[-1]}, not {last}"
        assert bad["version"] not in versions, f"replica {replica} served version {bad['version']} for a catalog it lacks"


def test_killing_a_ranker_replica_under_load_costs_a_retrying_client_nothing(stack):
    failures, ok = [], [0]
    stop = threading.Event()

    def client():
        with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
            while not stop.is_set():
                for attempt in range(6):
                    try:
                        r = _recommend(c, user=f"user{np.random.randint(60)}")
                        if r.status_code == 200:
                            ok[0] += 1
                            break
                        if r.status_code < 500:
                            failures.append(r.text)
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2 * (attempt + 1))
                else:
                    failures.append("gave up after 6 attempts")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if "Ranker" in a["name"] and a["namespace"] == "serve"]
        assert replicas, "no Ranker replica actors found"
        victim = ray.get_actor(replicas[0]["name"], namespace="serve")
        before = ok[0]
        ray.kill(victim, no_restart=True)
        time.sleep(6)
        assert ok[0] > before  # traffic kept flowing through the survivor
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []


def test_overload_answers_503_with_retry_after_never_500(stack):
    """A Ranker with room for one request in flight and one queued, sent 40 at once."""
    import asyncio

    from ray import serve

    from cluster.loop import serving_app

    deps = _deployments(1)
    for d in deps:
        if d["name"] == "Ranker":
            d.update(max_ongoing_requests=1, max_queued_requests=1)
    serve.run(serving_app(stack["args"], deps), name="overload", route_prefix="/overload")

    async def burst():
        async with httpx.AsyncClient(base_url=stack["url"], headers=stack["headers"], timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(c.post("/overload/v1/recommend", json={"user_id": f"user{i}", "k": 5})
                                          for i in range(40)))
    try:
        answers = asyncio.run(burst())
    finally:
        serve.delete("overload")
    codes = sorted({r.status_code for r in answers})
    assert codes == [200, 503], codes  # some served, the rest refused at once; never a 500
    assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 503)


@pytest.mark.parametrize("body, status, message", [
    ({"context": {}}, 422, "body.user_id: Field required"),
    ({"user_id": "u", "k": 101}, 422, "body.k: Input should be less than or equal to 100"),
    ({"user_id": "u", "k": 0}, 422, "body.k: Input should be greater than or equal to 1"),
    ({"user_id": "u", "colour": "red"}, 422, "body.colour: unknown field"),
    ({"user_id": "u", "context": {"mood": "x"}}, 422, "body.context.mood: unknown field"),
    ({"user_id": "u", "context": {"text": "é" * 2100}}, 422, "text must be at most 4096 bytes"),
    ({"user_id": "u", "context": {"hour": 25}}, 422, "body.context.hour: Input should be less than 24"),
    ({"user_id": "u", "candidates": [f"i{i}" for i in range(10_001)]}, 422,
     "body.candidates: List should have at most 10000 items"),
    ({"user_id": "u", "candidates": ["item1"], "exclude": ["item1"]}, 422, "no candidates left to rank"),
    ({"user_id": ""}, 422, "body.user_id: String should have at least 1 character"),
    ({"user_id": "u", "context": {"hour": True}}, 422, "body.context.hour: Input should be a valid number"),
    ({"user_id": "u", "k": "5"}, 422, "body.k: Input should be a valid integer"),
])
def test_bad_recommend_requests(stack, body, status, message):
    r = httpx.post(stack["url"] + "/v1/recommend", json=body, headers=stack["headers"], timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize("body, message", [
    ({"event_id": "e", "item_id": "i"}, "body.user_id: Field required"),
    ({"event_id": "e", "user_id": "u", "item_id": "i", "type": "love"}, "body.type: Input should be"),
    ({"event_id": "e", "user_id": "u", "item_id": "i", "value": "NaN"}, "body.value: Input should be a valid number"),
    ({"event_id": "e", "user_id": "u", "item_id": "i", "value": False}, "body.value: Input should be a valid number"),
])
def test_bad_feedback_requests(stack, body, message):
    r = httpx.post(stack["url"] + "/v1/feedback", json=body, headers=stack["headers"], timeout=30)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_the_http_contract_holds_for_requests_generated_from_the_apps_own_openapi(stack):
    """Valid and invalid bodies drawn from the app's /openapi.json, sent to the running app: no 5xx,
    every status documented for its route, every body matching its documented schema."""
    import jsonschema
    from hypothesis import HealthCheck, given, settings, strategies as st

    from tests.openapi_strategies import invalid, valid

    doc = httpx.get(stack["url"] + "/openapi.json", timeout=30).json()
    seen: dict[str, set[int]] = {}
    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        for path in ("/v1/recommend", "/v1/feedback"):
            op = doc["paths"][path]["post"]
            request = op["requestBody"]["content"]["application/json"]["schema"]
            documented = {int(code): r for code, r in op["responses"].items()}

            @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(body=st.one_of(valid(request, doc), invalid(request, doc)))
            def check(body):
                r = c.post(path, json=body)
                assert r.status_code < 500 and r.status_code in documented, (r.status_code, body, r.text)
                schema = documented[r.status_code]["content"]["application/json"]["schema"]
                jsonschema.validate(r.json(), {**schema, "components": doc["components"]})
                seen.setdefault(path, set()).add(r.status_code)

            check()
            r = c.post(path, content=b'{"user_id": ', headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json() == {"error": "the body is not valid JSON"}
    assert {200, 422} <= seen["/v1/recommend"] and {202, 422} <= seen["/v1/feedback"], seen
    r = httpx.get(stack["url"] + "/v1/nowhere", headers=stack["headers"], timeout=30)
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_body_limit_and_auth_rules(stack):
    url = stack["url"]
    big = b'{"user_id": "u", "candidates": ["' + b"x" * 1_100_000 + b'"]}'
    r = httpx.post(url + "/v1/recommend", content=big, headers={**stack["headers"], "content-type": "application/json"})
    assert r.status_code == 413 and "larger than 1000000 bytes" in r.json()["error"]

    def chunked(body: bytes, size: int = 65_536):  # no Content-Length: the guard counts as it reads
        for i in range(0, len(body), size):
            yield body[i:i + size]

    r = httpx.post(url + "/v1/recommend", content=chunked(big), headers={**stack["headers"], "content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = httpx.post(url + "/v1/recommend", content=chunked(b'{"user_id": "u", "k": 3}'),
                   headers={**stack["headers"], "content-type": "application/json"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert httpx.get(url + "/healthz").status_code == 200  # exempt
    for headers in ({}, {"Authorization": "Bearer wrong-key-0000"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/recommend", json={"user_id": "u"}, headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/metrics").status_code == 401
    # the dashboard: the page and its chart library need no key (no data in them); its data does
    assert httpx.get(url + "/v1/dashboard").status_code == 401
    page = httpx.get(url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(url + "/dashboard/uplot.iife.min.js").status_code == 200
    missing = httpx.get(url + "/dashboard/app.py")
    assert missing.status_code == 404 and missing.json() == {"error": "no dashboard file 'app.py'"}
    data = httpx.get(url + "/v1/dashboard", headers=stack["headers"], timeout=30)
    assert data.status_code == 200 and data.json()["history"], data.text
    bad = httpx.get(url + "/v1/dashboard", params={"since": "-1"}, headers=stack["headers"])
    assert bad.status_code == 422 and bad.json()["error"].startswith("query.since:")
    assert httpx.get(url + "/docs").status_code == 200
    r = httpx.get(url + "/openapi.json")
    assert "/v1/recommend" in r.json()["paths"]


def test_an_operators_experiment_reaches_every_replica_and_is_measured_per_arm(stack):
    """Through the admin routes: bad definitions are refused naming the field, a started experiment
    is served by both replicas (an arm's users get its version, a shadow arm's users the live one
    with the shadow slate logged, an algorithm arm's users the versions the trainer trains for it
    beside its PPO lineage), the trainer reports each arm's figures, and stopping it is recorded in
    the store's history with who did it."""
    from cluster.simulate import synthetic_users_for
    from rl.experiment import Experiment

    sim = synthetic_users_for(settings_from_args({"catalog": {"num_items": 300, "num_users": 60}}, env={}))
    rng = np.random.default_rng(1)
    route = "/v1/admin/experiment"
    definition = {"name": "old-vs-live", "arms": [{"name": "old", "version": 1, "share": 0.4},
                                                  {"name": "sh", "version": 1, "share": 0.3, "shadow": True},
                                                  {"name": "ucb", "algorithm": "linucb", "share": 0.2}]}
    with httpx.Client(base_url=stack["url"], headers={**stack["headers"], "X-Streamrec-Operator": "ops-test"},
                      timeout=30) as c:
        assert httpx.get(stack["url"] + route).status_code == 401  # admin routes take the keys too
        assert c.get(route).json()["experiment"] is None
        bad = c.put(route, json={**definition, "arms": [{"name": "old", "version": 1, "share": 1.5}]})
        assert bad.status_code == 422 and bad.json()["error"].startswith("body.arms.0.share:"), bad.text
        bad = c.put(route, json={**definition, "arms": [{"name": "old", "version": 99_999, "share": 0.4}]})
        assert bad.status_code == 422 and "arms[0].version: policy version 99999 is not in the store" in bad.text
        bad = c.put(route, json={**definition, "arms": [{"name": "control", "version": 1, "share": 0.4}]})
        assert bad.status_code == 422 and "'control' is reserved" in bad.text
        bad = c.put(route, json={**definition, "arms": [{"name": "p", "algorithm": "ppo", "share": 0.4}]})
        assert bad.status_code == 422 and bad.json()["error"].startswith("body.arms.0.algorithm:"), bad.text
        started = c.put(route, json=definition)
        assert started.status_code == 201, started.text
        assert c.put(route, json=definition).status_code == 409
        exp = Experiment.from_dict(started.json()["experiment"])
        users = [f"user{i}" for i in range(60)]
        in_old = [u for u in users if (exp.arm_of(u) or None) and exp.arm_of(u).name == "old"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _recommend(c, user=in_old[0]).json()["policy_version"] != 1:
            time.sleep(0.1)
        time.sleep(1.0)  # both replicas follow the store's long poll
        replicas, figures, ucb_versions = set(), {}, set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for _ in range(60):
                u, uid, ctx = sim.sample_user(rng)
                r = c.post("/v1/recommend", json={"user_id": uid, "context": ctx, "k": 5})
                assert r.status_code == 200, r.text
                b = r.json()
                arm = None if in_control(uid, 0.05, "streamrec-control") else exp.arm_of(uid)
                if arm is not None and arm.name == "ucb":
                    ucb_versions.add(b["policy_version"])
                elif arm is not None and not arm.shadow:
                    assert b["policy_version"] == 1, (uid, b["policy_version"])
                    replicas.add(r.headers["x-streamrec-replica"])
                items = [i["item_id"] for i in b["items"]]
                for item, clicked in zip(items, sim.clicks(u, items, ctx, rng)):
                    if clicked:
                        c.post("/v1/feedback", json={"event_id": b["event_id"], "user_id": uid, "item_id": item})
            figures = c.get(route).json()["figures"] or {}
            trained = ((figures.get("algorithm_arms") or {}).get("ucb") or {}).get("version")
            if ((figures.get("by_arm") or {}).get("old") or {}).get("impressions", 0) >= 20 and (
                    (figures.get("shadow") or {}).get("sh") or {}).get("slates", 0) >= 20 and (
                    ((figures.get("by_arm") or {}).get("ucb") or {}).get("impressions", 0) >= 5) and trained:
                break
        assert len(replicas) == 2  # both replicas served the arm its own version
        old = figures["by_arm"]["old"]
        assert 0 <= old["ctr"] <= 1 and old["low"] <= old["ctr"] <= old["high"] and 0 < old["coverage"] <= 1
        assert figures["by_arm"]["policy"]["impressions"] > 0 and 0 <= figures["shadow"]["sh"]["overlap"] <= 1
        assert figures["shadow"]["sh"]["version"] == 1 and figures["shadow"]["sh"]["estimate"]["estimator"]
        ucb = figures["algorithm_arms"]["ucb"]
        assert ucb["algorithm"] == "linucb" and ucb["samples"] > 0
        assert c.delete(route, params={"reason": "enough"}).status_code == 200
        gone = c.delete(route)
        assert gone.status_code == 404 and gone.json() == {"error": "no experiment is running"}
    history = ray.get(stack["store"].history.remote(5000))
    assert any(h["action"] == "experiment_start" and h["reason"].startswith(
        "old-vs-live by ops-test (API key 1): old=v1 40%, sh=v1 30% shadow, ucb=linucb 20%") for h in history), history[-5:]
    arm_versions = {h["version"] for h in history if h["action"] == "arm_version" and h["reason"] == "old-vs-live/ucb (linucb)"}
    assert ucb_versions & arm_versions, (ucb_versions, arm_versions)  # its users were served the trained arm
    assert any(h["action"] == "experiment_stop" and h["reason"] == "old-vs-live by ops-test (API key 1): enough"
               for h in history)


def test_a_canary_is_served_to_its_share_of_users_beside_the_live_version(stack):
    """Real replicas follow the store's canary slot: a canary at share 0.5 serves about half the
    users, each of them on every request (the response names the version that chose the slate),
    /metrics shows both versions, and once the store ends it every slate is the live version's
    again. Last in the module: it stops the trainer, so no direct publish supersedes the canary
    meanwhile."""
    from rl.experiment import canary_experiment

    ray.get(stack["trainer"].stop.remote())
    time.sleep(1.0)  # a version the trainer published just before stopping reaches both replicas
    store = stack["store"]
    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        live = int(_recommend(c).json()["policy_version"])  # what replicas serve (the store's latest may be refused)
    manifest, blob = ray.get(store.get.remote(live))
    tensors = unpack(blob)
    tensors["item_bias.weight"] = tensors["item_bias.weight"] + 0.01
    new_blob, sha = pack(tensors)
    canary = ray.get(store.publish_canary.remote(new_blob, {"sha256": sha, "spec": manifest["spec"], "algorithm": "ppo"},
                                                 0.5))["version"]
    users = [f"user{i}" for i in range(60) if not in_control(f"user{i}", 0.05, "streamrec-control")]
    arm = canary_experiment(canary, 0.5)
    expected = {u: canary if arm.arm_of(u) is not None else live for u in users}
    assert 10 <= sum(v == canary for v in expected.values()) <= len(users) - 10
    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        first = next(u for u in users if expected[u] == canary)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and int(_recommend(c, user=first).json()["policy_version"]) != canary:
            time.sleep(0.05)
        time.sleep(1.0)  # both replicas follow the store's long poll
        for _ in range(2):  # sticky: the same version on every request of a user, on either replica
            answers = {u: _recommend(c, user=u) for u in users}
            assert all(r.status_code == 200 for r in answers.values())
            assert {u: int(r.json()["policy_version"]) for u, r in answers.items()} == expected
            assert all(0 < i["propensity"] <= 1 for r in answers.values() for i in r.json()["items"])
        m = c.get("/metrics").text
        assert f"streamrec_policy_version {float(live)}" in m and f"streamrec_policy_canary_version {float(canary)}" in m
        ray.get(store.end_canary.remote(canary, "the test is over"))
        time.sleep(1.0)
        after = [int(_recommend(c, user=u).json()["policy_version"]) for u in users[:30]]
        assert set(after) == {live}
        assert "streamrec_policy_canary_version 0.0" in c.get("/metrics").text


def test_the_loops_metrics_reach_rays_prometheus_endpoint(stack):
    """Ranker replicas, the ingest actor and the trainer record through Ray's metrics API; the
    node's metrics agent exports them (what Prometheus scrapes on every node), with the names the
    Grafana dashboard reads and no name the table lacks."""
    from streamrec.telemetry import exported_names

    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    want = {"ray_streamrec_requests_total", "ray_streamrec_request_seconds_bucket", "ray_streamrec_served_version",
            "ray_streamrec_catalog_items", "ray_streamrec_ingest_records_total", "ray_streamrec_ingest_samples_total",
            "ray_streamrec_join_hit_rate", "ray_streamrec_ingest_lag", "ray_streamrec_trainer_rounds_total",
            "ray_streamrec_trainer_samples_total", "ray_streamrec_gate_decisions_total",
            "ray_streamrec_gate_estimate", "ray_streamrec_trainer_serving_version"}
    with httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as c:
        for k in range(150):  # enough samples for a training round of their own (trainer.min_samples 100)
            r = _recommend(c, user=f"user{k % 60}")
            assert r.status_code == 200
            if k % 3 == 0:
                b = r.json()
                assert c.post("/v1/feedback", json={"event_id": b["event_id"], "user_id": f"user{k % 60}",
                                                    "item_id": b["items"][0]["item_id"]}).status_code == 202
    names: set[str] = set()
    deadline = time.monotonic() + 120  # agents export every few seconds
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line.startswith("ray_streamrec")}
        if want <= names:
            break
        time.sleep(3)
    assert want <= names, sorted(want - names)
    assert names <= exported_names(), sorted(names - exported_names())
    served = [line for line in text.splitlines() if line.startswith("ray_streamrec_requests_total")
              and 'route="/v1/recommend"' in line and 'status="200"' in line]
    assert served and sum(float(line.rsplit(" ", 1)[1]) for line in served) >= 150
