"""Serving benchmark: /v1/recommend under rising load on Ray Serve, next to a bare uvicorn process.

    python -m bench.serve [--rates 25,50,100,200] [--seconds 15] [--publishes 20] [--with-simulator 20]

One JSON line. Both sides serve the same catalog (2,000 synthetic items, real MiniLM vectors),
the same published PPO version, the same Replica and TextEncoder code, on this machine in
the same run. Open-loop load at each rate (requests start on schedule whether or not earlier
ones finished; 30% carry context text from a pool of 40 phrases); then a closed loop with 32
concurrent clients for peak throughput, counted after ``--peak-warmup-s`` of it (the autoscaler
starts replicas under that load; their start-up is not the steady state). The Serve side also
reports Ranker replicas over time, each replica's resident memory, and publish -> every replica
serving the version (20 publishes).

It serves ``ray_config.yaml``'s application as shipped (its args with this run's broker, paths
and catalog size; its deployments; its ``serve.mode`` unless ``--serve-mode``) and prints the
effective serve settings. What ``make run`` runs goes on beside the load through both sides'
measurements: ingest, the trainer publishing versions, simulated users at ``--with-simulator``
visits/s (20, make run's; 0 for none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import ray

from bench.loadgen import closed_loop, open_loop
from serve.haproxy_ingress import ingress_env

PHRASES = [f"something {a} about {b}" for a in ("funny", "dark", "gentle", "epic", "true") for b in
           ("space", "love", "crime", "war", "music", "dragons", "sports", "the ocean")]


SERVE_MODES = {
    # Environment read by Serve's controller, proxy and replicas when they start, so it goes into the
    # environment before Ray starts, on top of serve.mode's own (serve.haproxy_ingress.ingress_env).
    # `standard` and `throughput` are serve.mode's. The third adds Serve's throughput-optimised flag
    # (user code on the replica's main loop, gRPC between replicas, GC frozen): ~1.5 ms less CPU a
    # request here, but its replicas never scaled out (Ray 2.60; their load did not reach the
    # autoscaler), so serve.mode does not set it.
    "standard": {},
    "throughput": {},
    "throughput+optimized": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "throughput+main-loop": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
}


def _bodies(n: int, users: int, seed: int, text_share: float = 0.3) -> list[bytes]:
    """``n`` encoded /v1/recommend bodies: random users, hour and age, a context text in ``text_share``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = {"user_id": f"user{rng.integers(users)}", "k": 10,
                "context": {"hour": int(rng.integers(24)), "age": int(rng.integers(15, 70))}}
        if rng.random() < text_share:
            body["context"]["text"] = PHRASES[rng.integers(len(PHRASES))]
        out.append(json.dumps(body).encode())
    return out


def _open_loop(url: str, rate: float, seconds: float, users: int) -> dict:
    return asyncio.run(open_loop(url, "/v1/recommend", _bodies(int(rate * seconds), users, int(rate)), rate))


def _closed_loop(url: str, concurrency: int, seconds: float, users: int, warmup_s: float) -> float:
    return asyncio.run(closed_loop(url, "/v1/recommend", _bodies(4096, users, 7, text_share=0.0), concurrency, seconds,
                                   warmup_s=warmup_s))


def _replicas() -> dict:
    from ray import serve

    out = {}
    for app in serve.status().applications.values():
        for name, d in app.deployments.items():
            out[name] = sum(n for s, n in d.replica_states.items() if "RUNNING" in str(s))
            starting = sum(n for s, n in d.replica_states.items() if "STARTING" in str(s))
            if starting:
                out[f"{name} starting"] = starting
    return out


def _replica_rss() -> dict:
    import psutil
    from ray.util.state import list_actors

    out = {}
    for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000):
        if a.class_name and "ServeReplica" in a.class_name and a.pid:
            try:
                out[a.class_name.split(":")[-1] + f"#{a.pid}"] = round(psutil.Process(a.pid).memory_info().rss / 2**20)
            except psutil.Error:
                pass
    return out


