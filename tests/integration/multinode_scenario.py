"""The loop on a multi-node Ray cluster, in the README's order: the service first, the jobs after.

Run by ``test_multinode.py`` in a process of its own (a pytest process holds the test session's
Ray). It starts an S3-protocol server (moto), the embedded broker and a :class:`cluster.local_cluster.LocalCluster`
(a 0-CPU head; ``cpu`` and ``gpu`` node types from zero, autoscaled by Ray), then:

1. deploys the Serve app before anything else exists and asks ``/healthz`` and ``/v1/recommend``
   why they cannot serve;
2. submits the embedding job through the job server with ``embedding.device: cuda``: the autoscaler
   brings up the ``gpu`` node type for the encoder actor, which finds no CUDA there, falls back to
   the CPU and says so in the job's log; the vectors go to ``s3://``;
3. submits the stream and train jobs; requests and clicks flow until the trainer publishes a
   version beyond the first (PPO, with one remote learner); then eight clients without pause make
   the Ranker (a worker CPU a replica) ask for a third replica, for which the autoscaler adds a
   node, and it goes back to two when they stop; then SIGKILLs every process of the worker nodes of
   the trainer, an ingest actor and a Ranker replica while clients keep calling, and counts failed requests,
   served impressions missing from Kafka, and whether the restarted trainer took every impression
   in Kafka once; then a burst of 200,000 impressions makes the stream job's lag controller add an
   ingest actor;
4. stops the jobs and waits for the idle worker nodes to leave.

It prints one JSON line of what it saw, with the seconds each step took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _moto(tmp: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    import urllib.request

    import boto3

    from cluster.broker import free_port
    from cluster.local_cluster import wait_until

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(tmp / "moto.log", "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).status == 200
        except OSError:
            return False

    wait_until("moto_server", up, 60)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "streamrec", "AWS_SECRET_ACCESS_KEY": "streamrec",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="streamrec",
                 aws_secret_access_key="streamrec").create_bucket(Bucket="streamrec-loop")
    return proc, env


def main() -> int:
    from cluster.broker import start_embedded_broker, stop_broker
    from cluster.local_cluster import NODE_TYPES, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="streamrec-multinode-"))
    moto, s3_env = _moto(tmp)
    os.environ.update(s3_env)
    broker = start_embedded_broker(log_dir=tmp)
    # room for three Ranker replicas of a node each beside the stream and train jobs' actors
    node_types = {**NODE_TYPES, "cpu": {**NODE_TYPES["cpu"], "max_workers": 7}}
    cluster = LocalCluster(tmp / "cluster", env={**s3_env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
                           node_types=node_types)
    try:
        cluster.start()
        print(json.dumps(_scenario(tmp, cluster, broker.bootstrap)), flush=True)
        return 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        raise
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        stop_broker(broker)
        moto.kill()


def _config(tmp: Path, bootstrap: str) -> tuple[Path, dict]:
    import yaml

    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    app = raw["applications"][0]
    store = "s3://streamrec-loop"
    app["args"].update({
        "kafka": {"bootstrap_servers": bootstrap, "partitions": 2},
        "catalog": {"source": "synthetic", "num_items": 150, "num_users": 40},
        "embedding": {"output_dir": f"{store}/embeddings", "num_encoders": 1, "device": "cuda"},
        "ingest": {"reward_window_s": 1.0, "parallelism": 1, "max_parallelism": 2, "scale_up_lag": 2_000,
                   "scale_down_lag": 100, "scale_down_after_s": 5.0, "scale_interval_s": 1.0},
        "profile": {"snapshot_dir": f"{store}/profiles"},
        "policy": {"algorithm": "ppo", "slate_size": 5, "num_candidates": 40},
        "trainer": {"train_every_s": 1.0, "min_samples": 1, "min_holdout": 1, "gate_tolerance": 10.0,
                    "num_learners": 1, "num_epochs": 2,
                    "store_dir": f"{store}/policies", "checkpoint_dir": f"{store}/trainer"},
    })
    for d in app["deployments"]:
        d.pop("autoscaling_config", None)
        if d["name"] == "Ranker":  # a worker node's one CPU each: every replica beyond the nodes' room needs a node
            d["ray_actor_options"] = {"num_cpus": 1}
            d["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 3, "target_ongoing_requests": 1,
                                       "upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 4}
        else:
            d["num_replicas"] = 1
    cfg = tmp / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg, app


def _scenario(tmp: Path, cluster, bootstrap: str) -> dict:
    import httpx
    import ray
    import ray.util.state
    from ray import serve
    from ray.job_submission import JobStatus, JobSubmissionClient

    from actors import registry
    from cluster.broker import ensure_topics, free_port, loop_topics
    from cluster.local_cluster import wait_until
    from cluster.loop import serving_app
    from streamrec.config import settings_from_args

    cfg, app = _config(tmp, bootstrap)
    s = settings_from_args(app["args"], env={})
    ensure_topics(bootstrap, loop_topics(s.kafka))
    out: dict = {"seconds": {}}
    t0 = time.monotonic()
    ray.init(address=cluster.address, namespace=registry.NAMESPACE, log_to_driver=False)
    seen_nodes: dict[str, dict] = {}
    watching = threading.Event()

    def watch_nodes() -> None:  # which node types the autoscaler brought up, and when
        while not watching.is_set():
            for n in cluster.worker_nodes():
                if n["node_id"] not in seen_nodes:
                    seen_nodes[n["node_id"]] = {"gpu": n["resources"].get("GPU", 0) > 0,
                                                "at_s": round(time.monotonic() - t0, 1)}
            time.sleep(1)

    threading.Thread(target=watch_nodes, daemon=True).start()

    # 1. the service first: nothing else exists yet
    http_port = free_port()
    # one proxy, on the head: on one machine every node's proxy would bind the same address
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
    serve.run(serving_app(app["args"], app["deployments"]), name="streamrec", route_prefix="/")
    out["seconds"]["service_up"] = round(time.monotonic() - t0, 1)
    url = f"http://127.0.0.1:{http_port}"
    client = httpx.Client(base_url=url, timeout=30)
    h = client.get("/healthz")
    r = client.post("/v1/recommend", json={"user_id": "u1", "k": 5})
    out["before_embeddings"] = {"healthz": [h.status_code, h.json()], "recommend": [r.status_code, r.json()]}

    # 2. the embedding job through the job server, asking for the GPU node type
    jobs = JobSubmissionClient(cluster.dashboard)
    py = sys.executable

    def submit(module: str, *extra: str) -> str:
        return wait_until(f"submit {module}", lambda: _try_submit(jobs, f"{py} -m {module} --config {cfg} {' '.join(extra)}"),
                          120, every_s=2)

    started = time.monotonic()
    embed = submit("cluster.jobs.embed")
    out["seconds"]["embed_submitted"] = round(time.monotonic() - t0, 1)
    wait_until("embed job", lambda: jobs.get_job_status(embed) in {JobStatus.SUCCEEDED, JobStatus.FAILED}, 420, 2)
    out["embed"] = {"status": str(jobs.get_job_status(embed)), "seconds": round(time.monotonic() - started, 1),
                    "log_says_cpu_fallback": "no usable CUDA device on this GPU node" in jobs.get_job_logs(embed)}
    if jobs.get_job_status(embed) != JobStatus.SUCCEEDED:
        out["embed"]["log"] = jobs.get_job_logs(embed)[-3000:]
        return out
    h = client.get("/healthz")
    wait_until("replica sees the embeddings", lambda: "no policy yet" in client.get("/healthz").text, 60)
    out["before_policy"] = {"healthz": [client.get("/healthz").status_code, client.get("/healthz").json()]}

    # 3. the stream and train jobs; the service becomes ready, traffic flows and the trainer publishes
    started = time.monotonic()
    stream, train = submit("cluster.jobs.stream", "--wait-s 300"), submit("cluster.jobs.train", "--wait-s 300")
    wait_until("service ready", lambda: client.get("/healthz").status_code == 200, 300, 1)
    out["seconds"]["jobs_to_ready"] = round(time.monotonic() - started, 1)
    statuses: Counter = Counter()
    store = registry.lookup(registry.STORE)
    served: list[str] = []  # the event id of every impression served
    deadline = time.monotonic() + 240
    i = 0
    while time.monotonic() < deadline:
        user = f"user{i % 40}"
        i += 1
        r = client.post("/v1/recommend", json={"user_id": user, "k": 5})
        statuses[r.status_code] += 1
        if r.status_code == 200:
            body = r.json()
            served.append(body["event_id"])
            if i % 2 == 0:
                client.post("/v1/feedback", json={"event_id": body["event_id"], "user_id": user,
                                                  "item_id": body["items"][0]["item_id"]})
        if i % 50 == 0 and (ray.get(store.latest.remote()) or {}).get("version", 0) >= 2:
            break
        time.sleep(0.02)
    out["requests"] = {str(k): v for k, v in statuses.items()}
    out["published_version"] = (ray.get(store.latest.remote()) or {}).get("version")
    head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("node:__internal_head__"))
    placed = {}
    for name in (registry.TRAINER, registry.PROFILES, f"{registry.INGEST_PREFIX}-0"):
        actor = registry.lookup(name)
        placed[name] = None if actor is None else ray.util.state.get_actor(actor._actor_id.hex()).node_id != head
    # RLlib starts remote learners through Ray Train's worker group: the actor class is its wrapper
    learners = [a for a in ray.util.state.list_actors(filters=[("state", "=", "ALIVE")])
                if a.class_name.endswith("_WrappedExecutable")]
    placed["learner"] = len(learners) == 1 and learners[0].node_id != head
    out["remote_learners"] = len(learners)
    out["on_worker_nodes"] = placed
    out["seconds"]["loop_trained"] = round(time.monotonic() - started, 1)

    # 3b. the Ranker scales out under load onto a node the autoscaler adds, and back
    out["ranker_scale_out"] = _scale_out(url, served)
    # 3c. the worker nodes of the trainer, an ingest actor and a Ranker replica die under traffic
    out["node_loss"] = _lose_nodes(client, served, bootstrap, s)
    out["lag_spike"] = _lag_spike(bootstrap, s)

    # 4. stop everything that holds a node; the idle nodes leave
    for job in (stream, train):
        jobs.stop_job(job)
    serve.shutdown()
    for name in (registry.TRAINER, registry.PROFILES, registry.STORE):
        actor = registry.lookup(name)
        if actor is not None:
            ray.kill(actor)
    started = time.monotonic()
    try:
        wait_until("idle nodes leave", lambda: not cluster.worker_nodes(), 180, 2)
        out["scaled_down"] = True
    except TimeoutError:
        out["scaled_down"] = False
    out["seconds"]["scale_down"] = round(time.monotonic() - started, 1)
    watching.set()
    out["nodes_seen"] = list(seen_nodes.values())
    out["embeddings_in_object_store"] = s.embedding.output_dir
    return out


RANKER = "ServeReplica:streamrec:Ranker"  # the actor class of the app's Ranker replicas


def _ranker_replicas() -> list:
    import ray.util.state

    return ray.util.state.list_actors(filters=[("state", "=", "ALIVE"), ("class_name", "=", RANKER)])


def _scale_out(url: str, served: list[str]) -> dict:
    """Eight clients calling without pause: the Ranker's autoscaling (one request in flight per
    replica as its target, 2..3 replicas of one CPU each) asks for a third replica, which fits on
    no running worker node, so the autoscaler adds one; once the clients stop, the Ranker goes
    back to two replicas."""
    import httpx
    import ray

    from cluster.local_cluster import wait_until

    nodes_before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    out: dict = {"replicas_before": len(_ranker_replicas())}
    counts: Counter = Counter()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post("/v1/recommend", json={"user_id": f"user{(7 * k + i) % 40}", "k": 5})
                    counts[str(r.status_code)] += 1
                    if r.status_code == 200:
                        served.append(r.json()["event_id"])
                except httpx.HTTPError as e:
                    counts[type(e).__name__] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_until("a third Ranker replica running", lambda: len(_ranker_replicas()) >= 3, 240, 1)
        out["seconds_to_third_replica"] = round(time.monotonic() - started, 1)
        out["on_an_added_node"] = sum(a.node_id not in nodes_before for a in _ranker_replicas())
        time.sleep(3)  # the third replica takes its share
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    out["requests"] = dict(counts)
    stopped = time.monotonic()
    wait_until("back to two Ranker replicas", lambda: len(_ranker_replicas()) == 2, 240, 1)
    out["seconds_to_two_replicas"] = round(time.monotonic() - stopped, 1)
    return out


def _processes_of_node(node_id: str) -> list[int]:
    """The pids of a fake node's processes (the provider starts them with the node id in their environment)."""
    mark = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                continue
    return pids


