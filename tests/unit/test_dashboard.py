"""The dashboard's pure parts: per-arm figures, the replica's series, JSON-safe values, the assets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl.metrics import ArmImpression, arm_figures
from serve.dashboard import ASSETS, ReplicaSeries, asset, history_rows, ingest_figures, json_safe, latency_figures


def test_arm_figures_exact():
    rows = ([ArmImpression("policy", True, 0.5, (1, 2))] * 3 + [ArmImpression("policy", False, 0.7, (2, 3))]
            + [ArmImpression("control", True, 0.9, (4, 5)), ArmImpression("control", False, 0.9, (5, 6))])
    out = arm_figures(rows, catalog_size=10)
    p, c = out["policy"], out["control"]
    assert p["impressions"] == 4 and p["clicked"] == 3 and p["ctr"] == 0.75 and c["ctr"] == 0.5
    half = 1.96 * math.sqrt(0.75 * 0.25 / 4)
    assert p["low"] == pytest.approx(0.75 - half) and p["high"] == 1.0  # clipped to [0, 1]
    assert p["ild"] == pytest.approx((3 * 0.5 + 0.7) / 4) and p["coverage"] == 0.3 and c["coverage"] == 0.3
    se = math.sqrt(0.75 * 0.25 / 4 + 0.5 * 0.5 / 2)
    assert p["lift"]["lift"] == pytest.approx(0.25) and p["lift"]["low"] == pytest.approx(0.25 - 1.96 * se)
    assert c["lift"] is None


def test_arm_figures_without_control_have_no_lift_and_refuse_an_empty_catalog():
    out = arm_figures([ArmImpression("b", False, 0.1, ("x",))], catalog_size=1)
    assert out["b"]["lift"] is None and out["b"]["ctr"] == 0.0 and out["b"]["coverage"] == 1.0
    with pytest.raises(ValueError, match="catalog_size must be >= 1, got 0"):
        arm_figures([], catalog_size=0)


def test_replica_series_samples_latency_and_rate_per_interval():
    s = ReplicaSeries(points=2)
    s._since = 100.0
    for ms in range(1, 101):
        s.record(ms / 1000)
    p = s.sample({"ingest_lag": 7, "ingest_events_per_s": 3.0, "ingest_actors": 1}, now=110.0)
    assert p["rps"] == 10.0 and p["p50_ms"] == pytest.approx(50.5) and p["p99_ms"] == pytest.approx(99.01)
    assert p["ingest_lag"] == 7
    q = s.sample(now=120.0)  # nothing since: no percentiles, no ingest figures
    assert q["p50_ms"] is None and q["rps"] == 0.0 and q["ingest_lag"] is None
    s.sample(now=130.0)
    assert [x["ts"] for x in s.points] == [120.0, 130.0]  # the last `points` only
    assert [x["ts"] for x in s.since(120.0)] == [130.0]


def test_ingest_figures_sum_every_actor_and_partition():
    out = ingest_figures([{"lag": {"a:0": 3, "a:1": 4}, "events_per_s": 10.0}, {"lag": {}, "events_per_s": 2.5}])
    assert out == {"ingest_lag": 7, "ingest_events_per_s": 12.5, "ingest_actors": 2}
    assert latency_figures([]) == {"p50_ms": None, "p99_ms": None}


def test_json_safe_turns_nan_and_numpy_into_json():
    x = json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(2), np.bool_(True), float("inf")], 3: None})
    assert x == {"a": None, "b": [1.5, 2, True, None], "3": None}
    assert type(x["b"][1]) is int and type(x["b"][2]) is bool


def test_the_page_and_the_vendored_chart_library_ship_with_the_package():
    assert b"uPlot" in asset("uplot.iife.min.js") and b"/v1/dashboard" in asset("dashboard.html")
    assert set(ASSETS) == {"uplot.iife.min.js", "uplot.min.css", "dashboard.html"}
    with pytest.raises(KeyError):
        asset("../app.py")


def test_the_history_shows_a_run_of_an_arms_versions_as_one_row():
    arm = [{"ts": float(v), "action": "arm_version", "version": v, "reason": "e/ucb (linucb)"} for v in (4, 5, 7)]
    other = {"ts": 6.0, "action": "arm_version", "version": 6, "reason": "e/ts (thompson)"}
    rows = history_rows([{"ts": 1.0, "action": "publish", "version": 2, "reason": "first version"},
                         *arm[:2], {"ts": 5.5, "action": "publish", "version": 3, "reason": "gate"}, other, arm[2]])
    assert [(r["action"], r["version"]) for r in rows] == [
        ("publish", 2), ("arm_version", 5), ("publish", 3), ("arm_version", 6), ("arm_version", 7)]
    assert rows[1]["reason"] == "e/ucb (linucb): 2 versions, v4-v5" and rows[4]["reason"] == "e/ucb (linucb)"
    assert history_rows([]) == []
