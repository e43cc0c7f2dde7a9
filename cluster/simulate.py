"""Simulated users driving the real HTTP API: ``streamrec up --simulate``.

Each simulated user asks ``POST /v1/recommend`` with their context (hour, age), decides what to
click with :class:`rl.simulators.SyntheticUsers`, and posts each click to ``POST /v1/feedback`` —
exactly what a client application would do. The click-through rate per served policy version is
kept so ``streamrec status`` shows the policy improving.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

import httpx
import numpy as np

from rl.simulators import SyntheticUsers, reactions

__all__ = ["HttpSimulator", "synthetic_users_for"]


def synthetic_users_for(settings) -> SyntheticUsers:
    """The simulator of the configured synthetic world (the simulator needs known tastes)."""
    from streamrec.data.synthetic import synthetic_items, synthetic_users

    c = settings.catalog
    if c.source != "synthetic":
        raise ValueError(f"--simulate needs catalog.source: synthetic (known user tastes), got {c.source!r}")
    return SyntheticUsers.from_tables(synthetic_items(0, c.num_items, c.seed), synthetic_users(c.num_users, c.seed),
                                      seed=c.seed)


class HttpSimulator:
    def __init__(self, base_url: str, sim: SyntheticUsers, *, rate_per_s: float = 20.0, k: int = 10,
                 api_key: str | None = None, seed: int = 0, concurrency: int = 4):
        self.base_url, self.sim, self.rate, self.k = base_url.rstrip("/"), sim, rate_per_s, k
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.seed, self.concurrency = seed, concurrency
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.by_version: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.recent: deque[float] = deque(maxlen=2_000)
        self.errors: dict[int | str, int] = defaultdict(int)
        self._threads: list[threading.Thread] = []

    def start(self) -> "HttpSimulator":
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, args=(i,), name=f"simulator-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _run(self, worker: int) -> None:
        rng = np.random.default_rng([self.seed, worker])
        period = self.concurrency / self.rate
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.step(client, rng)
                except httpx.HTTPError as e:
                    with self._lock:
                        self.errors[type(e).__name__] += 1
                self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def step(self, client: httpx.Client, rng: np.random.Generator) -> float | None:
        """One user visit: recommend, react, post every reaction. Returns 1.0/0.0 (clicked or not)."""
        u, user_id, ctx = self.sim.sample_user(rng)
        r = client.post("/v1/recommend", json={"user_id": user_id, "context": ctx, "k": self.k})
        if r.status_code != 200:
            with self._lock:
                self.errors[r.status_code] += 1
            return None
        body = r.json()
        items = [i["item_id"] for i in body["items"]]
        click_p = self.sim.click_probs(u, items, ctx)
        clicks = (rng.random(len(items)) < click_p).astype(np.float64)
        for pos, kind, value in reactions(click_p, clicks, rng):  # clicks, and dwell, likes, skips, ...
            client.post("/v1/feedback", json={"event_id": body["event_id"], "user_id": user_id,
                                              "item_id": items[pos], "type": kind, "value": value})
        clicked = float(clicks.max() > 0)
        with self._lock:
            v = self.by_version[body["policy_version"]]
            v[0] += 1
            v[1] += int(clicked)
            self.recent.append(clicked)
        return clicked

    def metrics(self) -> dict:
        with self._lock:
            versions = sorted(self.by_version.items(), key=lambda kv: int(kv[0]))
            return {"impressions": sum(v[0] for _, v in versions),
                    "ctr_recent": round(float(np.mean(self.recent)), 4) if self.recent else None,
                    "ctr_by_version": {k: {"impressions": v[0], "ctr": round(v[1] / v[0], 4)} for k, v in versions[-8:]},
                    "errors": dict(self.errors)}
