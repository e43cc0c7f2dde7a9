"""The loop's metrics, cluster-wide: recorded through Ray's metrics API, exported by every node.

Each process records with a :class:`Telemetry` (ingest actors, the trainer, every Ranker
replica); Ray's metrics agent on each node exports what its processes recorded, and Prometheus
finds every node through the service-discovery file the head writes
(``/tmp/ray/prom_metrics_service_discovery.json``), so one scrape config sees the whole cluster
and no route through a load balancer is involved. Ray prefixes every name with ``ray_``;
counters gain ``_total`` (``streamrec_requests`` is ``ray_streamrec_requests_total``).

:data:`METRICS` is the one table of what is exported; ``deploy/grafana/streamrec.json`` refers
only to names in it (tested). The per-replica ``/metrics`` route of the API stays as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["MetricDef", "METRICS", "Telemetry", "exported_names"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str
    """``counter``, ``gauge`` or ``histogram``."""
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, MetricDef] = {d.name: d for d in (
    # serving (every Ranker replica)
    MetricDef("streamrec_requests", "counter", "HTTP requests answered, by route and status", ("route", "status")),
    MetricDef("streamrec_request_seconds", "histogram", "Time to answer a request, by route", ("route",),
              LATENCY_BUCKETS),
    MetricDef("streamrec_served_version", "gauge", "Policy version each replica serves (role: live or canary)",
              ("replica", "role")),
    MetricDef("streamrec_catalog_items", "gauge", "Items of the catalog version each replica serves", ("replica",)),
    # ingest (every StreamIngest actor)
    MetricDef("streamrec_ingest_records", "counter", "Records read from the impressions and feedback topics", ("actor",)),
    MetricDef("streamrec_ingest_samples", "counter", "Joined samples written to the samples topic", ("actor",)),
    MetricDef("streamrec_ingest_dead_letters", "counter", "Malformed records sent to the dead-letter topic", ("actor",)),
    MetricDef("streamrec_ingest_late_feedback", "counter", "Feedback that came after its impression's window", ("actor",)),
    MetricDef("streamrec_ingest_orphan_feedback", "counter", "Feedback whose impression never came", ("actor",)),
    MetricDef("streamrec_ingest_lag", "gauge", "Records not yet read, per topic/partition", ("partition",)),
    MetricDef("streamrec_join_hit_rate", "gauge", "Share of feedback joined to its impression", ("actor",)),
    # training
    MetricDef("streamrec_trainer_rounds", "counter", "Training rounds run"),
    MetricDef("streamrec_trainer_samples", "counter", "Samples the lineage took from the samples topic"),
    MetricDef("streamrec_gate_decisions", "counter",
              "Gate decisions: published, rejected, deferred, rolled_back", ("decision",)),
    MetricDef("streamrec_gate_estimate", "gauge",
              "The last gate's off-policy CTR estimate (policy: candidate or live; bound: value, low, high)",
              ("policy", "bound")),
    MetricDef("streamrec_trainer_serving_version", "gauge", "The version the trainer knows as live"),
    MetricDef("streamrec_arm_ctr", "gauge", "CTR per arm (policy, control) over trainer.lift_window impressions",
              ("arm",)),
    MetricDef("streamrec_lift", "gauge", "The policy's CTR minus the control arm's (bound: value, low, high; 95%)",
              ("bound",)),
)}


def exported_names() -> set[str]:
    """Every series name Prometheus sees for :data:`METRICS` (Ray's prefix and the type suffixes)."""
    out = set()
    for d in METRICS.values():
        base = f"ray_{d.name}"
        if d.kind == "counter":
            out.add(f"{base}_total")
        elif d.kind == "histogram":
            out.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        else:
            out.add(base)
    return out


class Telemetry:
    """Records :data:`METRICS` through ``ray.util.metrics`` (each metric made on first use, in this
    process). Outside a Ray worker, or where Ray refuses, it records nothing and says so once."""

    def __init__(self):
        self._made: dict[str, Any] = {}
        self._off = False

    def _metric(self, name: str):
        m = self._made.get(name)
        if m is None and not self._off:
            d = METRICS[name]  # a name not in the table is a bug: KeyError
            try:
                from ray.util import metrics

                if d.kind == "counter":
                    m = metrics.Counter(d.name, d.description, tag_keys=d.tags)
                elif d.kind == "gauge":
                    m = metrics.Gauge(d.name, d.description, tag_keys=d.tags)
                else:
                    m = metrics.Histogram(d.name, d.description, boundaries=list(d.boundaries), tag_keys=d.tags)
            except Exception as e:  # no Ray here (unit tests, the bare-process bench)
                log.info("metrics not exported: %s", e)
                self._off = True
                return None
            self._made[name] = m
        return m

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        m = self._metric(name)
        if m is not None and value > 0:
            m.inc(value, tags={k: str(v) for k, v in tags.items()})

    def set(self, name: str, value: float, **tags: Any) -> None:
        m = self._metric(name)
        if m is not None:
            m.set(float(value), tags={k: str(v) for k, v in tags.items()})

    def observe(self, name: str, value: float, **tags: Any) -> None:
        m = self._metric(name)
        if m is not None:
            m.observe(float(value), tags={k: str(v) for k, v in tags.items()})

    def add_counts(self, names: dict[str, str], now: dict[str, float], before: dict[str, float], **tags: Any) -> None:
        """Counters from cumulative counts: ``names`` maps a key of ``now`` to a metric; each gets
        ``now[key] - before[key]`` (``before`` is updated)."""
        for key, metric in names.items():
            delta = float(now.get(key, 0)) - float(before.get(key, 0))
            if delta > 0:
                self.inc(metric, delta, **tags)
                before[key] = now.get(key, 0)
