"""``build_app(args)``: the Serve application ``ray_config.yaml`` names (``serve.app:build_app``).

::

    HTTP -> Ranker (FastAPI: auth, limits, /v1/recommend, /v1/feedback, /healthz, /metrics, /docs)
              |-- ContextEncoder.encode(text)   (batched; a handle call only for a text not in the replica's LRU)
              |-- RankerCore.rank(...)          (in process: retrieval, profile, policy, exploration, version)
              '-- EventSink -> Kafka            (impression / feedback; never waited on)
            background thread: newer policy versions and changed user profiles (RankerCore.tick)

The Ranker is the HTTP ingress itself: ranking is a millisecond of numpy, and a separate
HTTP-only deployment in front of it cost more CPU per request (an extra handle call on each
side) than the ranking. Scaling Ranker replicas scales the HTTP layer with it; the encoder, the
one heavy model, stays its own autoscaling deployment with dynamic batching.

Serve calls ``build_app`` with the application's ``args``; they are validated first, so a bad
value fails the deploy with its key path instead of failing inside a replica. Deployment
options (autoscaling, ``max_ongoing_requests``, ``max_queued_requests``) come from the
``deployments:`` list of ``ray_config.yaml``; runtime knobs go through ``user_config``; weights
only ever come from the PolicyStore.
"""


import gc
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

import serve.api as contract
from serve.api import FeedbackRequest, RecommendRequest, RecommendResponse, check_bearer, validation_message
from serve.context_encoder import LRU, ContextEncoder
from serve.ranker import ProfileMirror, RankerCore
from streamrec.config import settings_from_args
from streamrec.events import Feedback, Impression, encode

__all__ = ["build_app", "build_app_from_config", "Ranker", "api"]

api = FastAPI(title="streamrec", version="1",
              description="A streaming recommender that learns while it serves. Send `Authorization: Bearer <key>` "
                          "when the server has API keys.")
OPEN_PATHS = {"/healthz", "/docs", "/openapi.json"}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, validation_message(exc.errors()))


