"""Where the loop's named actors live: the namespace, each actor's name, and how to reach them.

Every part that finds another by name (the Ranker replicas, the job entrypoints, the local stack,
the benches and tests) goes through here; :mod:`cluster.loop` creates them.
"""

from __future__ import annotations

from typing import Any

import ray

from streamrec.storage import absolute

__all__ = ["NAMESPACE", "STORE", "PROFILES", "TRAINER", "INGEST_PREFIX", "lookup", "policy_store", "ingest_actors"]

NAMESPACE = "streamrec"
STORE = "streamrec-policy-store"
"""The PolicyStore (detached): versioned weights, the canary slot."""
PROFILES = "streamrec-profiles"
"""The ProfileStore: users' recent items and pooled profile vectors."""
TRAINER = "streamrec-trainer"
INGEST_PREFIX = "streamrec-ingest"
"""StreamIngest actors are ``streamrec-ingest-<i>``."""


def lookup(name: str) -> Any | None:
    """The named actor's handle in the streamrec namespace, or None when it does not exist."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def ingest_actors() -> list:
    """Handles of the loop's running StreamIngest actors (``streamrec-ingest-<i>``; groups started
    under another prefix, ``streamrec-ingest-<group>-<i>``, are not the loop's)."""
    from ray.util import list_named_actors

    out = []
    for a in list_named_actors(all_namespaces=True):
        name = a.get("name", "")
        if a.get("namespace") == NAMESPACE and name.startswith(INGEST_PREFIX + "-") and name[len(INGEST_PREFIX) + 1:].isdigit():
            handle = lookup(a["name"])
            if handle is not None:
                out.append(handle)
    return out


def policy_store(store_dir: str, keep: int = 10, *, detached: bool = True):
    """The cluster's one PolicyStore, created on first use (``get_if_exists``)."""
    from actors.policy_store import PolicyStore

    opts: dict[str, Any] = {"name": STORE, "namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    return PolicyStore.options(**opts).remote(absolute(store_dir), keep)
