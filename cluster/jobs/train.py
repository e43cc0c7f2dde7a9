"""Training job: run (or attach to) the Trainer, reading the samples topic the stream job writes.

    ray job submit --working-dir . -- python -m cluster.jobs.train --config ray_config.yaml [--duration-s 600]
    python -m cluster.jobs.train --rollback            # serve the previous good version again

It joins the cluster (``RAY_ADDRESS``) and starts the PolicyStore (created if missing) and the
named Trainer through :func:`cluster.loop.start_learning` — or attaches to the ones ``streamrec up``
started. The Trainer resumes from its checkpoint (``trainer.checkpoint_dir``: the weights it
trained and its position in the samples topic), so resubmitting the job after a crash trains every
sample once. It may start before the stream job: it reads the topic once it exists. Progress is a
live table.
"""

from __future__ import annotations

import json
import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    import ray
    from rich.live import Live
    from rich.table import Table

    from actors import registry
    from cluster.jobs import job_parser, job_settings, live_vectors, wait_for
    from cluster.loop import start_learning

    ap = job_parser("cluster.jobs.train", __doc__)
    ap.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: until interrupted)")
    ap.add_argument("--rollback", action="store_true", help="roll the store back one version and exit")
    ap.add_argument("--reason", default="operator rollback", help="why (recorded in the store's history)")
    args = ap.parse_args(argv)
    settings = job_settings(args.config, kafka=True)
    if settings is None:
        return 2
    ray.init(address=settings.ray.address or "auto", namespace=registry.NAMESPACE, log_to_driver=False)
    found = wait_for(f"embeddings at {settings.embedding.output_dir} (the embedding job writes them)",
                     live_vectors(settings.embedding.output_dir), args.wait_s)
    if found is None:
        return 1
    trainer = start_learning(settings, settings.kafka.bootstrap_servers, detached=True).trainer  # reads the vectors itself
    if args.rollback:
        print(json.dumps(ray.get(trainer.rollback.remote(None, args.reason))))
        return 0
    started = time.monotonic()

    def table(m: dict) -> Table:
        tb = Table(title=f"streamrec trainer ({m['algorithm']})")
        for col in ("serving version", "rounds", "samples", "published", "held back", "last gate", "error"):
            tb.add_column(col)
        last = m.get("last") or {}
        tb.add_row(str(m["serving_version"]), str(m["rounds"]), str(m["samples"]), str(m["published"]),
                   str(m["rejected"]), last.get("why", "-"), m.get("error") or "")
        return tb

    def current() -> dict:
        try:
            return ray.get(trainer.metrics.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as e:  # restarting (its node lost): it resumes by itself
            return {"algorithm": "?", "serving_version": "?", "rounds": "-", "samples": "-", "published": "-",
                    "rejected": "-", "error": f"restarting ({type(e).__name__})"}

    try:
        with Live(table(current()), refresh_per_second=1) as live:
            while not args.duration_s or time.monotonic() - started < args.duration_s:
                time.sleep(2)
                live.update(table(current()))
    except KeyboardInterrupt:
        pass
    print(json.dumps({k: v for k, v in ray.get(trainer.metrics.remote()).items() if k != "last"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