class Guard:
    """API keys, body size, metrics — before any route runs. A plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` runs every request through an extra task and memory streams).

    A body without ``Content-Length`` (chunked) is read up to the limit and no further, then
    handed to the app as one message.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = contract.GUARD
        path = scope["path"]
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or ())
            auth = headers.get(b"authorization")
            if path not in OPEN_PATHS and not check_bearer(auth.decode("latin-1") if auth else None, state.keys):
                return await _error(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                    {"WWW-Authenticate": "Bearer"})(scope, receive, send_and_note)
            def too_big():
                return _error(413, f"request body larger than {state.max_body} bytes")(scope, receive, send_and_note)

            length = headers.get(b"content-length")
            if length is not None:
                if not length.isdigit() or int(length) > state.max_body:
                    return await too_big()
                return await self.app(scope, receive, send_and_note)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send_and_note)
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > state.max_body:
                    return await too_big()
                chunks.append(body)
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_and_note)
        finally:
            state.metrics.observe(path, status[0], time.perf_counter() - started)


api.add_middleware(Guard)


@serve.deployment(name="Ranker", ray_actor_options={"num_cpus": 0.2}, health_check_period_s=2,
                  health_check_timeout_s=10)
@serve.ingress(api)
class Ranker:
    def __init__(self, args: dict[str, Any], encoder: DeploymentHandle):
        import ray

        from actors.policy_store import NAMESPACE, get_or_create_store
        from streamrec.eventbus import make_event_sink

        self.settings = s = settings_from_args(args)  # env overrides (API keys) are read here, in the replica
        self.encoder = encoder
        self.contexts = LRU(s.serve.encoder_cache_size)  # text -> (d,) vector, as the encoder would answer
        contract.GUARD.keys = [k.get_secret_value().encode() for k in s.auth.api_keys]
        contract.GUARD.max_body = s.serve.max_body_bytes
        self.metrics = contract.GUARD.metrics
        k = s.kafka
        self.topics = k.topics
        self.sink = make_event_sink(k) if k.bootstrap_servers else None
        self.events_without_kafka = 0
        store = get_or_create_store(s.trainer.store_dir, s.trainer.keep_versions)  # the cluster's one store
        try:
            profiles = ray.get_actor("streamrec-profiles", namespace=NAMESPACE)
            mirror = ProfileMirror(lambda epoch, seq, limit: ray.get(
                profiles.changes_since.remote(epoch, seq, limit), timeout=30), s.serve.profile_mirror_users)
        except ValueError:
            mirror = None  # deployed without the stream: profiles from user text only
        self.core = RankerCore(s, store, mirror)
        self.poll_s = s.serve.policy_poll_s
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name="policy-and-profiles", daemon=True).start()
        # Everything imported and built so far lives as long as the replica: out of the cyclic GC's
        # reach, so a full collection scans only what requests leave behind (measured here: a full
        # collection of a process with Ray, Serve and FastAPI imported takes ~110 ms, with the
        # encoder model ~320 ms: a stall every request in flight waits out).
        gc.collect()
        gc.freeze()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.core.tick()

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (never weights): ``policy_poll_s``."""
        self.poll_s = float(user_config.get("policy_poll_s", self.poll_s))

    def _emit(self, topic: str, key: str, value: bytes) -> None:
        if self.sink is None:
            self.events_without_kafka += 1
        else:
            self.sink.send(topic, key, value)

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/recommend", response_model=RecommendResponse,
              responses={401: {}, 413: {}, 422: {}, 503: {}, 504: {}})
    async def recommend(self, req: RecommendRequest):
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
            ranked = self.core.rank(req.model_dump(exclude_none=True), vec)
        except BackPressureError:
            return _error(503, "overloaded: too many requests in flight, retry shortly", {"Retry-After": "1"})
        except ValueError as e:  # e.g. every candidate excluded: the request cannot be served as asked
            return _error(422, str(e).splitlines()[-1][:500])
        except RuntimeError as e:
            if "no policy" in str(e):
                return _error(503, "no policy version loaded yet, retry shortly", {"Retry-After": "2"})
            raise
        event_id = uuid.uuid4().hex
        context = req.context.model_dump(exclude_none=True) if req.context else {}
        self._emit(self.topics.impressions, req.user_id, encode(Impression(
            event_id, time.time(), req.user_id, tuple(ranked["items"]), tuple(ranked["propensities"]),
            ranked["policy_version"], context, ranked["features"])))
        items = [{"item_id": i, "score": s, "propensity": p, "position": j}
                 for j, (i, s, p) in enumerate(zip(ranked["items"], ranked["scores"], ranked["propensities"]))]
        return JSONResponse({"event_id": event_id, "policy_version": ranked["policy_version"], "items": items},
                            headers={"X-Streamrec-Replica": ranked["replica"]})

    @api.post("/v1/feedback", status_code=202, responses={401: {}, 413: {}, 422: {}})
    async def feedback(self, fb: FeedbackRequest) -> dict[str, str]:
        """A click (or purchase, like, ...) on an item of a served slate; joined to it by ``event_id``."""
        self._emit(self.topics.feedback, fb.user_id,
                   encode(Feedback(fb.event_id, time.time(), fb.user_id, fb.item_id, fb.type, fb.value)))
        return {"status": "accepted"}

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus(self) -> str:
        st = self.core.status()
        extra: dict[str, float] = {"events_without_kafka": self.events_without_kafka,
                                   "policy_swaps": st["swaps"], "policy_refused": st["refused"],
                                   "policy_version": float(st["version"] or 0),
                                   "policy_canary_version": float(st["canary"] or 0),
                                   "profiles_mirrored": st["profiles"] or 0}
        if self.sink is not None:
            extra.update({f"events_{k}": v for k, v in self.sink.metrics().items()})
        return self.metrics.render(extra)

    @api.get("/v1/settings")
    def public_settings(self) -> dict[str, Any]:
        """The effective settings, secrets masked."""
        return self.settings.public_dict()

    def status(self) -> dict:
        return self.core.status()

    def check_health(self) -> None:
        self.core.healthy()

    def __del__(self):
        self._stop.set()


def build_app(args: dict[str, Any] | None = None):
    """Validate ``args`` (with the environment's overrides) now; replicas re-read them and the environment.

    Secrets from the environment (``STREAMREC_API_KEYS``) never travel through ``.bind()``: each
    replica reads them from its own environment.
    """
    args = dict(args or {})
    settings_from_args(args)
    return Ranker.bind(args, ContextEncoder.bind(args))


def build_app_from_config(args: dict[str, Any], deployments: list[dict[str, Any]]):
    """``build_app`` with the per-deployment options of a Serve config's ``deployments:`` applied.

    What ``serve deploy ray_config.yaml`` does for the file; ``streamrec up`` runs the app this way.
    """
    settings_from_args(args)
    opts = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in deployments}
    known = {"ContextEncoder", "Ranker"}
    unknown = set(opts) - known
    if unknown:
        raise ValueError(f"deployments: unknown deployment(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    enc = ContextEncoder.options(**opts.get("ContextEncoder", {})).bind(args)
    return Ranker.options(**opts.get("Ranker", {})).bind(args, enc)
