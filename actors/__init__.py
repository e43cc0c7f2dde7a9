"""Long-lived Ray actors and what they run on: stream ingest, the trainer and its samples-log reader, the profile and policy stores.

Thin shells: the logic they run lives in ``streamrec/`` (join, events, profiles) and ``rl/``.
"""

__all__ = ["ingest", "sample_log", "profile_store"]
