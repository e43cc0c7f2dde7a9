"""Stream job: the consumer group and the live profiles, writing the trainer's input, on any Ray cluster.

    ray job submit --working-dir . -- python -m cluster.jobs.stream --config ray_config.yaml

What ``streamrec up`` runs locally, for a cluster whose Serve app was deployed by KubeRay
(``serveConfigV2``) or ``serve deploy``: :func:`cluster.loop.start_stream` with the ProfileStore
as a named detached actor (Ranker replicas find it by name, :mod:`actors.registry`), and
``ingest.parallelism`` StreamIngest actors in one consumer group writing joined samples to the
samples topic (the training job reads it). It creates the loop's topics when they are missing.
The job runs until stopped (``ray job stop``), showing the ingest figures live; stopping it
stops ingest (committed offsets stay with the group, so the next run continues from there).
"""

from __future__ import annotations

import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    import ray
    from rich.live import Live

    from actors.registry import NAMESPACE
    from cluster.broker import ensure_topics, loop_topics
    from cluster.jobs import job_parser, job_settings, live_vectors, wait_for
    from cluster.loop import start_stream

    ap = job_parser("cluster.jobs.stream", __doc__)
    ap.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: until stopped)")
    args = ap.parse_args(argv)
    settings = job_settings(args.config, kafka=True)
    if settings is None:
        return 2
    k = settings.kafka
    try:
        ensure_topics(k.bootstrap_servers, loop_topics(k), replication_factor=k.replication_factor,
                      timeout_ms=k.request_timeout_ms, security=k.security)
    except Exception as e:  # a managed Kafka may allow no topic creation: they must exist already
        print(f"could not create the loop's topics ({type(e).__name__}: {e}); using them as they are", file=sys.stderr)
    ray.init(address=settings.ray.address or "auto", namespace=NAMESPACE, log_to_driver=False)
    found = wait_for(f"embeddings at {settings.embedding.output_dir} (the embedding job writes them)",
                     live_vectors(settings.embedding.output_dir), args.wait_s)
    if found is None:
        return 1
    ids, vectors = found
    stream = start_stream(settings, settings.kafka.bootstrap_servers, ids, vectors, detached=True)
    group, profiles = stream.ingest, stream.profiles
    started = time.monotonic()

    def line() -> str:
        try:
            ms = group.metrics()
        except (ray.exceptions.RayError, TimeoutError) as e:  # an actor restarting (its node lost): ingest goes on
            return f"ingest x{len(group.actors)}: an actor is restarting ({type(e).__name__})"
        return (f"ingest x{len(ms)}: {sum(m['events_per_s'] for m in ms):,.0f} events/s, "
                f"{sum(m['samples'] for m in ms):,} samples to {k.topics.samples}, dlq {sum(m['dlq'] for m in ms)}, "
                f"late {sum(m['late'] for m in ms)}")

    try:
        with Live(line(), refresh_per_second=1) as live:
            while not args.duration_s or time.monotonic() - started < args.duration_s:
                time.sleep(2)
                live.update(line())
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()
        ray.get(profiles.snapshot.remote())
    return 0


if __name__ == "__main__":
    sys.exit(main())
