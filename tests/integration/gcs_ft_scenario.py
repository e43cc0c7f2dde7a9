"""GCS fault tolerance with the loop running: a Ray head backed by Redis, its GCS killed and restarted.

Run by ``test_gcs_fault_tolerance.py`` in a process of its own (a pytest process holds the test
session's Ray). It starts Redis and a Ray head (``ray start --head``, ``RAY_REDIS_ADDRESS``, token
auth, loopback), builds the loop with :mod:`cluster.loop` (broker, ingest, profiles, buffer,
store, trainer, the Serve app), sends requests and clicks throughout, kills the GCS process,
restarts it with the same command line a few seconds later, and prints one JSON line:
requests by phase and status, impressions served and ingested, and which named actors answered
after the restart.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from cluster.local_cluster import stop_ray_processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-gcs-ft-"))
    token = tmp / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    redis_port, gcs_port, http_port, agent_port = _free_port(), _free_port(), _free_port(), _free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    env = {"RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}", "RAY_external_storage_namespace": tmp.name,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    spawned: list[subprocess.Popen] = []  # the restarted GCS
    ray_dir = tmp / "ray"  # this head's processes name it on their command lines: what to stop, and only that
    try:
        time.sleep(1)
        # its own agent port and temp dir: another Ray (the test session's) may run beside it
        subprocess.run([ray_bin, "start", "--head", f"--port={gcs_port}", "--num-cpus=4", "--include-dashboard=false",
                        f"--dashboard-agent-listen-port={agent_port}", f"--temp-dir={ray_dir}"],
                       check=True, capture_output=True, timeout=120)
        return _scenario(tmp, gcs_port, http_port, spawned)
    finally:
        for p in spawned:
            p.kill()
        stop_ray_processes(ray_dir)  # not `ray stop`: it stops every Ray on the machine
        redis.kill()


def _scenario(tmp: Path, gcs_port: int, http_port: int, spawned: list) -> int:
    import httpx
    import numpy as np
    import psutil
    import ray
    from ray import serve

    from actors import registry
    from cluster.broker import ensure_topics, loop_topics, start_embedded_broker, stop_broker
    from cluster.loop import serving_app, start_learning, start_stream
    from streamrec.config import settings_from_args
    from streamrec.vectors import write_vectors

    broker = start_embedded_broker(log_dir=tmp)
    try:
        rng = np.random.default_rng(0)
        ids = np.array([f"item{i}" for i in range(200)])
        vecs = rng.normal(size=(200, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        write_vectors(tmp / "emb", {"items": (ids, vecs, "item_id")}, "random-unit-vectors")
        args = {"kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 2},
                "embedding": {"output_dir": str(tmp / "emb")}, "catalog": {"num_items": 200},
                "ingest": {"reward_window_s": 1.0, "parallelism": 1},
                "profile": {"snapshot_dir": str(tmp / "profiles")},
                "policy": {"algorithm": "linucb", "slate_size": 5, "num_candidates": 40},
                "trainer": {"train_every_s": 1.0, "min_samples": 50, "min_holdout": 1,
                            "store_dir": str(tmp / "store"), "checkpoint_dir": str(tmp / "ckpt")}}
        s = settings_from_args(args, env={})
        ensure_topics(broker.bootstrap, loop_topics(s.kafka))
        ray.init(address=f"127.0.0.1:{gcs_port}", namespace=registry.NAMESPACE, log_to_driver=False)
        stream = start_stream(s, broker.bootstrap, ids.tolist(), vecs, detached=True)
        start_learning(s, broker.bootstrap, ids.tolist(), vecs, detached=True)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(serving_app(args, [{"name": "Ranker", "num_replicas": 1}, {"name": "ContextEncoder", "num_replicas": 1}]),
                  name="streamrec", route_prefix="/")

        phase = ["before"]
        statuses: dict[str, Counter] = {"before": Counter(), "outage": Counter(), "after": Counter()}
        served = [0]
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=15) as c:
                while not stop.is_set():
                    user = f"user{rng.integers(20)}"
                    try:
                        r = c.post("/v1/recommend", json={"user_id": user, "k": 5})
                        statuses[phase[0]][r.status_code] += 1
                        if r.status_code == 200:
                            served[0] += 1
                            body = r.json()
                            c.post("/v1/feedback", json={"event_id": body["event_id"], "user_id": user,
                                                         "item_id": body["items"][0]["item_id"]})
                    except httpx.HTTPError as e:
                        statuses[phase[0]][type(e).__name__] += 1
                    time.sleep(0.05)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(10)
        gcs = next(p for p in psutil.process_iter(["name", "cmdline"])
                   if p.info["name"] == "gcs_server" and f"--gcs_server_port={gcs_port}" in (p.info["cmdline"] or []))
        command = gcs.cmdline()
        phase[0] = "outage"
        down_at = time.monotonic()
        gcs.kill()
        gcs.wait(10)
        time.sleep(5)  # serving on without a GCS
        spawned.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True))
        answered: dict[str, bool] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(answered.get(n) for n in (registry.STORE, registry.PROFILES,
                                                                                  registry.TRAINER)):
            for name, method in ((registry.STORE, "latest"), (registry.PROFILES, "metrics"),
                                 (registry.TRAINER, "metrics")):
                try:
                    ray.get(getattr(registry.lookup(name), method).remote(), timeout=10)
                    answered[name] = True
                except Exception:
                    answered[name] = False
            time.sleep(1)
        recovered_s = time.monotonic() - down_at
        phase[0] = "after"
        time.sleep(10)
        stop.set()
        thread.join(30)
        ingested = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ingested = sum(m["impressions"] for m in stream.ingest.metrics())
            if ingested >= served[0]:
                break
            time.sleep(1)
        trainer = ray.get(registry.lookup(registry.TRAINER).metrics.remote(), timeout=30)
        print(json.dumps({"requests": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()},
                          "impressions_served": served[0], "impressions_ingested": ingested,
                          "named_actors_answered": answered, "gcs_down_to_actors_answering_s": round(recovered_s, 1),
                          "trainer_error": trainer["error"], "trainer_rounds": trainer["rounds"]}), flush=True)
        stream.ingest.stop()
        return 0
    finally:
        stop_broker(broker)


if __name__ == "__main__":
    sys.exit(main())
