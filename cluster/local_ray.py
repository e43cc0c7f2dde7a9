"""Ray for the local stack: join ``ray.address`` / ``RAY_ADDRESS``, or start a local head.

A local head binds its dashboard and job server to 127.0.0.1 only and runs with Ray's token
authentication on by streamrec's own choice (``RAY_AUTH_MODE=token``): the token is a file in the
run directory with mode 0600 (``RAY_AUTH_TOKEN_PATH``), and a driver or job client without it is
refused. The head lives as long as the process that started it (``streamrec up``), which ends it
on shutdown.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RayHandle", "start_or_connect", "shutdown", "prepare_local_head", "write_token"]

#: Ray reads this when it is imported: off, a node's address is the loopback one, so the GCS, the
#: raylet, the agents and the workers bind and advertise 127.0.0.1 (Ray's single-machine mode)
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True)
class RayHandle:
    gcs_address: str
    dashboard_url: str | None
    started_here: bool
    pids: tuple[int, ...] = ()
    """Processes of a head started here (gcs, raylet, dashboard...), for a last check on shutdown."""
    auth_token_path: str | None = None
    """The token file of a head started here (mode 0600): ``RAY_AUTH_TOKEN_PATH`` for drivers and ``ray job``."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pids"] = list(self.pids)
        return d


def prepare_local_head(token_path: Path, ray_address: str | None, node_ip_address: str | None) -> Path | None:
    """Before Ray is imported (Ray reads these settings once, at import): unless the config joins a
    cluster (``ray.address``, ``RAY_ADDRESS``), the local head will run with token authentication
    (a fresh token in ``token_path``, mode 0600) and, unless ``ray.node_ip_address`` names an
    address, bind and advertise loopback only. Every Ray process the head starts inherits both.
    Returns the token's path, or None when joining a cluster."""
    import sys

    if ray_address or os.environ.get("RAY_ADDRESS"):
        return None
    if "ray" in sys.modules:
        raise RuntimeError("prepare_local_head must run before Ray is imported")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(write_token(Path(token_path)))
    if not node_ip_address:
        os.environ.update(LOOPBACK_ONLY_ENV)
    return Path(token_path)


def write_token(path: Path) -> Path:
    """A fresh random token in ``path``, readable by its owner only (kept when one is already there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def start_or_connect(ray_settings, *, dashboard_port: int | None = None) -> RayHandle:
    """Join the configured cluster, or start a local head (as :func:`prepare_local_head` set it up)."""
    import ray

    from actors.registry import NAMESPACE

    before = _descendants({os.getpid()}, depth=1)
    address = ray_settings.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ctx = ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        started = False
    else:
        port = ray_settings.dashboard_port if dashboard_port is None else dashboard_port
        if port == 0:
            from cluster.broker import free_port

            port = free_port()
        kwargs = {}
        if ray_settings.node_ip_address:
            kwargs["_node_ip_address"] = ray_settings.node_ip_address
        if ray_settings.object_store_memory_mb:
            kwargs["object_store_memory"] = ray_settings.object_store_memory_mb * 1024 * 1024
        ctx = ray.init(
            namespace=NAMESPACE,
            num_cpus=ray_settings.num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            log_to_driver=False,
            **kwargs,
        )
        started = True
    dash = getattr(ctx, "dashboard_url", None) or None
    if dash and not dash.startswith("http"):
        dash = f"http://{dash}"
    gcs = ray.get_runtime_context().gcs_address
    # a head started here: its node processes (GCS, raylet, dashboard, ...) are this process's new children
    pids = tuple(sorted(_descendants({os.getpid()}, depth=1) - before)) if started else ()
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") if started and os.environ.get("RAY_AUTH_MODE") == "token" else None
    return RayHandle(gcs_address=gcs, dashboard_url=dash, started_here=started, pids=pids, auth_token_path=token)


def _descendants(pids, depth: int | None = None) -> set[int]:
    """The processes below ``pids``, ``depth`` levels down (all by default; Linux /proc, empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(d))
    except OSError:
        return set()
    out: set[int] = set()
    todo = [(p, 0) for p in pids]
    while todo:
        p, level = todo.pop()
        if depth is not None and level >= depth:
            continue
        for c in children.get(p, []):
            if c not in out:
                out.add(c)
                todo.append((c, level + 1))
    return out


def shutdown(pids: tuple[int, ...] = (), timeout_s: float = 20.0) -> None:
    """Stop the local Ray this process started and wait until all of its processes are gone.

    The raylet's own children (dashboard agent, runtime-env agent, workers) outlive it by a few
    seconds; a head started right after would find the agent's port (52365) still taken.
    """
    import time

    import ray

    if not ray.is_initialized():
        return
    ours = set(pids) | _descendants(pids)
    ray.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in ours if _alive(p)]
        if not left:
            return
        time.sleep(0.2)
    for p in ours:  # still there: they are ours (children of the head we started)
        if _alive(p):
            try:
                os.kill(p, 9)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
