"""A multi-node Ray cluster made of local processes, autoscaled by Ray itself, for tests and benches.

Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``) runs each "node" as a ``ray start``
process group on this machine, started and stopped by Ray's autoscaler exactly as it starts and
stops cloud or KubeRay nodes: the head has no CPUs, so every actor and task brings up a worker
node of a type that fits it, and idle nodes leave after ``idle_timeout_minutes``::

    with LocalCluster(tmp_dir, env={"AWS_ENDPOINT_URL": ...}) as c:
        ray.init(address=c.address)          # RAY_AUTH_* come from c.env
        ...                                   # a num_gpus=1 task brings up the "gpu" node type

Node types: ``cpu`` ({CPU: 1}, 0..3) and ``gpu`` ({CPU: 1, GPU: 1}, 0..1; no CUDA behind it, so
GPU work falls back to the CPU and must say so). Token authentication is on, with a token of its
own; every process binds loopback. ``stop()`` ends only this cluster's processes (found by its
temp dir), never another Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cluster.broker import free_port

__all__ = ["LocalCluster", "NODE_TYPES", "stop_ray_processes", "wait_until"]

NODE_TYPES = {
    "cpu": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 3},
    "gpu": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
}


class LocalCluster:
    def __init__(self, work_dir: str | os.PathLike, *, env: dict[str, str] | None = None,
                 idle_timeout_minutes: float = 0.25, node_types: dict | None = None):
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.dashboard_port, self.agent_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        token = self.dir / "ray_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": self.address}
        # Ray's socket paths must fit in 107 bytes: a short temp dir of its own (also what stop() looks for)
        self.ray_dir = Path(tempfile.mkdtemp(prefix="srlc-", dir="/tmp"))
        self.config = self.dir / "autoscaler.yaml"
        self.config.write_text(yaml.safe_dump(self._config(idle_timeout_minutes, node_types or NODE_TYPES)))

    def _config(self, idle_timeout_minutes: float, node_types: dict) -> dict:
        return {
            "cluster_name": f"streamrec-local-{self.port}",
            "max_workers": sum(t["max_workers"] for t in node_types.values()),
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "auth": {}, "docker": {},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                     **node_types},
            "head_node_type": "ray.head.default",
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def start(self) -> LocalCluster:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {**os.environ, **self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        env.pop("RAY_ADDRESS")
        out = subprocess.run(
            [ray_bin, "start", "--head", f"--port={self.port}", "--num-cpus=0", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.ray_dir}", f"--autoscaling-config={self.config}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={self.agent_port}"],
            env=env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray start --head failed: {out.stderr[-2000:]}")
        os.environ.update(self.env)  # this process's ray.init() and the job client authenticate
        return self

    def worker_nodes(self) -> list[dict]:
        """Alive worker nodes: ``{"node_id", "resources"}`` (needs ``ray.init`` to this cluster)."""
        import ray

        return [{"node_id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes()
                if n["Alive"] and not n["Resources"].get("node:__internal_head__")]

    def stop(self) -> None:
        stop_ray_processes(self.ray_dir)
        logs = self.ray_dir / "session_latest" / "logs"
        if logs.is_dir():  # kept beside the work dir for a post-mortem
            shutil.copytree(logs, self.dir / "ray-logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_ray_processes(ray_dir: str | os.PathLike) -> None:
    """Kill one Ray's processes: those naming its temp dir on their command line, and everything
    below them (workers retitle themselves). Not ``ray stop``, which stops every Ray on the machine."""
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"]) if any(str(ray_dir) in a for a in p.info["cmdline"] or [])]
    ours = {p.pid: p for h in found if h.pid != os.getpid() for p in [h, *h.children(recursive=True)]}.values()
    for p in ours:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(ours), timeout=30)


def wait_until(what: str, probe, timeout_s: float, every_s: float = 0.5):
    """``probe()`` until truthy; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