def _alive_elsewhere(name: str, nodes: set[str]) -> bool:
    """The named actor is alive on a node not in ``nodes``."""
    import ray.util.state

    from actors import registry

    handle = registry.lookup(name)
    a = None if handle is None else ray.util.state.get_actor(handle._actor_id.hex())
    return a is not None and a.state == "ALIVE" and a.node_id not in nodes


def _ids_in_topic(bootstrap: str, topic: str, partitions: int, ids_of) -> set[str]:
    """Every event id in ``topic`` now (``ids_of(value)``: a record's ids)."""
    import uuid

    from streamrec.eventbus import KafkaLogReader

    reader = KafkaLogReader(bootstrap, topic, f"audit-{uuid.uuid4().hex[:8]}")
    try:
        parts = range(partitions)
        reader.assign({p: 0 for p in parts})
        ends, at = reader.high_watermarks(parts), {p: 0 for p in parts}
        ids: set[str] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # to the high watermarks, then until nothing more comes
            got = reader.read(5_000, 1.0)  # (Tansu's is the last batch's base offset + 1)
            for p, offset, value in got:
                at[p] = offset + 1
                ids.update(ids_of(value))
            if not got and all(at[p] >= ends.get(p, 0) for p in parts):
                break
        return ids
    finally:
        reader.close()


