"""``build_app(args)``: the Serve application ``ray_config.yaml`` names (``serve.app:build_app``).

::

    HTTP -> Ranker (serve/http.py: auth, limits, /v1/recommend, /v1/feedback, /healthz, /metrics, /docs,
                    /dashboard and its data /v1/dashboard: serve/dashboard.py)
              |-- ContextEncoder.encode(text)   (batched; a handle call only for a text not in the replica's LRU)
              |-- Replica.rank(...)             (in process: retrieval, profile, policy, exploration, version)
              '-- EventSink -> Kafka            (impression / feedback; acknowledged before the response)
            background threads: newer policy versions (a long poll of the PolicyStore: Replica.follow)
                                and changed user profiles (Replica.sync_profiles)

The Ranker is the HTTP ingress itself: ranking is a millisecond of numpy, and a separate
HTTP-only deployment in front of it costs more CPU per request (a handle call on each side)
than the ranking (docs/architecture.md). Scaling Ranker replicas scales the HTTP layer with it;
the encoder, the one heavy model, stays its own autoscaling deployment with dynamic batching.

Serve calls ``build_app`` with the application's ``args``; they are validated first, so a bad
value fails the deploy with its key path instead of failing inside a replica. Deployment
options (autoscaling, ``max_ongoing_requests``, ``max_queued_requests``) come from the
``deployments:`` list of ``ray_config.yaml``; runtime knobs go through ``user_config``; weights
only ever come from the PolicyStore.
"""


import asyncio
import gc
import threading
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors import registry
from actors.remote import Blocking
from serve.api import FeedbackRequest, GuardState, RecommendRequest, require_keys_off_loopback
from serve.context_encoder import LRU, ContextEncoder
from serve.dashboard import ReplicaSeries, history_rows, ingest_figures, json_safe
from serve.http import error, make_api
from serve.listeners import bind_replica_grpc_to_node_ip
from serve.profile_mirror import ProfileMirror
from serve.replica import NotReady, Replica
from streamrec.config import settings_from_args
from streamrec.events import Feedback, Impression, encode
from streamrec.telemetry import Telemetry

__all__ = ["build_app", "build_app_from_config", "Ranker"]

#: How long one long poll of the PolicyStore waits for a change (under the store handle's 30 s timeout).
POLICY_WATCH_S = 20.0


@serve.deployment(name="Ranker", ray_actor_options={"num_cpus": 0.2}, health_check_period_s=2,
                  health_check_timeout_s=10)
