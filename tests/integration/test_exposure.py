"""The app enforces its own rule: no open API. Serve on a non-loopback host without API keys makes
``build_app`` (what ``serve deploy``, KubeRay and ``streamrec up`` all call) refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_build_app_refuses_a_non_loopback_host_without_keys():
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("exposure_scenario.py"))], cwd=root,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    lines = [x for x in run.stdout.splitlines() if x.startswith("{")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(lines[-1])
    assert r["host_before_serve"] is None and r["host"] == "0.0.0.0"
    message = "http host '0.0.0.0' is not loopback: set STREAMREC_API_KEYS (auth.api_keys) or bind 127.0.0.1"
    assert r["build_app"] == message and r["build_app_from_config"] == message
    assert r["with_keys"] == "built"
