"""Entrypoints for ``ray job submit`` (embed, stream, train), sharing one way to read their arguments."""

from __future__ import annotations

import argparse
import sys

__all__ = ["job_parser", "job_settings", "live_vectors", "wait_for"]


def job_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--config`` (ray_config.yaml with streamrec's args inside)."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="ray_config.yaml (streamrec args inside)")
    ap.add_argument("--wait-s", type=float, default=3600.0,
                    help="how long to wait for what the job needs (embeddings, the stream) before giving up")
    return ap


def job_settings(config: str | None, *, kafka: bool = False):
    """The validated settings, or None after printing ``config error: <key path>: <reason>``.
    ``kafka``: the job talks to the broker, so ``kafka.bootstrap_servers`` must name one (a job on
    a cluster never starts the embedded broker)."""
    from streamrec.config import ConfigError, default_config_path, load_settings

    try:
        settings = load_settings(config or default_config_path())
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None
    if kafka and not settings.kafka.bootstrap_servers:
        print("config error: kafka.bootstrap_servers (or STREAMREC_KAFKA_BOOTSTRAP) is required on a cluster",
              file=sys.stderr)
        return None
    return settings


def wait_for(what: str, probe, timeout_s: float, every_s: float = 5.0):
    """``probe()`` until it returns something other than None, saying every ``every_s`` what the job
    waits for (jobs submitted together start in any order); None after ``timeout_s``."""
    import time

    started = time.monotonic()
    said = -every_s
    while True:
        got = probe()
        if got is not None:
            return got
        waited = time.monotonic() - started
        if waited >= timeout_s:
            print(f"gave up after {waited:.0f} s waiting for {what}", file=sys.stderr, flush=True)
            return None
        if waited - said >= every_s * 6 or said < 0:
            print(f"waiting for {what} ({waited:.0f} s)", flush=True)
            said = waited
        time.sleep(every_s)


def live_vectors(output_dir: str):
    """A probe for :func:`wait_for`: the live embedding run's (ids, vectors), None before the first."""
    from streamrec.vectors import load_vectors

    def probe():
        try:
            ids, vectors, _ = load_vectors(output_dir)
            return ids, vectors
        except FileNotFoundError:
            return None

    return probe
