"""GCS fault tolerance, tested: the loop on a Ray head backed by Redis survives its GCS being killed.

The scenario (``gcs_ft_scenario.py``) runs in a process of its own with its own Ray head, Redis,
broker and Serve app, and reports counts; this test checks them.
"""

from __future__ import annotations

import shutil

import pytest

from tests.integration.scenarios import run_scenario

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (make test installs Debian's redis-server)")]


def test_killing_the_gcs_loses_no_request_no_event_and_no_named_actor():
    r = run_scenario("gcs_ft_scenario.py", timeout_s=600)
    for phase in ("before", "outage", "after"):  # replicas kept serving while the GCS was down
        assert set(r["requests"][phase]) == {"200"} and r["requests"][phase]["200"] >= 20, r["requests"]
    assert r["impressions_ingested"] == r["impressions_served"] > 0  # no event lost, none counted twice
    assert all(r["named_actors_answered"].values()) and len(r["named_actors_answered"]) == 3
    assert r["trainer_error"] is None and r["trainer_rounds"] >= 1
