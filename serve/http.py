"""The HTTP layer of a Ranker replica: ``make_api(ranker, guard)`` builds its FastAPI app.

Each replica builds its own app at start (Serve's late-bound ingress), so the guard's keys,
limits and metrics belong to that replica and nothing is shared through a module global. The
routes only parse, call the replica and shape the answer; :class:`serve.app.Ranker` does the work.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.dashboard import ASSETS, asset
from serve.api import (ADMIN_ERRORS, ERRORS, Accepted, ExperimentRequest, ExperimentStatus, FeedbackRequest, GuardState,
                       RecommendRequest, RecommendResponse, bearer_index, check_bearer, validation_message)

__all__ = ["make_api", "error", "Guard", "OPEN_PATHS", "ADMIN_PREFIX", "operator_of"]

OPEN_PATHS = {"/healthz", "/docs", "/openapi.json", "/dashboard"}
"""Paths answered without an API key (besides everything under ``/dashboard/``: the page's static
files). None of them carries data about users or the loop; ``/v1/dashboard`` does, and needs a key."""


ADMIN_PREFIX = "/v1/admin/"
"""Routes for operators: with ``auth.admin_keys`` set they take only those keys."""


def operator_of(request: Request, guard: GuardState) -> str:
    """Who made an admin call, for the store's history: the admin key's position (never the key)
    and the ``X-Streamrec-Operator`` header when given."""
    header = request.headers.get("authorization")
    keys, kind = (guard.admin_keys, "admin key") if guard.admin_keys else (guard.keys, "API key")
    i = bearer_index(header, keys) if keys else None
    who = f"{kind} {i + 1}" if i is not None else "an operator on an API without keys"
    named = (request.headers.get("x-streamrec-operator") or "").strip()[:64]
    return f"{named} ({who})" if named else who


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Every error the API answers: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Handlers(Protocol):
    async def recommend(self, req: RecommendRequest) -> JSONResponse: ...

    async def feedback(self, fb: FeedbackRequest) -> dict[str, str]: ...

    def prometheus(self) -> str: ...

    def public_settings(self) -> dict[str, Any]: ...

    def not_ready(self) -> str | None: ...

    async def dashboard(self, since: float) -> dict[str, Any]: ...

    async def experiment(self, action: str, *args) -> JSONResponse: ...


class Guard:
    """API keys, body size, metrics — before any route runs. A plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` runs every request through an extra task and memory streams).

    A body without ``Content-Length`` (chunked) is read up to the limit and no further, then
    handed to the app as one message.
    """

    def __init__(self, app, state: GuardState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = self.state
        path = scope["path"]
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or ())
            auth = headers.get(b"authorization")
            header = auth.decode("latin-1") if auth else None
            if path.startswith(ADMIN_PREFIX) and state.admin_keys:
                if bearer_index(header, state.admin_keys) is None:
                    return await error(401, "missing or wrong admin key (Authorization: Bearer <admin key>)",
                                       {"WWW-Authenticate": "Bearer"})(scope, receive, send_and_note)
            elif path not in OPEN_PATHS and not path.startswith("/dashboard/") and not check_bearer(header, state.keys):
                return await error(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                   {"WWW-Authenticate": "Bearer"})(scope, receive, send_and_note)

            def too_big():
                return error(413, f"request body larger than {state.max_body} bytes")(scope, receive, send_and_note)

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


def make_api(ranker: Handlers, guard: GuardState) -> FastAPI:
    api = FastAPI(title="streamrec", version="1",
                  description="A streaming recommender that learns while it serves. Send `Authorization: Bearer <key>` "
                              "when the server has API keys.")

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error(400, "the body is not valid JSON")
        return error(422, validation_message(exc.errors()))

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405, a body that cannot be read
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    api.add_middleware(Guard, state=guard)

    @api.get("/healthz", responses={503: ERRORS[503]})
    def healthz():
        """``{"status": "ok"}`` when this replica can rank; 503 with the reason while it waits for
        the embeddings or the first policy version."""
        why = ranker.not_ready()
        if why is not None:
            return error(503, why, {"Retry-After": "2"})
        return {"status": "ok"}

    @api.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS)
    async def recommend(req: RecommendRequest):
        """A slate of ``k`` items for ``user_id``, with the policy version and each item's propensity."""
        return await ranker.recommend(req)

    @api.post("/v1/feedback", status_code=202, response_model=Accepted,
              responses={s: r for s, r in ERRORS.items() if s != 503})
    async def feedback(fb: FeedbackRequest) -> dict[str, str]:
        """A click (or purchase, like, ...) on an item of a served slate; joined to it by ``event_id``."""
        return await ranker.feedback(fb)

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return ranker.prometheus()

    @api.get("/v1/dashboard", responses={s: ERRORS[s] for s in (401, 422)})
    async def dashboard_data(since: float = Query(0.0, ge=0, description="Only points after this time (epoch seconds)")):
        """The dashboard's series: per training round (CTR per arm, lift over control, ILD,
        coverage, served version, gate decision), the policy store's history, and this replica's
        latency, request rate and the ingest lag (serve/dashboard.py)."""
        return await ranker.dashboard(since)

    @api.get("/dashboard", include_in_schema=False)
    def dashboard_page() -> Response:
        return Response(asset("dashboard.html"), media_type=ASSETS["dashboard.html"])

    @api.get("/dashboard/{name}", include_in_schema=False)
    def dashboard_file(name: str) -> Response:
        if name not in ASSETS:
            return error(404, f"no dashboard file {name!r}")
        return Response(asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=3600"})

    @api.get("/v1/admin/experiment", response_model=ExperimentStatus, responses=ADMIN_ERRORS)
    async def experiment_status():
        """The running experiment and the trainer's per-arm figures."""
        return await ranker.experiment("status")

    @api.put("/v1/admin/experiment", status_code=201, response_model=ExperimentStatus, responses=ADMIN_ERRORS)
    async def experiment_start(body: ExperimentRequest, request: Request):
        """Start an experiment: arms of stored versions or of algorithms the trainer trains for
        them, each served to (or, ``shadow``, computed for) a sticky share of users; every replica
        follows it. 409 while one runs."""
        return await ranker.experiment("start", body.model_dump(exclude_none=True), operator_of(request, guard))

    @api.delete("/v1/admin/experiment", response_model=ExperimentStatus, responses=ADMIN_ERRORS)
    async def experiment_stop(request: Request, reason: str = Query("stopped", min_length=1, max_length=200)):
        """Stop the running experiment (404 when none runs); its users see the live version again."""
        return await ranker.experiment("stop", reason, operator_of(request, guard))

    @api.get("/v1/settings")
    def public_settings() -> dict[str, Any]:
        """The effective settings, secrets masked."""
        return ranker.public_settings()

    return api
