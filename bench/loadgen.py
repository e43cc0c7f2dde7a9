"""A lean HTTP/1.1 load generator for bench/serve.py: pre-encoded requests over keep-alive sockets.

The server and the load generator share this machine's two cores, so the generator's own CPU per
request is taken from whatever it measures. httpx's AsyncClient spent ~4-5 ms of CPU a request
here, as much as the bare server's whole request; this one spends a fraction of a millisecond:
bodies are encoded before the clock starts and a response is read by its ``Content-Length`` (or
chunks). Latency is measured from each request's *scheduled* time in the open loop, so waiting for
a free connection counts (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from urllib.parse import urlsplit

__all__ = ["Connection", "open_loop", "closed_loop", "summarize"]


class Connection:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, body)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        reused = self._writer is not None
        try:
            head = await self._send(request)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            # A kept-alive connection the server closed while idle fails before any answer: the
            # request never reached it, so send it once more on a fresh connection (what browsers do).
            if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                raise
            self.close()
            head = await self._send(request)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in fields:
            data = await self._reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self._reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(p[:-2] for p in parts)
        else:
            data = await self._reader.read()
            self.close()
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, data

    async def _send(self, request: bytes) -> bytes:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(request)
        return await self._reader.readuntil(b"\r\n\r\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _target(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80


def summarize(latencies: list[float], codes: dict, wall_s: float, sent_at: list[float] | None = None) -> dict:
    """Percentiles of ``latencies`` (s); with ``sent_at`` (s from the start, one per latency) also the
    seconds whose p99 passed 50 ms, as {second: [p50_ms, p99_ms, n]}: where a tail comes from."""
    import numpy as np

    def pct(xs, q):
        return round(float(np.percentile(xs, q)) * 1000, 1) if len(xs) else None

    out = {"achieved_rps": round(codes.get(200, 0) / wall_s, 1), "p50_ms": pct(latencies, 50),
           "p95_ms": pct(latencies, 95), "p99_ms": pct(latencies, 99), "codes": {str(k): v for k, v in codes.items()}}
    if sent_at is not None and latencies:
        lat, sec = np.asarray(latencies), np.asarray(sent_at).astype(int)
        out["slow_seconds"] = {int(t): [pct(lat[sec == t], 50), pct(lat[sec == t], 99), int((sec == t).sum())]
                               for t in np.unique(sec) if np.percentile(lat[sec == t], 99) > 0.05}
    return out


@contextlib.contextmanager
def no_gc_pauses():
    """No cyclic-GC collection while load is generated: a full one in a process holding Ray and a
    torch model takes ~320 ms here, and every request scheduled meanwhile would count it."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def open_loop(url: str, path: str, bodies: list[bytes], rate: float, *, connections: int = 256,
                    timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> dict:
    """Send ``bodies`` at ``rate`` per second whatever the answers; latency p50/p95/p99 of the 200s."""
    host, port = _target(url)
    pool: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()  # the most recently used: still alive
    for _ in range(connections):
        pool.put_nowait(Connection(host, port, headers))
    lat: list[float] = []
    sent: list[float] = []
    codes: dict = {}

    async def one(body: bytes, scheduled: float) -> None:
        conn = await pool.get()
        try:
            status, _ = await asyncio.wait_for(conn.post(path, body), timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            status = type(e).__name__
            conn.close()
        pool.put_nowait(conn)
        codes[status] = codes.get(status, 0) + 1
        if status == 200:
            lat.append(time.perf_counter() - scheduled)
            sent.append(scheduled - start)

    tasks = []
    with no_gc_pauses():
        start = time.perf_counter()
        for i, body in enumerate(bodies):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, at)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return {"rate": rate, **summarize(lat, codes, wall, sent)}


async def closed_loop(url: str, path: str, bodies: list[bytes], concurrency: int, seconds: float, *,
                      warmup_s: float = 0.0, headers: dict[str, str] | None = None) -> float:
    """``concurrency`` clients, each sending its next request when the last is answered: 200s per
    second over ``seconds``, after ``warmup_s`` of the same load that is not counted (the time an
    autoscaler takes to answer it)."""
    host, port = _target(url)
    done = 0
    counted_from = time.perf_counter() + warmup_s
    stop = counted_from + seconds

    async def client(w: int) -> None:
        nonlocal done
        conn, i = Connection(host, port, headers), w
        try:
            while time.perf_counter() < stop:
                try:
                    status, _ = await conn.post(path, bodies[i % len(bodies)])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    conn.close()
                    continue
                done += status == 200 and time.perf_counter() >= counted_from
                i += concurrency
        finally:
            conn.close()

    with no_gc_pauses():
        await asyncio.gather(*(client(w) for w in range(concurrency)))
        return round(done / (time.perf_counter() - counted_from), 1)