@serve.ingress()
class Ranker:
    def __init__(self, args: dict[str, Any], encoder: DeploymentHandle):
        from streamrec.eventbus import make_event_sink

        bind_replica_grpc_to_node_ip()
        self.settings = s = _validated(args)  # env overrides (API keys) are read here, in the replica
        self.encoder = encoder
        self.contexts = LRU(s.serve.encoder_cache_size)  # text -> (d,) vector, as the encoder would answer
        self.guard = GuardState([k.get_secret_value().encode() for k in s.auth.api_keys], s.serve.max_body_bytes,
                                [k.get_secret_value().encode() for k in s.auth.admin_keys])
        self.metrics = self.guard.metrics
        self.metrics.export = self.telemetry = Telemetry()
        k = s.kafka
        self.topics = k.topics
        self.ack_timeout_s = s.serve.event_ack_timeout_s
        # an answer waits on its event's ack: sent at once (an ack in ~0.2 ms from a local broker, 5 ms with linger)
        linger_ms = 0 if self.ack_timeout_s > 0 else 5
        self.sink = make_event_sink(k, linger_ms=linger_ms) if k.bootstrap_servers else None
        self.events_without_kafka = 0
        self.unacked_responses = 0
        store = Blocking(registry.policy_store(s.trainer.store_dir, s.trainer.keep_versions), timeout_s=30)
        finder = ProfileStoreFinder()
        mirror = ProfileMirror(finder.changes_since, s.serve.profile_mirror_users, fetch_prior=finder.prior)
        # named as Serve names the replica (its actor is SERVE_REPLICA::<app>#Ranker#<this>)
        self.replica = Replica(s, store, mirror, name=serve.get_replica_context().replica_id.unique_id)
        self.poll_s = s.serve.policy_poll_s
        self._stop = threading.Event()
        threading.Thread(target=self._follow_policy, name="policy", daemon=True).start()
        threading.Thread(target=self._follow_profiles, name="profiles", daemon=True).start()
        self.series = self.metrics.series = ReplicaSeries()
        threading.Thread(target=self._sample_dashboard, name="dashboard", daemon=True).start()
        # Everything imported and built so far lives as long as the replica: out of the cyclic GC's
        # reach, so a full collection scans only what requests leave behind (a full collection of a
        # process with Ray, Serve and FastAPI imported is a stall of ~0.1 s every request in flight
        # waits out; docs/architecture.md).
        gc.collect()
        gc.freeze()

    def __serve_build_asgi_app__(self):
        """This replica's HTTP app (Serve calls it once the replica is constructed)."""
        return make_api(self, self.guard)

    def _follow_policy(self) -> None:
        """Long-poll the PolicyStore: a publish is served as soon as the store has it."""
        while not self._stop.is_set():
            try:
                self.replica.follow(POLICY_WATCH_S)
                self._export_state()
                if self.replica.follower is None:  # no catalog yet: look again shortly
                    self._stop.wait(self.poll_s)
            except Exception as e:  # the store restarting, a network blip: keep serving what we have
                self.replica.last_error = f"policy: {type(e).__name__}: {e}"
                self._stop.wait(self.poll_s)

    def _follow_profiles(self) -> None:
        """Pull changed profiles every ``serve.profile_sync_s``; every ``serve.catalog_poll_s``, look
        for a new catalog version (an embedding run) and swap it in."""
        s = self.settings.serve
        next_catalog = time.monotonic() + s.catalog_poll_s
        while not self._stop.wait(s.profile_sync_s):
            self.replica.sync_profiles()
            if time.monotonic() >= next_catalog:
                next_catalog = time.monotonic() + s.catalog_poll_s
                try:
                    self.replica.sync_catalog()
                except Exception as e:  # a half-readable run, storage blips: keep serving what is loaded
                    self.replica.last_error = f"catalog: {type(e).__name__}: {e}"

    def _sample_dashboard(self) -> None:
        """Every ``serve.dashboard_sample_s``: one point of this replica's dashboard series (its
        latency and request rate since the last point, the ingest actors' lag)."""
        import ray

        while not self._stop.wait(self.settings.serve.dashboard_sample_s):
            ingest = None
            try:
                ingest = ingest_figures(ray.get([a.metrics.remote() for a in registry.ingest_actors()], timeout=5))
            except Exception as e:  # an ingest actor restarting: the point has no lag this time
                self.replica.last_error = f"dashboard: {type(e).__name__}: {e}"
            self.series.sample(ingest)

    def _dashboard(self, since: float) -> dict[str, Any]:
        import ray

        out: dict[str, Any] = {"now": time.time(), "replica": self.replica.replica, "serving": self.series.since(since),
                               "trainer": [], "history": [], "errors": []}
        st = self.replica.status()
        out["status"] = {k: st.get(k) for k in ("version", "canary", "experiment", "catalog_items", "swaps", "refused",
                                                "rollbacks")}
        trainer = registry.lookup(registry.TRAINER)
        try:
            out["trainer"] = [] if trainer is None else ray.get(trainer.timeline.remote(since), timeout=5)
        except Exception as e:  # the trainer restarting: the page shows what it has and says why
            out["errors"].append(f"trainer: {type(e).__name__}: {e}")
        try:
            out["history"] = history_rows(self.replica.store.history(500))[-50:]
        except Exception as e:
            out["errors"].append(f"policy store: {type(e).__name__}: {e}")
        return json_safe(out)

    async def dashboard(self, since: float) -> dict[str, Any]:
        """The dashboard's data (serve/dashboard.py), gathered off the event loop."""
        return await asyncio.to_thread(self._dashboard, since)

    async def experiment(self, action: str, *args) -> JSONResponse:
        """``status``, ``start`` (definition, operator) or ``stop`` (reason, operator) the store's
        experiment; answers it with the trainer's per-arm figures."""
        return await asyncio.to_thread(self._experiment, action, *args)

    def _experiment(self, action: str, *args) -> JSONResponse:
        import ray

        from actors.policy_store import ExperimentConflict, NoExperiment

        store, status = self.replica.store, 200
        try:
            if action == "start":
                exp, status = store.start_experiment(*args), 201
            elif action == "stop":
                exp = store.stop_experiment(*args)
            else:
                exp = store.experiment()
        except ExperimentConflict as e:
            return error(409, _message(e))
        except NoExperiment as e:
            return error(404, _message(e))
        except ValueError as e:
            return error(422, _message(e))
        except (ray.exceptions.RayError, TimeoutError) as e:
            return error(503, f"the policy store did not answer: {type(e).__name__}", {"Retry-After": "2"})
        figures = None
        trainer = registry.lookup(registry.TRAINER)
        if trainer is not None:
            try:
                m = ray.get(trainer.metrics.remote(), timeout=5)
                figures = m.get("arms")
                if figures is not None and m.get("algorithm_arms"):
                    figures = {**figures, "algorithm_arms": m["algorithm_arms"]}
            except Exception:  # the trainer restarting: the experiment is answered without figures
                pass
        return JSONResponse(json_safe({"experiment": exp, "figures": figures}), status_code=status)

    def _export_state(self) -> None:
        """What this replica serves, for the cluster-wide metrics."""
        st, me = self.replica.status(), self.replica.replica
        self.telemetry.set("streamrec_served_version", st["version"] or 0, replica=me, role="live")
        self.telemetry.set("streamrec_served_version", st["canary"] or 0, replica=me, role="canary")
        self.telemetry.set("streamrec_catalog_items", st.get("catalog_items", 0), replica=me)

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (never weights): ``policy_poll_s``."""
        self.poll_s = float(user_config.get("policy_poll_s", self.poll_s))

    async def _emit(self, topic: str, key: str, value: bytes) -> None:
        """Hand the event to the sink and wait (``serve.event_ack_timeout_s`` at most) until the
        broker acknowledged it: what was answered is in Kafka, whatever happens to this replica next."""
        if self.sink is None:
            self.events_without_kafka += 1
            return
        if self.ack_timeout_s <= 0:
            self.sink.send(topic, key, value)
            return
        loop = asyncio.get_running_loop()
        acked = loop.create_future()

        def on_done(ok: bool) -> None:  # the sink's thread
            loop.call_soon_threadsafe(lambda: acked.done() or acked.set_result(ok))

        if not self.sink.send(topic, key, value, on_done=on_done):
            return  # dropped (buffer full) or refused: the sink counts it
        try:
            await asyncio.wait_for(acked, self.ack_timeout_s)
        except asyncio.TimeoutError:
            self.unacked_responses += 1

    async def recommend(self, req: RecommendRequest) -> JSONResponse:
        """A slate of ``k`` items for ``user_id``, with the policy version and each item's propensity."""
        from ray.serve.exceptions import BackPressureError

        try:
            vec = None
            if req.context is not None and req.context.text:
                text = req.context.text
                vec = self.contexts.get(text)
                if vec is None:  # a handle call only for texts this replica has not seen lately
                    vec = await self.encoder.encode.remote(text)
                    self.contexts.put(text, vec)
            ranked = self.replica.rank(req.model_dump(exclude_none=True), vec)
        except BackPressureError:
            return error(503, "overloaded: too many requests in flight, retry shortly", {"Retry-After": "1"})
        except ValueError as e:  # e.g. every candidate excluded: the request cannot be served as asked
            return error(422, str(e).splitlines()[-1][:500])
        except NotReady as e:  # before the embeddings or the first policy exist
            return error(503, str(e), {"Retry-After": "2"})
        event_id = uuid.uuid4().hex
        context = req.context.model_dump(exclude_none=True) if req.context else {}
        await self._emit(self.topics.impressions, req.user_id, encode(Impression(
            event_id, time.time(), req.user_id, tuple(ranked["items"]), tuple(ranked["propensities"]),
            ranked["policy_version"], context, ranked["features"])))
        items = [{"item_id": i, "score": s, "propensity": p, "position": j}
                 for j, (i, s, p) in enumerate(zip(ranked["items"], ranked["scores"], ranked["propensities"]))]
        return JSONResponse({"event_id": event_id, "policy_version": ranked["policy_version"], "items": items},
                            headers={"X-Streamrec-Replica": ranked["replica"]})

    async def feedback(self, fb: FeedbackRequest) -> dict[str, str]:
        """A click (or purchase, like, ...) on an item of a served slate; joined to it by ``event_id``."""
        await self._emit(self.topics.feedback, fb.user_id,
                   encode(Feedback(fb.event_id, time.time(), fb.user_id, fb.item_id, fb.type, fb.value)))
        return {"status": "accepted"}

    def prometheus(self) -> str:
        st = self.replica.status()
        extra: dict[str, float] = {"events_without_kafka": self.events_without_kafka,
                                   "events_unacked_responses": self.unacked_responses,
                                   "policy_swaps": st["swaps"], "policy_refused": st["refused"],
                                   "policy_rollbacks": st["rollbacks"],
                                   "policy_version": float(st["version"] or 0),
                                   "policy_canary_version": float(st["canary"] or 0),
                                   "profiles_mirrored": st["profiles"] or 0,
                                   "catalog_items": st.get("catalog_items", 0), "catalog_swaps": st.get("catalog_swaps", 0)}
        if self.sink is not None:
            extra.update({f"events_{k}": v for k, v in self.sink.metrics().items()})
        return self.metrics.render(extra)

    def public_settings(self) -> dict[str, Any]:
        """The effective settings, secrets masked."""
        return self.settings.public_dict()

    def status(self) -> dict:
        return self.replica.status()

    def not_ready(self) -> str | None:
        return self.replica.not_ready()

    def check_health(self) -> None:
        self.replica.healthy()

    def __del__(self):
        self._stop.set()


