"""The cluster-wide metrics table and the Grafana dashboard that reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamrec.telemetry import METRICS, Telemetry, exported_names

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "streamrec.json"


def _exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def test_the_dashboard_refers_only_to_exported_metrics_and_shows_every_one():
    used = {n for e in _exprs() for n in re.findall(r"\bray_streamrec_[a-z_]+", e)}
    assert used and used <= exported_names(), used - exported_names()
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n).removeprefix("ray_") for n in used}
    assert shown == set(METRICS), set(METRICS) - shown


def test_exported_names_follow_rays_prefix_and_type_suffixes():
    names = exported_names()
    assert {"ray_streamrec_requests_total", "ray_streamrec_request_seconds_bucket", "ray_streamrec_ingest_lag"} <= names
    assert "ray_streamrec_ingest_lag_total" not in names


class _Counter:
    def __init__(self):
        self.calls = []

    def inc(self, value, tags):
        self.calls.append((value, tags))


def test_add_counts_records_only_what_grew_since_the_last_call():
    t = Telemetry()
    c = t._made["streamrec_ingest_records"] = _Counter()
    before: dict = {}
    t.add_counts({"records": "streamrec_ingest_records"}, {"records": 10}, before, actor="a")
    t.add_counts({"records": "streamrec_ingest_records"}, {"records": 10}, before, actor="a")
    t.add_counts({"records": "streamrec_ingest_records"}, {"records": 25}, before, actor="a")
    assert c.calls == [(10.0, {"actor": "a"}), (15.0, {"actor": "a"})] and before == {"records": 25}
