"""Ray for the local stack: join ``ray.address`` / ``RAY_ADDRESS``, or start a local head.

A local head binds its dashboard and job server to 127.0.0.1 only. It lives as long as the
process that started it (``streamrec up``), which ends it on shutdown.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

__all__ = ["RayHandle", "start_or_connect", "shutdown"]

@dataclass(frozen=True)
class RayHandle:
    gcs_address: str
    dashboard_url: str | None
    started_here: bool
    pids: tuple[int, ...] = ()
    """Processes of a head started here (gcs, raylet, dashboard...), for a last check on shutdown."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pids"] = list(self.pids)
        return d


def start_or_connect(ray_settings, *, dashboard_port: int | None = None) -> RayHandle:
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
        if ray_settings.object_store_memory_mb:
            kwargs["object_store_memory"] = ray_settings.object_store_memory_mb * 1024 * 1024
        ctx = ray.init(
            namespace=NAMESPACE,
            num_cpus=ray_settings.num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            _node_ip_address="127.0.0.1",
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
    return RayHandle(gcs_address=gcs, dashboard_url=dash, started_here=started, pids=pids)


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
