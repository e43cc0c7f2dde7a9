"""Long-lived Ray actors: stream ingest, the trainer's sample buffer, profile store.

Thin shells: the logic they run lives in ``streamrec/`` (join, events, profiles) and ``rl/``.
"""

__all__ = ["ingest", "sample_buffer", "profile_store"]