def _message(e: Exception) -> str:
    """An actor's exception's own message (a Ray task error's ``cause``; its str has the traceback)."""
    return str(getattr(e, "cause", None) or e)


class ProfileStoreFinder:
    """The ProfileStore's ``changes_since``, found by name when first needed and found again when
    the store's actor is gone (the stream job stopped and was submitted again), so a replica that
    started before the stream, or outlived one, follows the live profiles."""

    def __init__(self, timeout_s: float = 30.0):
        self.timeout_s = timeout_s
        self._store: Blocking | None = None

    def changes_since(self, epoch, seq, limit):
        return self._call("changes_since", epoch, seq, limit)

    def prior(self):
        return self._call("prior")

    def _call(self, method: str, *args):
        if self._store is None:
            handle = registry.lookup(registry.PROFILES)
            if handle is None:
                raise LookupError(f"no ProfileStore {registry.PROFILES!r} yet (the stream job starts it)")
            self._store = Blocking(handle, timeout_s=self.timeout_s)
        try:
            return getattr(self._store, method)(*args)
        except Exception:
            self._store = None  # look it up again next time
            raise


def serve_http_host(timeout_s: float = 10.0) -> str | None:
    """``http_options.host`` of the running Serve instance (what its HTTP proxies bind), or None when
    no Serve controller is reachable. Ray 2.60 has no public call for it: this asks the controller
    with the call Ray's own replicas make (``get_http_config``)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return ray.get(controller.get_http_config.remote(), timeout=timeout_s).host
    except Exception:  # no Serve yet (the app is built before serve.start), or another Ray layout
        return None


def _validated(args: dict[str, Any]):
    """The settings (with the environment's overrides), refusing an open API: a non-loopback HTTP
    host of the running Serve instance without API keys, whoever deploys the app."""
    settings = settings_from_args(args)
    host = serve_http_host()
    if host is not None:
        require_keys_off_loopback(host, [k.get_secret_value() for k in settings.auth.api_keys])
    return settings


def build_app(args: dict[str, Any] | None = None):
    """Validate ``args`` (with the environment's overrides) now; replicas re-read them and the environment.

    Refuses (``AuthConfigError``) when Serve binds a non-loopback HTTP host and there are no API
    keys, for ``serve deploy``, KubeRay and ``streamrec up`` alike. Secrets from the environment
    (``STREAMREC_API_KEYS``) never travel through ``.bind()``: each replica reads them from its
    own environment.
    """
    args = dict(args or {})
    _validated(args)
    return Ranker.bind(args, ContextEncoder.bind(args))


def build_app_from_config(args: dict[str, Any], deployments: list[dict[str, Any]]):
    """``build_app`` with the per-deployment options of a Serve config's ``deployments:`` applied.

    What ``serve deploy ray_config.yaml`` does for the file; ``streamrec up`` runs the app this way.
    """
    _validated(args)
    opts = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in deployments}
    known = {"ContextEncoder", "Ranker"}
    unknown = set(opts) - known
    if unknown:
        raise ValueError(f"deployments: unknown deployment(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    enc = ContextEncoder.options(**opts.get("ContextEncoder", {})).bind(args)
    return Ranker.options(**opts.get("Ranker", {})).bind(args, enc)
