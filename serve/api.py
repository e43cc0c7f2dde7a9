"""The HTTP contract: request/response models, limits, API keys, error bodies, Prometheus text. No Serve here.

Every error is JSON ``{"error": "<message naming the field>"}`` with a 4xx status: 401 missing
or wrong key (an admin key on ``/v1/admin/...`` when ``auth.admin_keys`` is set), 413 body too large, 422 invalid or unknown fields (FastAPI's validation, rewritten
so the message names the field path), 503 overloaded, not ready yet or its replica lost (the
message says which) with ``Retry-After``; the ingress answers its own 503/504 in the same shape
(``serve/haproxy_ingress.py``). Keys are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
from typing import Annotated, Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rl.experiment import ARM_ALGORITHMS
from streamrec.events import FEEDBACK_TYPES, MAX_ID_CHARS

__all__ = ["RecommendRequest", "RequestContext", "FeedbackRequest", "RecommendResponse", "RankedItem", "ErrorBody",
           "Accepted", "ERRORS",
           "validation_message", "check_bearer", "bearer_index", "ArmRequest", "ExperimentRequest", "ExperimentStatus",
           "ADMIN_ERRORS", "is_loopback", "require_keys_off_loopback", "Metrics",
           "AuthConfigError", "GuardState"]

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class _Strict(BaseModel):
    """Unknown fields are refused, and types are strict: no booleans or strings for numbers."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RequestContext(_Strict):
    """Typed request context; ``text`` is free text the ContextEncoder embeds."""

    text: str | None = Field(None, max_length=4096)
    hour: float | None = Field(None, ge=0, lt=24)
    """Local hour of the request (0-24); defaults to the server's UTC hour."""
    age: int | None = Field(None, ge=1, le=129)
    gender: Literal["female", "male", "other"] | None = None
    device: Literal["mobile", "desktop", "tv", "tablet", "other"] | None = None
    locale: str | None = Field(None, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", max_length=35)
    """BCP 47 tag such as ``en-US``; its language is a feature."""

    @field_validator("text")
    @classmethod
    def _text_bytes(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) > 4096:
            raise ValueError("text must be at most 4096 bytes of UTF-8")
        return v


class RecommendRequest(_Strict):
    user_id: Id
    context: RequestContext | None = None
    k: int = Field(10, ge=1, le=100)
    """Items in the slate (at most 100)."""
    candidates: list[Id] | None = Field(None, min_length=1, max_length=10_000)
    """Rank only these items (at most 10,000); default: retrieval over the catalog."""
    exclude: list[Id] = Field(default_factory=list, max_length=10_000)
    """Never return these items (e.g. already seen)."""


class FeedbackRequest(_Strict):
    event_id: Id
    user_id: Id
    """The user the slate was served to: the Kafka key, so feedback lands in its impression's partition."""
    item_id: Id
    type: Literal[FEEDBACK_TYPES] = "click"  # type: ignore[valid-type]
    value: float = 1.0

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v


class RankedItem(BaseModel):
    item_id: str
    score: float
    propensity: float
    """Probability of this item at this position given the ones above it, under the serving policy."""
    position: int


class RecommendResponse(BaseModel):
    event_id: str
    policy_version: int
    items: list[RankedItem]


class ArmRequest(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Not ``policy`` or ``control`` (the live version and the control arm)."""
    version: int | None = Field(None, ge=1)
    """A stored policy version (or give ``algorithm``)."""
    algorithm: Literal[ARM_ALGORITHMS] | None = None
    """Instead of a version: the trainer trains this algorithm for the arm beside the live lineage
    on the same samples, and the arm serves its newest version (its users see the live version
    until the first is stored)."""
    share: float = Field(gt=0, lt=1)
    """Share of users in this arm (sticky per user)."""
    shadow: bool = False
    """Compute this arm's slate beside the live one's and log it; never show it."""


class ExperimentRequest(_Strict):
    """An operator's experiment (rl/experiment.py): arms of stored versions or algorithms, with user
    shares that add up to < 1."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    arms: list[ArmRequest] = Field(min_length=1, max_length=20)
    salt: str | None = Field(None, max_length=64)
    """The assignment hash's salt (default: the name)."""


class ExperimentStatus(BaseModel):
    experiment: dict | None
    """The running experiment as stored (name, salt, started, arms), or null."""
    figures: dict | None = None
    """The trainer's per-arm figures over its lift window (impressions, CTR with its interval, ILD,
    coverage, lift over control; shadow arms' slates and overlap; under ``algorithm_arms``, each
    algorithm arm's samples trained on and version stored), or null before the first round."""


class ErrorBody(BaseModel):
    """Every error the API answers: one message naming the field or the condition."""

    error: str


class Accepted(BaseModel):
    status: Literal["accepted"]


_E = {"model": ErrorBody}
#: status -> OpenAPI response of every error a route can answer (``Retry-After`` with 503)
ERRORS: dict[int, dict] = {
    400: {**_E, "description": "The body is not JSON"},
    401: {**_E, "description": "Missing or wrong API key (Authorization: Bearer <key>)"},
    408: {**_E, "description": "Not answered within http_options.request_timeout_s"},
    413: {**_E, "description": "Body larger than serve.max_body_bytes"},
    422: {**_E, "description": "A field is missing, unknown, of the wrong type or out of range; "
                               "or every candidate is excluded"},
    503: {**_E, "description": "Overloaded, not ready (no embeddings yet, no policy yet: the body says which), "
                   "or the replica answering it was lost: retry after Retry-After seconds"},
    504: {**_E, "description": "The ingress stopped waiting for the replica (serve.mode throughput, "
                               "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S; unset, it waits)"},
}
#: the admin routes' errors (401: an admin key when ``auth.admin_keys`` is set)
ADMIN_ERRORS: dict[int, dict] = {
    **{s: ERRORS[s] for s in (400, 401, 413, 422)},
    404: {**_E, "description": "No experiment is running"},
    409: {**_E, "description": "An experiment is already running: stop it first"},
    503: {**_E, "description": "The policy store did not answer: retry after Retry-After seconds"},
}


def validation_message(errors: Sequence[dict]) -> str:
    """FastAPI/pydantic errors -> one message naming each field path, e.g. ``body.k: ... <= 100``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class AuthConfigError(RuntimeError):
    """The HTTP server would be reachable beyond this machine without API keys."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_keys_off_loopback(host: str, keys: Sequence[str]) -> None:
    if not is_loopback(host) and not keys:
        raise AuthConfigError(f"http host {host!r} is not loopback: set STREAMREC_API_KEYS (auth.api_keys) "
                              f"or bind 127.0.0.1")


def check_bearer(header: str | None, keys: Sequence[bytes]) -> bool:
    """True when ``Authorization: Bearer <key>`` names one of ``keys`` (or there are none); constant time over all keys."""
    return not keys or bearer_index(header, keys) is not None


def bearer_index(header: str | None, keys: Sequence[bytes]) -> int | None:
    """Which of ``keys`` ``Authorization: Bearer <key>`` names (its position), or None; constant time over all keys."""
    if not header or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer "):].strip().encode()
    found = None
    for i, k in enumerate(keys):  # no early exit: the time does not depend on which key matched
        if hmac.compare_digest(given, k):
            found = i
    return found


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text (one per Ranker replica)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))

    def __init__(self, export=None):
        """``export``: a :class:`streamrec.telemetry.Telemetry` that also records each request
        through Ray's metrics API (cluster-wide), or None."""
        self.export = export
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency = {b: 0 for b in self.BUCKETS}
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, float] = {}
        self.series = None
        """A :class:`serve.dashboard.ReplicaSeries` that also takes each recommend latency, or None."""

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            if route == "/v1/recommend":
                for b in self.BUCKETS:
                    if seconds <= b:
                        self.latency[b] += 1
                self.latency_sum += seconds
                self.latency_count += 1
        if self.series is not None and route == "/v1/recommend":
            self.series.record(seconds)
        if self.export is not None:
            self.export.inc("streamrec_requests", route=route, status=status)
            self.export.observe("streamrec_request_seconds", seconds, route=route)

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = float(value)

    def render(self, extra: dict[str, Any] | None = None) -> str:
        lines = ["# TYPE streamrec_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'streamrec_requests_total{{route="{route}",status="{status}"}} {n}')
            lines.append("# TYPE streamrec_recommend_seconds histogram")
            for b in self.BUCKETS:
                le = "+Inf" if b == float("inf") else f"{b}"
                lines.append(f'streamrec_recommend_seconds_bucket{{le="{le}"}} {self.latency[b]}')
            lines.append(f"streamrec_recommend_seconds_sum {self.latency_sum:.6f}")
            lines.append(f"streamrec_recommend_seconds_count {self.latency_count}")
            for name, v in sorted({**self.gauges, **(extra or {})}.items()):
                lines.append(f"# TYPE streamrec_{name} gauge")
                lines.append(f"streamrec_{name} {v}")
        return "\n".join(lines) + "\n"


class GuardState:
    """What the HTTP guard checks (keys, body limit) and counts (metrics) for one Ranker replica."""

    def __init__(self, keys: Sequence[bytes] = (), max_body: int = 1_000_000, admin_keys: Sequence[bytes] = ()):
        self.keys: list[bytes] = list(keys)
        self.admin_keys: list[bytes] = list(admin_keys)
        """The admin routes' keys (``auth.admin_keys``); empty: the API keys."""
        self.max_body = max_body
        self.metrics = Metrics()
