"""Idle cost: the CPU the local stack burns while nobody calls it, next to a bare Ray head's.

    python -m bench.idle [--settle-s 20] [--window-s 30] [--items 200]

One JSON line. ``streamrec up`` on the shipped ``ray_config.yaml`` (a small synthetic catalog and
temporary directories; no simulated users, no requests) runs for ``--settle-s``, then the CPU time
of every process below it (the broker, Ray's GCS, raylet, dashboard and agents, Serve's controller,
proxy, HAProxy and replicas, ingest, the trainer, the stores) is counted over ``--window-s`` and
reported in cores, by process. The peer, in the same run: a bare local Ray head (``ray.init()``,
dashboard on, nothing deployed) counted the same way.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _role(p: psutil.Process) -> str:
    """A short name for what ``p`` is (Ray's process titles, else the executable's name)."""
    name = p.name()
    if name.startswith("ray::"):
        return name.split(" ")[0].split(".")[0][:60]
    cmd = " ".join(p.cmdline()[:3])
    for key in ("gcs_server", "raylet", "dashboard/agent", "dashboard.py", "log_monitor", "monitor.py",
                "runtime_env/agent", "haproxy", "tansu", "cluster.cli"):
        if key in cmd:
            return key
    return name


def cpu_by_role(root_pid: int, window_s: float) -> tuple[float, dict[str, float]]:
    """Cores used by ``root_pid``'s descendants (and itself) over ``window_s``, in total and by role."""
    def snapshot() -> dict[int, tuple[str, float]]:
        out = {}
        try:
            procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return out
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = (_role(p), t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    a = snapshot()
    time.sleep(window_s)
    b = snapshot()
    roles: dict[str, float] = collections.defaultdict(float)
    for pid, (role, cpu) in b.items():
        roles[role] += cpu - a.get(pid, (role, 0.0))[1]
    by_role = {k: round(v / window_s, 4) for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v > 0}
    return round(sum(roles.values()) / window_s, 4), by_role


def _config(tmp: Path, items: int) -> Path:
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    args = raw["applications"][0]["args"]
    args["catalog"] = {"source": "synthetic", "num_items": items, "num_users": 100}
    args["embedding"] = {"output_dir": str(tmp / "emb")}
    args["profile"] = {"snapshot_dir": str(tmp / "profiles")}
    args["trainer"] = {**args["trainer"], "store_dir": str(tmp / "policies"), "checkpoint_dir": str(tmp / "trainer")}
    args["ray"] = {"dashboard_port": 0}
    from cluster.broker import free_port

    raw["http_options"]["port"] = free_port(outside_ephemeral=True)
    path = tmp / "ray_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stack_idle(settle_s: float, window_s: float, items: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-idle-"))
    env = {**os.environ, "STREAMREC_RUN_DIR": str(tmp / "run")}
    env.pop("RAY_ADDRESS", None)
    env.pop("STREAMREC_KAFKA_BOOTSTRAP", None)
    up = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up", "--config", str(_config(tmp, items))],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        state_file = tmp / "run" / "state.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if state_file.exists() and json.loads(state_file.read_text()).get("phase") == "running":
                break
            if up.poll() is not None:
                raise SystemExit("streamrec up exited before it was running")
            time.sleep(1)
        else:
            raise SystemExit("streamrec up was not running after 300 s")
        time.sleep(settle_s)
        total, by_role = cpu_by_role(up.pid, window_s)
        return {"cores": total, "by_process": by_role}
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


_BARE = """
import sys, time, ray
ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=0, log_to_driver=False)
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def bare_ray_idle(settle_s: float, window_s: float) -> dict:
    p = subprocess.Popen([sys.executable, "-c", _BARE, str(settle_s + window_s + 5)], stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(settle_s)
        total, by_role = cpu_by_role(p.pid, window_s)
        return {"cores": total, "by_process": by_role}
    finally:
        p.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settle-s", type=float, default=20.0)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--items", type=int, default=200)
    args = ap.parse_args()
    out = {"machine": f"{os.cpu_count()} CPU", "window_s": args.window_s}
    out["stack_idle"] = stack_idle(args.settle_s, args.window_s, args.items)
    out["bare_ray_head_idle"] = bare_ray_idle(args.settle_s, args.window_s)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
