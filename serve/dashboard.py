"""The live dashboard: what ``/dashboard`` draws and where each series comes from. No Serve here.

::

    GET /dashboard          the page (serve/static/dashboard.html; no data in it, so it needs no key)
    GET /dashboard/<asset>  the vendored uPlot build it draws with (works offline)
    GET /v1/dashboard       the data, behind the API keys: the page asks for a key when it gets 401

The series, each from the part of the loop that knows it:

- per round, from the trainer (:attr:`rl.trainer_loop.TrainerLoop.timeline`): CTR per arm with
  its interval, the lift over control, ILD and coverage per arm, the served version, the gate's
  decision with both estimates;
- the policy store's history: every version that went live, was refused or rolled back, and why
  (an algorithm arm's versions, one a round, as one line per run of them: :func:`history_rows`);
- per replica, every ``serve.dashboard_sample_s`` (:class:`ReplicaSeries`): this replica's request
  latency p50/p99 and rate, and the ingest actors' total lag and events/s.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from importlib import resources
from typing import Iterable

import numpy as np

__all__ = ["ReplicaSeries", "ingest_figures", "latency_figures", "history_rows", "asset", "json_safe", "ASSETS"]

#: Files under ``/dashboard/`` and their content types.
ASSETS = {"uplot.iife.min.js": "application/javascript", "uplot.min.css": "text/css",
          "dashboard.html": "text/html; charset=utf-8"}


def asset(name: str) -> bytes:
    """A dashboard file's bytes (KeyError for a name that is not one of :data:`ASSETS`)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("serve").joinpath("static", name).read_bytes()


def history_rows(entries: Iterable[dict]) -> list[dict]:
    """The store's history (oldest first) with each run of consecutive ``arm_version`` entries of
    one arm as a single row: its newest version, and the reason saying how many and from which."""
    out: list[dict] = []
    run: list[dict] = []

    def close() -> None:
        if len(run) > 1:
            out.append({**run[-1], "reason": f"{run[-1]['reason']}: {len(run)} versions, "
                                             f"v{run[0]['version']}-v{run[-1]['version']}"})
        elif run:
            out.append(run[0])
        run.clear()

    for e in entries:
        if e.get("action") == "arm_version" and run and run[-1].get("reason") == e.get("reason"):
            run.append(e)
            continue
        close()
        if e.get("action") == "arm_version":
            run.append(e)
        else:
            out.append(e)
    close()
    return out


def json_safe(x):
    """``x`` with every NaN or infinity as None and numpy scalars as Python numbers (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def latency_figures(seconds: Iterable[float]) -> dict:
    """p50 and p99 in milliseconds of request latencies (None for both when there were none)."""
    x = np.fromiter(seconds, np.float64)
    if not x.size:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(x, [50, 99]) * 1000
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def ingest_figures(metrics: Iterable[dict]) -> dict:
    """The ingest actors' metrics summed: total lag (records behind, over every partition) and events/s."""
    ms = list(metrics)
    if not ms:
        return {"ingest_lag": None, "ingest_events_per_s": None, "ingest_actors": 0}
    return {"ingest_lag": int(sum(sum((m.get("lag") or {}).values()) for m in ms)),
            "ingest_events_per_s": round(float(sum(m.get("events_per_s") or 0.0 for m in ms)), 1),
            "ingest_actors": len(ms)}


class ReplicaSeries:
    """One replica's samples, oldest first: each ``{ts, p50_ms, p99_ms, rps, ingest_lag,
    ingest_events_per_s}`` over the time since the sample before it. Request latencies go in
    with :meth:`record` (from any thread); :meth:`sample` closes an interval."""

    def __init__(self, points: int = 720, max_latencies: int = 50_000):
        self.points: deque[dict] = deque(maxlen=points)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=max_latencies)
        self._requests = 0
        self._since = time.time()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self._requests += 1

    def sample(self, ingest: dict | None = None, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        with self._lock:
            latencies, self._latencies = self._latencies, deque(maxlen=self._latencies.maxlen)
            requests, self._requests = self._requests, 0
            since, self._since = self._since, now
        point = {"ts": now, **latency_figures(latencies), "rps": round(requests / max(now - since, 1e-9), 2),
                 **(ingest or ingest_figures(()))}
        self.points.append(point)
        return point

    def since(self, ts: float) -> list[dict]:
        return [p for p in list(self.points) if p["ts"] > ts]