def _logged_impressions(bootstrap: str, s) -> set[str]:
    """The event id of every impression in the impressions topic now (what serving wrote to Kafka)."""
    from streamrec.events import decode

    return _ids_in_topic(bootstrap, s.kafka.topics.impressions, s.kafka.partitions,
                         lambda v: [decode(v, expect="impression").event_id])


def _sampled_impressions(bootstrap: str, s) -> set[str]:
    """The event id of every sample ingest wrote to the samples topic (one partition)."""
    from streamrec.events import decode_samples

    return _ids_in_topic(bootstrap, s.kafka.topics.samples, 1, lambda v: [x.event_id for x in decode_samples(v)])


def _lose_nodes(client, served: list[str], bootstrap: str, s) -> dict:
    """SIGKILL every process of the worker nodes of the trainer, of an ingest actor and of a Ranker
    replica (two or three nodes) at once, while three clients keep calling (one retry each, feedback too); then count: requests failed after
    their retry, served impressions missing from Kafka, and whether the trainer's lineage took
    every impression in Kafka once (its consumed count and id digest). An impression in Kafka
    that no client received (its replica died after the broker's ack, before the answer) is
    counted as ``logged_not_served``: trained as a slate nobody clicked."""
    import signal

    import ray
    import ray.util.state

    from actors import registry
    from cluster.local_cluster import wait_until
    from rl.trainer_loop import ids_digest

    def node_of(name: str) -> str:
        return ray.util.state.get_actor(registry.lookup(name)._actor_id.hex()).node_id

    trainer_node, ingest_node = node_of(registry.TRAINER), node_of(f"{registry.INGEST_PREFIX}-0")
    victim = next(a for a in _ranker_replicas() if a.node_id not in (trainer_node, ingest_node))
    victim_id = victim.name.rsplit("#", 1)[-1]
    victims = {trainer_node, ingest_node, victim.node_id}
    alive = ray.util.state.list_actors(filters=[("state", "=", "ALIVE")])
    out: dict = {"nodes_ran": [sorted(a.class_name for a in alive if a.node_id == n) for n in victims]}
    counts: Counter = Counter()
    stop, killed = threading.Event(), threading.Event()

    def call(path: str, body: dict):
        for attempt in (0, 1):
            try:
                r = client.post(path, json=body)
                if r.status_code < 300:
                    return r
                counts[f"{path}_attempt_{attempt}_{r.status_code}"] += 1
            except Exception as e:
                counts[f"{path}_attempt_{attempt}_{type(e).__name__}"] += 1
            time.sleep(0.5)
        counts[f"{path}_failed_after_retry"] += 1
        return None

    def traffic(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            user = f"user{(7 * k + i) % 40}"
            r = call("/v1/recommend", {"user_id": user, "k": 5})
            if r is not None:
                counts["served"] += 1
                if r.headers.get("X-Streamrec-Replica") == victim_id:
                    counts["victim_answered_after_kill" if killed.is_set() else "victim_answered"] += 1
                body = r.json()
                served.append(body["event_id"])
                if i % 2 == 0:
                    call("/v1/feedback", {"event_id": body["event_id"], "user_id": user,
                                          "item_id": body["items"][0]["item_id"]})
            time.sleep(0.05)

    def metrics() -> dict | None:
        try:
            return ray.get(registry.lookup(registry.TRAINER).metrics.remote(), timeout=10)
        except Exception:
            return None

    threads = [threading.Thread(target=traffic, args=(k,), daemon=True) for k in range(3)]
    for th in threads:
        th.start()
    time.sleep(3)
    pids = [pid for n in victims for pid in _processes_of_node(n)]
    out["processes_killed"] = len(pids)
    lost_at = time.monotonic()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed.set()
    before = (metrics() or {}).get("consumed", 0)

    def nodes_dead() -> bool:
        return all(any(n["NodeID"] == v and not n["Alive"] for n in ray.nodes()) for v in victims)

    def trainer_elsewhere() -> bool:
        return _alive_elsewhere(registry.TRAINER, victims) and metrics() is not None

    wait_until("the nodes marked dead", nodes_dead, 240, 0.5)
    out["seconds_to_nodes_marked_dead"] = round(time.monotonic() - lost_at, 1)
    wait_until("the trainer on another node", trainer_elsewhere, 240, 1)
    out["seconds_to_trainer_back"] = round(time.monotonic() - lost_at, 1)
    wait_until("training again", lambda: (metrics() or {}).get("consumed", 0) > before, 240, 1)
    out["seconds_to_training_again"] = round(time.monotonic() - lost_at, 1)
    wait_until("the ingest actor on another node", lambda: _alive_elsewhere(f"{registry.INGEST_PREFIX}-0", victims), 240, 1)
    out["seconds_to_ingest_back"] = round(time.monotonic() - lost_at, 1)
    wait_until("two Ranker replicas again", lambda: len(_ranker_replicas()) >= 2, 240, 1)
    out["seconds_to_ranker_replaced"] = round(time.monotonic() - lost_at, 1)
    time.sleep(5)
    stop.set()
    for th in threads:
        th.join(60)
    logged = _logged_impressions(bootstrap, s)
    try:
        wait_until("every logged impression taken", lambda: (metrics() or {}).get("consumed", 0) >= len(logged), 120, 2)
    except TimeoutError:
        pass
    m = metrics() or {}
    if m.get("consumed") != len(logged):  # where the difference is: ingest's output or the trainer's intake
        out["not_in_samples_topic"] = sorted(logged - _sampled_impressions(bootstrap, s))[:10]
        out["trainer_log"] = m.get("log")
        out["trainer"] = {k: m.get(k) for k in ("rounds", "samples", "skipped", "in_round_s", "error", "last")}
        out["ingest"] = []
        for i in range(4):
            a = registry.lookup(f"{registry.INGEST_PREFIX}-{i}")
            if a is not None:
                try:
                    got = ray.get(a.metrics.remote(), timeout=10)
                    out["ingest"].append({k: got.get(k) for k in ("name", "records", "impressions", "samples", "pending",
                                                                  "duplicates", "rebalances", "commits", "lag", "behind",
                                                                  "watermark_lag_s", "error")})
                except Exception as e:
                    out["ingest"].append(repr(e))
    out.update(requests=dict(counts), impressions_served=len(served), distinct=len(set(served)),
               logged=len(logged), served_not_logged=len(set(served) - logged),
               logged_not_served=len(logged - set(served)),
               consumed=m.get("consumed"), digest_matches=m.get("digest") == ids_digest(logged))
    return out


def _lag_spike(bootstrap: str, s) -> dict:
    """200,000 impressions as fast as one producer writes them: the stream job's lag controller
    (``ingest.max_parallelism: 2``) adds an ingest actor; seconds from the first of them until an
    actor that was not there before has consumed records."""
    import ray
    from kafka import KafkaProducer

    from actors import registry
    from cluster.local_cluster import wait_until
    from streamrec.events import Impression, encode

    def ingest_actors() -> dict[int, object]:
        return {i: a for i in range(32) if (a := registry.lookup(f"{registry.INGEST_PREFIX}-{i}")) is not None}

    before = set(ingest_actors())

    def produce() -> None:
        p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
        now = time.time()
        for i in range(200_000):
            imp = Impression(event_id=f"spike-{i}", ts=now, user_id=f"user{i % 40}", items=("x1", "x2", "x3"),
                             propensities=(0.5, 0.5, 0.5), policy_version=1)
            p.send(s.kafka.topics.impressions, key=imp.user_id.encode(), value=encode(imp))
        p.flush(120)
        p.close()
        out["seconds_to_write_the_spike"] = round(time.monotonic() - spiked, 1)

    out: dict = {"impressions": 200_000, "ingest_actors_before": len(before)}
    th = threading.Thread(target=produce, daemon=True)
    spiked = time.monotonic()
    th.start()

    def added_consuming() -> bool:
        for i, a in ingest_actors().items():
            if i not in before:
                try:
                    if ray.get(a.metrics.remote(), timeout=10)["records"] > 0:
                        return True
                except Exception:
                    continue
        return False

    try:
        wait_until("an added ingest actor consuming", added_consuming, 240, 0.5)
        out["seconds_to_added_actor_consuming"] = round(time.monotonic() - spiked, 1)
    except TimeoutError as e:
        out["error"] = str(e)
    th.join(180)
    return out


def _try_submit(jobs, entrypoint: str) -> str | None:
    try:
        return jobs.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    except RuntimeError as e:  # the job agent registers a little after the head starts
        if "No available agent" in str(e):
            return None
        raise


if __name__ == "__main__":
    sys.exit(main())
