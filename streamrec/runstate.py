"""Run state of ``streamrec up``: pids, ports and a live snapshot in a run directory.

``up`` writes ``state.json`` there (atomically), so ``status`` and ``down`` work from another
shell. The directory is ``--run-dir``, else ``$STREAMREC_RUN_DIR``, else ``~/.streamrec/run``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "pid_alive", "default_run_dir"]


def default_run_dir() -> Path:
    env = os.environ.get("STREAMREC_RUN_DIR")
    return Path(env) if env else Path.home() / ".streamrec" / "run"


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class RunDir:
    """One run directory: ``state.json`` plus the logs of what ``up`` started."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_run_dir()

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def write(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2, default=str)
        os.replace(tmp, self.state_file)

    def update(self, **fields: Any) -> dict[str, Any]:
        state = self.read() or {}
        state.update(fields)
        self.write(state)
        return state

    def clear(self) -> None:
        try:
            self.state_file.unlink()
        except FileNotFoundError:
            pass

    def active_pid(self) -> int | None:
        """The pid of a live ``streamrec up`` owning this directory, if any."""
        state = self.read()
        pid = state.get("pid") if state else None
        return pid if pid_alive(pid) else None
