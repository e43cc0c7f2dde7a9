"""The local stack behind ``streamrec up``: broker, Ray, and every component that exists.

``LocalStack.start()`` brings the parts up in order and records each in the run directory as
it comes up; ``stop()`` takes them down in reverse, ending only what it started. ``status()``
reads the run directory and probes what it names, so it works from any shell.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.broker import BrokerError, BrokerHandle, connect_or_start, list_topics, stop_broker
from streamrec.config import StreamrecSettings
from streamrec.runstate import RunDir, pid_alive
from streamrec.storage import absolute

__all__ = ["LocalStack", "StackError", "BrokerError", "merge_args", "stack_status", "stop_running_stack", "wait_http"]

#: In the run directory: the pid of every HAProxy Serve started (serve.haproxy_ingress.PIDS_ENV).
HAPROXY_PIDS = "haproxy.pids"


class StackError(RuntimeError):
    """The stack could not start or stop; the message says which part and why."""


@dataclass
class LocalStack:
    settings: StreamrecSettings
    run_dir: RunDir
    config_path: str | None = None
    dashboard_port: int | None = None
    broker: BrokerHandle | None = None
    ray: Any = None
    ingest: Any = None
    profiles: Any = None
    store: Any = None
    trainer: Any = None
    http_url: str | None = None
    simulator: Any = None
    _stops: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def start(self, progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
        owner = self.run_dir.active_pid()
        if owner and owner != os.getpid():
            raise StackError(f"streamrec is already running from {self.run_dir.path} (pid {owner}); "
                             f"run `streamrec down` first")
        self.run_dir.write({"pid": os.getpid(), "phase": "starting", "started": time.time(),
                            "config": self.config_path})
        try:
            progress("kafka")
            self.broker = connect_or_start(self.settings.kafka, log_dir=self.run_dir.path)
            self._stops.append(("kafka", lambda: stop_broker(self.broker)))
            self.run_dir.update(broker=self.broker.to_dict(), topics=self._topic_names())

            progress("ray")
            from cluster import local_ray
            from serve.haproxy_ingress import PIDS_ENV, ingress_env

            for k, v in ingress_env(self.settings.serve.mode).items():  # read by Serve's processes at start
                os.environ.setdefault(k, v)
            (self.run_dir.path / HAPROXY_PIDS).unlink(missing_ok=True)  # pids of an earlier stack mean nothing now
            os.environ[PIDS_ENV] = str(self.run_dir.path / HAPROXY_PIDS)
            self._stops.append(("haproxy", lambda: stop_recorded_haproxies(self.run_dir.path)))  # after Ray's
            self.ray = local_ray.start_or_connect(self.settings.ray, dashboard_port=self.dashboard_port)
            self._stops.append(("ray", lambda: local_ray.shutdown(self.ray.pids)))
            self.run_dir.update(ray=self.ray.to_dict())

            progress("embeddings")
            self._start_embeddings()
            progress("stream ingest")
            self._start_stream()
            progress("trainer and policy store")
            self._start_learning()
            progress("serve")
            self._start_serving()
        except Exception:
            self.stop()
            raise
        return self.run_dir.update(phase="running", ready=time.time())

    def _start_embeddings(self) -> None:
        """Embed the catalog (incremental: a restart with an unchanged catalog re-embeds nothing)."""
        from cluster.jobs.embed import run_embedding_job

        manifest = run_embedding_job(self.settings)
        self.run_dir.update(embeddings={"dir": absolute(self.settings.embedding.output_dir),
                                        "model_id": manifest["model_id"],
                                        **{k: {"count": v["count"], "embedded": v["embedded"]}
                                           for k, v in manifest["outputs"].items()}})

    def _effective(self) -> StreamrecSettings:
        """The settings every part runs with: the file's, plus what this stack decided (broker, paths)."""
        from streamrec.config import settings_from_args

        return settings_from_args(self.app_args())

    def _start_stream(self) -> None:
        """ProfileStore, the trainer's SampleBuffer, and the StreamIngest consumer group."""
        import ray

        from cluster.loop import start_stream
        from streamrec.vectors import load_vectors

        ids, vectors, _ = load_vectors(self.settings.embedding.output_dir)
        stream = start_stream(self._effective(), self.broker.bootstrap, ids, vectors)
        self.profiles, self.ingest = stream.profiles, stream.ingest
        self._stops.append(("ingest", self.ingest.stop))
        self._stops.append(("profiles", lambda: ray.get(self.profiles.snapshot.remote(), timeout=30)))

    def _start_learning(self) -> None:
        """The PolicyStore (named, detached) and the Trainer, which publishes version 1 before serving starts."""
        import ray

        from actors import registry
        from cluster.loop import start_learning

        try:
            learning = start_learning(self._effective(), self.broker.bootstrap)  # the Trainer reads the vectors
        except ray.exceptions.RayActorError as e:  # the trainer refused to start (e.g. a lineage it cannot continue)
            cause = str(e).strip().splitlines()
            raise StackError("the trainer did not start: " + next((x for x in reversed(cause) if "Error" in x), cause[-1]))
        self.store, self.trainer = learning.store, learning.trainer
        self._stops.append(("policy store", lambda: ray.kill(registry.lookup(registry.STORE))))
        self._stops.append(("trainer", lambda: ray.get(self.trainer.stop.remote(), timeout=60)))
        m = ray.get(self.trainer.metrics.remote(), timeout=300)
        self.run_dir.update(policy={"algorithm": m["algorithm"], "version": m["serving_version"]})

    def app_args(self) -> dict[str, Any]:
        """The Serve app's args as the config file wrote them, plus what this stack decided (broker, paths)."""
        from streamrec.config import APP_IMPORT_PATH, load_serve_config

        raw: dict[str, Any] = {}
        if self.config_path:
            for app in load_serve_config(self.config_path).get("applications") or []:
                if app.get("import_path") == APP_IMPORT_PATH:
                    raw = dict(app.get("args") or {})
        else:
            raw = self.settings.model_dump(mode="json", exclude={"auth"})
        s = self.settings
        overrides = {
            "kafka": {"bootstrap_servers": self.broker.bootstrap if self.broker else s.kafka.bootstrap_servers,
                      **({"log_id": f"embedded:{self.broker.bootstrap}:{self.broker.pid}"}
                         if self.broker and self.broker.embedded else {})},
            "embedding": {"output_dir": absolute(s.embedding.output_dir)},
            "trainer": {"store_dir": absolute(s.trainer.store_dir),
                        "checkpoint_dir": absolute(s.trainer.checkpoint_dir)},
            "profile": {"snapshot_dir": absolute(s.profile.snapshot_dir)},
        }
        return merge_args(raw, overrides)

    def _serve_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from streamrec.config import APP_IMPORT_PATH, load_serve_config

        if not self.config_path:
            return {"host": "127.0.0.1", "port": 8000}, {"name": "streamrec", "route_prefix": "/", "deployments": []}
        raw = load_serve_config(self.config_path)
        app = next(a for a in raw["applications"] if a.get("import_path") == APP_IMPORT_PATH)
        return dict(raw.get("http_options") or {}), app

    def _start_serving(self) -> None:
        """serve.start with the file's http_options; the app with the file's per-deployment options."""
        from ray import serve

        from cluster.loop import serving_app
        from serve.api import require_keys_off_loopback

        http, app = self._serve_config()
        host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
        require_keys_off_loopback(host, [k.get_secret_value() for k in self.settings.auth.api_keys])
        serve.start(http_options={k: v for k, v in http.items() if k in ("host", "port", "request_timeout_s",
                                                                          "keep_alive_timeout_s")})
        self._stops.append(("serve", serve.shutdown))
        name = app.get("name", "streamrec")
        # run_many returns once the ingress exists; _wait_app_running then waits with a deadline and
        # names the deployments that are not ready (serve.run would wait without one)
        serve.run_many([serve.RunTarget(serving_app(self.app_args(), app.get("deployments") or []), name=name,
                                        route_prefix=app.get("route_prefix", "/"))],
                       wait_for_applications_running=False)
        _wait_app_running(name, timeout_s=300)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.http_url = f"http://{shown}:{port}"
        wait_http(self.http_url + "/healthz", timeout_s=60)
        self.run_dir.update(serve={"url": self.http_url, "app": app.get("name", "streamrec")})

    def _topic_names(self) -> list[str]:
        t = self.settings.kafka.topics
        return [t.impressions, t.feedback, t.dlq, t.samples]

    def snapshot(self) -> dict[str, Any]:
        """What the driver knows live (Ray resources, Serve apps, policy version); saved for `status`."""
        snap: dict[str, Any] = {"updated": time.time()}
        try:
            import ray

            if ray.is_initialized():
                snap["ray_nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
                snap["ray_resources"] = {k: v for k, v in ray.cluster_resources().items()
                                         if not k.startswith("node:") and "memory" not in k}
            if self.ingest is not None:
                ms = self.ingest.metrics()
                lag: dict[str, int] = {}
                for m in ms:
                    lag.update(m["lag"])
                snap["ingest"] = {
                    "actors": len(ms), "events_per_s": sum(m["events_per_s"] for m in ms),
                    "records": sum(m["records"] for m in ms), "samples": sum(m["samples"] for m in ms),
                    "dlq": sum(m["dlq"] for m in ms), "late": sum(m["late"] for m in ms),
                    "orphans": sum(m["orphans"] for m in ms),
                    "join_hit_rate": (sum(m["joined"] for m in ms) /
                                      max(1, sum(m["joined"] + m["late"] + m["orphans"] for m in ms))),
                    "lag": lag, "errors": [m["error"] for m in ms if m["error"]],
                    "behind": sorted({b for m in ms for b in m.get("behind", [])}),
                    "watermark_lag_s": max((m.get("watermark_lag_s", 0.0) for m in ms), default=0.0),
                }
                if self.ingest.controller is not None:
                    snap["ingest"]["scaling"] = {"last": self.ingest.controller.last,
                                                 "changes": self.ingest.controller.history[-5:]}
                snap["profiles"] = ray.get(self.profiles.metrics.remote(), timeout=10)
            if self.trainer is not None:
                tm = ray.get(self.trainer.metrics.remote(), timeout=10)
                last = tm.get("last") or {}
                snap["trainer"] = {k: tm[k] for k in ("algorithm", "rounds", "samples", "published", "rejected",
                                                      "serving_version", "error", "in_round_s")}
                snap["trainer"]["arms"] = tm.get("arms")
                snap["samples"] = {"taken": tm["log"]["taken"], "duplicates": tm["log"]["duplicates"],
                                   "pending": tm["log"]["pending"], "position": tm["log"]["position"]}
                if last:
                    snap["trainer"]["last_gate"] = {"ok": last["ok"], "why": last["why"],
                                                    "ope_ctr": last["ope"]["ctr"],
                                                    "measured_ctr": last["measured_ctr"]}
            if self.http_url:
                snap["serve"] = _serve_status()
            if self.simulator is not None:
                snap["simulator"] = self.simulator.metrics()
        except Exception as e:  # a snapshot never takes the stack down
            snap["error"] = f"{type(e).__name__}: {e}"
        trainer = snap.get("trainer") or {}
        if trainer.get("serving_version") is not None:  # one serving version in `status`: the trainer's
            self.run_dir.update(snapshot=snap, policy={"algorithm": trainer["algorithm"],
                                                       "version": trainer["serving_version"]})
        else:
            self.run_dir.update(snapshot=snap)
        return snap

    def stop(self) -> None:
        state = self.run_dir.read() or {}
        if state.get("pid") == os.getpid():
            self.run_dir.update(phase="stopping")
        while self._stops:
            name, fn = self._stops.pop()
            try:
                fn()
            except Exception as e:  # keep going: the rest must still stop
                print(f"streamrec: stopping {name} failed: {type(e).__name__}: {e}")
        if self.ray is not None and self.ray.started_here:
            _wait_gone(self.ray.pids, timeout_s=15)
        state = self.run_dir.read() or {}
        if state.get("pid") == os.getpid():
            self.run_dir.clear()


def merge_args(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_args(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def wait_http(url: str, timeout_s: float) -> None:
    """Until ``url`` answers 200; StackError after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise StackError(f"serve did not answer {url} within {timeout_s:.0f}s ({last})")


def _wait_app_running(name: str, timeout_s: float) -> None:
    """Until Serve says the app runs; else a StackError naming the deployments that do not (and why)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = str(getattr(app.status, "value", app.status)) if app else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED" or time.monotonic() > deadline:
            waiting = {d: f"{getattr(s.status, 'value', s.status)}: {s.message}"[:300]
                       for d, s in (app.deployments.items() if app else [])
                       if str(getattr(s.status, "value", s.status)) != "HEALTHY"}
            raise StackError(f"serve app {name!r} is {status} after {timeout_s:.0f}s; not ready: {waiting} "
                             f"(too few CPUs for the replicas? see `ray status`)")
        time.sleep(1)


def _serve_status() -> dict[str, Any]:
    """Replicas per deployment and their states, from Serve's own status."""
    from ray import serve

    out: dict[str, Any] = {}
    for app_name, app in serve.status().applications.items():
        out[app_name] = {"status": str(app.status.value if hasattr(app.status, "value") else app.status),
                         "deployments": {name: {str(k.value if hasattr(k, "value") else k): v
                                                for k, v in d.replica_states.items()}
                                         for name, d in app.deployments.items()}}
    return out


def _wait_gone(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if pid_alive(p)]
    return left


def _kill(pids, sig=signal.SIGKILL) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def stop_recorded_haproxies(run_dir: Path) -> list[int]:
    """Stop every HAProxy that Serve started for the stack of ``run_dir`` (:data:`HAPROXY_PIDS`)
    and is still running: one can outlive the proxy actor that started it (when ``up`` was killed,
    Ray goes down with it; HAProxy may not) and keep the stack's ports. Returns their pids."""
    from serve.haproxy_ingress import recorded_haproxies

    record = Path(run_dir) / HAPROXY_PIDS
    haproxies = recorded_haproxies(record)
    _kill(haproxies, signal.SIGTERM)
    _kill(_wait_gone(haproxies, 5))
    record.unlink(missing_ok=True)
    return haproxies


def stop_running_stack(run_dir: RunDir, timeout_s: float = 60.0) -> dict[str, Any]:
    """``streamrec down``: ask the ``up`` process to stop, then make sure what it started is gone."""
    state = run_dir.read()
    if not state:
        return {"stopped": False, "reason": f"nothing is running from {run_dir.path}"}
    pid = state.get("pid")
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        if _wait_gone([pid], timeout_s):
            _kill([pid])
            _wait_gone([pid], 5)
    # whatever the up process left behind (it was killed, or crashed): only what it recorded
    broker = state.get("broker")
    if broker:
        stop_broker(BrokerHandle.from_dict(broker))
    ray_pids = (state.get("ray") or {}).get("pids") or []
    if (state.get("ray") or {}).get("started_here"):
        left = _wait_gone(ray_pids, 10)
        _kill(left, signal.SIGTERM)
        _kill(_wait_gone(left, 5))
    stop_recorded_haproxies(run_dir.path)
    run_dir.clear()
    return {"stopped": True, "pid": pid}


def stack_status(run_dir: RunDir, probe_timeout_ms: int = 3_000) -> dict[str, Any]:
    """Everything `streamrec status` shows, as plain data."""
    state = run_dir.read()
    if not state:
        return {"running": False, "run_dir": str(run_dir.path)}
    out: dict[str, Any] = {
        "running": pid_alive(state.get("pid")),
        "run_dir": str(run_dir.path),
        "pid": state.get("pid"),
        "phase": state.get("phase"),
        "config": state.get("config"),
    }
    broker = state.get("broker")
    if broker:
        b = {"address": broker["bootstrap"], "embedded": broker["embedded"], "pid": broker.get("pid")}
        try:
            present = list_topics(broker["bootstrap"], probe_timeout_ms)
            b["reachable"] = True
            b["topics"] = {t: (t in present) for t in state.get("topics", [])}
        except Exception as e:
            b["reachable"] = False
            b["error"] = f"{type(e).__name__}: {e}"
        out["kafka"] = b
    if state.get("ray"):
        r = dict(state["ray"])
        r.pop("pids", None)
        out["ray"] = r
    for key in ("snapshot", "serve", "policy", "ingest", "trainer", "embeddings"):
        if key in state:
            out[key] = state[key]
    return out