def _process_cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each named group of processes."""
    import psutil

    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def _serve_processes() -> dict[str, list[int]]:
    """Ray and Serve processes by role: proxy, controller, each deployment's replicas, Ray's own."""
    import psutil

    groups: dict[str, list[int]] = {}
    me = psutil.Process()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid == me.pid:
            role = "driver+load generator"
        elif "ProxyActor" in cmd or "haproxy" in cmd:
            role = "proxy"
        elif "ServeController" in cmd:
            role = "controller"
        elif "ServeReplica" in cmd:
            role = cmd.split("ServeReplica:")[-1].split(":")[-1].split()[0].split(".")[0]
        elif "bench.bare_server" in cmd:
            role = "bare"
        elif any(k in cmd for k in ("raylet", "gcs_server", "dashboard", "ray::", "log_monitor", "runtime_env")):
            role = "ray (other)"
        else:
            continue
        groups.setdefault(role, []).append(p.pid)
    return groups


def cpu_per_request(url: str, rate: float, seconds: float, users: int) -> dict:
    """Open loop at ``rate``; CPU milliseconds per request by process role (where serving time goes)."""
    procs = _serve_processes()
    before = _process_cpu(procs)
    r = _open_loop(url, rate, seconds, users)
    after = _process_cpu(procs)
    n = max(1, r["codes"].get("200", 0))
    per = {k: round((after[k] - before[k]) * 1000 / n, 2) for k in after}
    return {"rate": rate, "p50_ms": r["p50_ms"], "cpu_ms_per_request": dict(sorted(per.items(), key=lambda kv: -kv[1])),
            "total_cpu_ms_per_request": round(sum(per.values()), 2)}


def _start_loop(s, bootstrap: str, serve_url: str, item_ids: list, item_vectors, rate: float) -> list:
    """What ``make run`` runs beside serving: the stream (ingest, profiles), the trainer, and
    simulated users calling the Serve app: [simulator, ingest group, trainer]."""
    from cluster.broker import ensure_topics, loop_topics
    from cluster.loop import start_learning, start_stream
    from cluster.simulate import HttpSimulator, synthetic_users_for

    ensure_topics(bootstrap, loop_topics(s.kafka))
    stream = start_stream(s, bootstrap, item_ids, item_vectors)
    learning = start_learning(s, bootstrap, item_ids, item_vectors)
    sim = HttpSimulator(serve_url, synthetic_users_for(s), rate_per_s=rate).start()
    return [sim, stream.ingest, learning.trainer]


def _stop_loop(loop: list) -> None:
    sim, ingest, trainer = loop
    sim.stop()
    ingest.stop()
    ray.get(trainer.stop.remote())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="25,50,100,200")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--peak-warmup-s", type=float, default=15.0,
                    help="closed-loop load before the peak is counted (both sides): the autoscaler's time to answer it")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--cpu-at", type=float, default=25.0,
                    help="also measure CPU ms per request by process at this rate (0: skip)")
    ap.add_argument("--serve-mode", choices=sorted(SERVE_MODES), default=None,
                    help="serve.mode standard or throughput, or one part of throughput (SERVE_MODES); "
                         "default: serve.mode of ray_config.yaml")
    ap.add_argument("--with-simulator", type=float, default=20.0, metavar="RATE",
                    help="run make run's loop beside the load: ingest, the trainer and simulated users at RATE "
                         "visits/s (make run's 20) against the Serve app, on both sides' measurements (0: none)")
    ap.add_argument("--only-cpu", action="store_true", help="only the CPU breakdown (no load ramp, no publishes)")
    args = ap.parse_args(argv)

    from ray import serve

    from actors import registry
    from cluster.broker import free_port, start_embedded_broker, stop_broker
    from cluster.stack import merge_args, wait_http
    from rl.features import fit_projection
    from rl.learners.ppo import SlateLearner
    from rl.spec import PolicySpec
    from rl.weights import pack, unpack
    from cluster.loop import serving_app
    from streamrec.config import load_serve_config, settings_from_args
    from streamrec.data.synthetic import synthetic_items, synthetic_users
    from streamrec.encoder import TextEncoder
    from streamrec.vectors import write_vectors

    raw = load_serve_config(os.path.join(os.path.dirname(__file__), "..", "ray_config.yaml"))
    shipped = raw["applications"][0]
    out: dict = {"machine": f"{os.cpu_count()} CPU", "items": args.items}
    tmp = tempfile.mkdtemp(prefix="streamrec-bench-serve-")
    items, users = synthetic_items(0, args.items), synthetic_users(args.users)
    enc = TextEncoder()
    iv, uv = enc.encode(items.column("text").to_pylist()), enc.encode(users.column("text").to_pylist())
    write_vectors(f"{tmp}/emb", {"items": (np.array(items.column("item_id").to_pylist()), iv, "item_id"),
                                 "users": (np.array(users.column("user_id").to_pylist()), uv, "user_id")}, enc.model_id)
    broker = start_embedded_broker()
    # the shipped application's args, with this run's broker, paths and catalog size
    app_args = merge_args(shipped["args"], {
        "kafka": {"bootstrap_servers": broker.bootstrap}, "embedding": {"output_dir": f"{tmp}/emb"},
        "trainer": {"store_dir": f"{tmp}/store", "checkpoint_dir": f"{tmp}/trainer"},
        "profile": {"snapshot_dir": f"{tmp}/profiles"},
        "catalog": {"source": "synthetic", "num_items": args.items, "num_users": args.users, "seed": 0},
        **({"serve": {"mode": args.serve_mode.split("+")[0]}} if args.serve_mode else {})})
    s = settings_from_args(app_args, env={})
    mode = args.serve_mode or s.serve.mode
    for k, v in {**ingress_env(s.serve.mode), **SERVE_MODES[mode]}.items():
        os.environ.setdefault(k, v)
    out["serve_mode"] = mode
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False, namespace=registry.NAMESPACE)
    store = registry.policy_store(s.trainer.store_dir, 50, detached=False)
    p = s.policy
    spec = PolicySpec("ppo", m=p.feature_dim, num_candidates=p.num_candidates, slate_size=p.slate_size,
                      num_rows=args.items + 1, text_dim=iv.shape[1], temperature=p.temperature, penalty=p.diversity_penalty)
    learner = SlateLearner(spec)
    tensors = {**learner.serving_policy().state(), "projection": fit_projection(iv, p.feature_dim)}
    learner.shutdown()
    blob, sha = pack(tensors)
    ray.get(store.publish.remote(blob, {"sha256": sha, "spec": spec.to_dict(), "algorithm": "ppo"}))

    deployments = shipped["deployments"]
    out["serve_settings"] = {"serve": s.serve.model_dump(mode="json"), "deployments": deployments}
    print(json.dumps({"serve_settings": out["serve_settings"]}), file=sys.stderr, flush=True)
    port = free_port(outside_ephemeral=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serving_app(app_args, deployments), name="streamrec", route_prefix="/")
    serve_url = f"http://127.0.0.1:{port}"

    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", "--args-json", json.dumps(app_args),
                             "--port", str(bare_port)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    bare_url = f"http://127.0.0.1:{bare_port}"
    loop: list = []  # make run's ingest, trainer and simulated users, with --with-simulator
    try:
        for u in (serve_url, bare_url):
            wait_http(u + "/healthz", timeout_s=300)
        if args.with_simulator:
            loop = _start_loop(s, broker.bootstrap, serve_url, items.column("item_id").to_pylist(), iv, args.with_simulator)
        timeline, stop, phase = [], threading.Event(), ["start"]

        def watch():
            t0 = time.time()
            while not stop.wait(1.0):
                timeline.append({"t": round(time.time() - t0), "phase": phase[0], **_replicas()})

        if args.cpu_at:
            out["cpu_breakdown"] = {"serve": cpu_per_request(serve_url, args.cpu_at, args.seconds, args.users),
                                    "bare": cpu_per_request(bare_url, args.cpu_at, args.seconds, args.users)}
            print(json.dumps(out["cpu_breakdown"]), file=sys.stderr, flush=True)
            if args.only_cpu:
                print(json.dumps(out), flush=True)
                return 0
        threading.Thread(target=watch, daemon=True).start()
        rates = [float(r) for r in args.rates.split(",")]
        out["serve"] = []
        for r in rates:
            phase[0] = f"{r:g} rps"
            out["serve"].append(_open_loop(serve_url, r, args.seconds, args.users))
        phase[0] = "peak warm-up"
        threading.Timer(args.peak_warmup_s, lambda: phase.__setitem__(0, "peak")).start()
        out["serve_peak_rps"] = _closed_loop(serve_url, 32, args.seconds, args.users, args.peak_warmup_s)
        phase[0] = "after"
        time.sleep(5)
        stop.set()
        out["replicas_over_time"] = timeline[::max(1, len(timeline) // 40)]
        out["ranker_replicas_by_phase"] = {}  # the most Ranker replicas running during each phase
        out["ranker_starting_by_phase"] = {}  # ... and the most starting up (their start-up costs CPU too)
        for row in timeline:
            for key, by in (("Ranker", out["ranker_replicas_by_phase"]), ("Ranker starting", out["ranker_starting_by_phase"])):
                by[row["phase"]] = max(by.get(row["phase"], 0), row.get(key, 0))
        out["replica_rss_mb"] = _replica_rss()
        out["bare"] = [_open_loop(bare_url, r, args.seconds, args.users) for r in rates]
        out["bare_peak_rps"] = _closed_loop(bare_url, 32, args.seconds, args.users, args.peak_warmup_s)
        out["peak_ratio"] = round(out["serve_peak_rps"] / max(out["bare_peak_rps"], 1e-9), 3)
        # publish -> every Ranker replica answers with the new version
        lat = []
        base_m, base_blob = ray.get(store.get.remote(None))
        with httpx.Client(base_url=serve_url, timeout=10) as c:
            for i in range(args.publishes):
                t = unpack(base_blob)
                t["item_bias.weight"] = t["item_bias.weight"] + 1e-4 * (i + 1)
                b, h = pack(t)
                t0 = time.perf_counter()
                v = ray.get(store.publish.remote(b, {"sha256": h, "spec": base_m["spec"], "algorithm": "ppo"}))["version"]
                replicas = _replicas().get("Ranker", 1)
                seen: dict[str, float] = {}
                while len(seen) < replicas and time.perf_counter() - t0 < 10:
                    r = c.post("/v1/recommend", json={"user_id": "user1", "k": 10})
                    if r.status_code == 200 and int(r.json()["policy_version"]) >= v:
                        seen.setdefault(r.headers["x-streamrec-replica"], time.perf_counter() - t0)
                lat.append(max(seen.values()) if len(seen) >= replicas else float("inf"))
        out["publish_to_all_replicas_s"] = {"p50": round(float(np.percentile(lat, 50)), 3),
                                            "p95": round(float(np.percentile(lat, 95)), 3), "n": len(lat)}
        if loop:
            out["simulator"] = loop[0].metrics()
    finally:
        if loop:
            _stop_loop(loop)
        bare.terminate()
        bare.wait(10)
        serve.shutdown()
        ray.shutdown()
        stop_broker(broker)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
