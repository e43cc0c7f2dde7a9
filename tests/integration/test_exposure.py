"""The app enforces its own rule: no open API. Serve on a non-loopback host without API keys makes
``build_app`` (what ``serve deploy``, KubeRay and ``streamrec up`` all call) refuse."""

from __future__ import annotations


import pytest

from tests.integration.scenarios import run_scenario

pytestmark = pytest.mark.integration


def test_build_app_refuses_a_non_loopback_host_without_keys():
    r = run_scenario("exposure_scenario.py", timeout_s=300)
    assert r["host_before_serve"] is None and r["host"] == "0.0.0.0"
    message = "http host '0.0.0.0' is not loopback: set STREAMREC_API_KEYS (auth.api_keys) or bind 127.0.0.1"
    assert r["build_app"] == message and r["build_app_from_config"] == message
    assert r["with_keys"] == "built"
