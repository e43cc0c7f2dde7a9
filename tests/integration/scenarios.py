"""Running a scenario script (``*_scenario.py``) in a process of its own and reading its report.

Scenarios that start their own Ray head or cluster cannot share the pytest process, which holds
the test session's Ray; each prints one JSON line of what it saw, and its test checks that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_scenario(name: str, timeout_s: float) -> dict:
    """Run ``tests/integration/<name>`` and return its last JSON line (assert with its output when none)."""
    run = subprocess.run([sys.executable, str(Path(__file__).with_name(name))], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [x for x in run.stdout.splitlines() if x.startswith("{")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(lines[-1])
