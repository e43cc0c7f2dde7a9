"""The composition root: which actors make the loop, their names, and how they are wired.

``streamrec up`` (:mod:`cluster.stack`), the job entrypoints (:mod:`cluster.jobs`), the benches
and the integration tests all build the loop through these functions::

    stream = start_stream(settings, bootstrap, item_ids, item_vectors)     # ProfileStore, ingest
    learning = start_learning(settings, bootstrap, item_ids, item_vectors)  # PolicyStore, Trainer
    app = serving_app(args, deployments)                                 # the Serve app (Ranker, ContextEncoder)

``named=True`` registers each actor under its name in :mod:`actors.registry` (Ranker replicas
and the jobs find them there); ``detached=True`` lets them outlive the driver (the job
entrypoints). Unnamed loops (benches, tests) can run side by side in one Ray. Ingest and the
trainer meet only in the samples topic: either can start, stop or fail without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import ray

from actors import registry
from actors.ingest import IngestGroup
from actors.ingest_scaling import LagController
from actors.profile_store import ProfileStore
from actors.trainer import Trainer
from streamrec.config import StreamrecSettings
from streamrec.rewards import RewardTable
from streamrec.storage import absolute

__all__ = ["Stream", "Learning", "start_stream", "start_learning", "serving_app"]


@dataclass
class Stream:
    profiles: Any
    """The ProfileStore actor."""
    ingest: IngestGroup


@dataclass
class Learning:
    store: Any
    """The PolicyStore actor."""
    trainer: Any
    """The Trainer actor (version 1 is published once its constructor returns)."""


def _options(name: str, named: bool, detached: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if named:
        opts.update(name=name, namespace=registry.NAMESPACE, get_if_exists=True)
    if detached:
        opts["lifetime"] = "detached"
    return opts


def start_stream(settings: StreamrecSettings, bootstrap: str, item_ids: Sequence[str], item_vectors: np.ndarray,
                 *, named: bool = True, detached: bool = False, parallelism: int | None = None) -> Stream:
    """The ProfileStore and ``ingest.parallelism`` StreamIngest actors in one group (writing the samples
    topic); with ``ingest.max_parallelism``, a controller that sizes the group on its lag."""
    p, i = settings.profile, settings.ingest
    snapshot = absolute(p.snapshot_dir) if named else None
    profiles = ProfileStore.options(**_options(registry.PROFILES, named, detached)).remote(
        history_length=p.history_length, half_life_s=p.half_life_s, snapshot_dir=snapshot,
        snapshot_every_s=p.snapshot_every_s, catalog_dir=absolute(settings.embedding.output_dir),
        catalog_poll_s=settings.serve.catalog_poll_s, prior_events=p.prior_events, popular_window=p.popular_window)
    ray.get(profiles.set_item_vectors.remote(list(item_ids), np.asarray(item_vectors, np.float32)))
    ingest = IngestGroup(bootstrap=bootstrap, kafka_settings=settings.kafka, ingest_settings=i,
                         profile_store=profiles, rewards=RewardTable.from_settings(settings.rewards),
                         name_prefix=registry.INGEST_PREFIX if named else f"{registry.INGEST_PREFIX}-{i.group_id}")
    ingest.scale(i.parallelism if parallelism is None else parallelism)
    if i.max_parallelism is not None and parallelism is None:
        ingest.controller = LagController.for_group(ingest, bootstrap, settings.kafka, i).start()
    return Stream(profiles, ingest)


def start_learning(settings: StreamrecSettings, bootstrap: str, item_ids: Sequence[str] | None = None,
                   item_vectors: np.ndarray | None = None, *, named: bool = True, detached: bool = False,
                   seed: int = 0) -> Learning:
    """The PolicyStore over ``trainer.store_dir`` and the Trainer reading the samples topic at ``bootstrap``.

    Without ``item_ids``/``item_vectors`` the Trainer reads the live embedding run itself (what the
    jobs and ``streamrec up`` do: a Trainer restarted on another node after its node was lost
    rebuilds from storage, not from arguments held by this process)."""
    t = settings.trainer
    if named:
        store = registry.policy_store(t.store_dir, t.keep_versions, detached=True)
    else:
        from actors.policy_store import PolicyStore

        store = PolicyStore.remote(absolute(t.store_dir), t.keep_versions)
    catalog = (None, None) if item_ids is None else (list(item_ids), np.asarray(item_vectors, np.float32))
    trainer = Trainer.options(**_options(registry.TRAINER, named, detached)).remote(
        settings.model_dump(mode="python"), bootstrap, store, *catalog, seed=seed)
    ray.get(trainer.metrics.remote(), timeout=600)  # constructed: version 1 is in the store
    return Learning(store, trainer)


def serving_app(args: dict[str, Any], deployments: list[dict[str, Any]] | None = None):
    """The Serve application (Ranker + ContextEncoder) with a Serve config's per-deployment options."""
    from serve.app import build_app_from_config

    return build_app_from_config(args, deployments or [])
