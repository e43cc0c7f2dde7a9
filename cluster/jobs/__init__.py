"""Entrypoints for ``ray job submit`` (embed, stream, train), sharing one way to read their arguments."""

from __future__ import annotations

import argparse
import sys

__all__ = ["job_parser", "job_settings"]


def job_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--config`` (ray_config.yaml with streamrec's args inside)."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="ray_config.yaml (streamrec args inside)")
    return ap


def job_settings(config: str | None):
    """The validated settings, or None after printing ``config error: <key path>: <reason>``."""
    from streamrec.config import ConfigError, default_config_path, load_settings

    try:
        return load_settings(config or default_config_path())
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None
