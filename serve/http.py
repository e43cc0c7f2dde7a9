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
from serve.api import (ERRORS, Accepted, FeedbackRequest, GuardState, RecommendRequest, RecommendResponse, check_bearer,
                       validation_message)

__all__ = ["make_api", "error", "Guard", "OPEN_PATHS"]

OPEN_PATHS = {"/healthz", "/docs", "/openapi.json", "/dashboard"}
"""Paths answered without an API key (besides everything under ``/dashboard/``: the page's static
files). None of them carries data about users or the loop; ``/v1/dashboard`` does, and needs a key."""


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
            if (path not in OPEN_PATHS and not path.startswith("/dashboard/")
                    and not check_bearer(auth.decode("latin-1") if auth else None, state.keys)):
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

    @api.get("/v1/settings")
    def public_settings() -> dict[str, Any]:
        """The effective settings, secrets masked."""
        return ranker.public_settings()

    return api
