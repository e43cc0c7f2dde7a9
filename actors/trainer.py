"""Trainer: the Ray actor that runs :class:`rl.trainer_loop.TrainerLoop` rounds on a cadence.

The loop is plain code (rounds, gate, canary, manifests, checkpoint, rollback); this shell gives it
a reader of the samples log (:class:`actors.sample_log.SampleLog`) and the PolicyStore actor
behind a blocking adapter, runs a round every ``trainer.train_every_s`` in a background thread,
and answers ``metrics``/``train_now``/``rollback``. A round that fails is not lost: the loop is
rebuilt from its checkpoint, as after a restart, and reads that round's samples again. Before each
round it looks at the embedding manifest and, when a new run is live, trains on that catalog
version (new items get rows of their own: :meth:`rl.trainer_loop.TrainerLoop.set_catalog`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray

from actors.remote import Blocking
from actors.sample_log import SampleLog
from rl.trainer_loop import TrainerLoop
from streamrec.config import StreamrecSettings
from streamrec.telemetry import Telemetry

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
class Trainer:
    """Runs :class:`TrainerLoop` rounds every ``trainer.train_every_s`` in a background thread."""

    def __init__(self, settings: dict[str, Any], bootstrap: str, store, item_ids=None, item_vectors=None,
                 seed: int = 0):
        """``item_ids``/``item_vectors`` None: the live embedding run at ``embedding.output_dir``,
        read here, so a restart on any node needs nothing from the process that created the actor
        (arguments in the object store die with their owner's node)."""
        self.settings = StreamrecSettings.model_validate(settings)
        if self.settings.trainer.cpu_nice:
            os.nice(self.settings.trainer.cpu_nice)  # this actor's own worker process: yield to serving
        self.catalog = None  # the catalog version followed (None: the ids and vectors given)
        if item_ids is None:
            from streamrec.vectors import load_catalog

            self.catalog = load_catalog(self.settings.embedding.output_dir)
        self._args = (bootstrap, Blocking(store), seed)
        self._items = (list(item_ids), item_vectors) if self.catalog is None else None
        self.loop = self._new_loop()
        self.loop.publish_initial()
        self.telemetry = Telemetry()
        self._exported = dict(self.loop.stats)  # counters count from this process on (stats resume from the checkpoint)
        self._broken = False  # a round failed: rebuild the loop from its checkpoint before the next
        self._round_started: float | None = None  # monotonic start of the round running now
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: str | None = None
        self.catalog_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def _new_loop(self) -> TrainerLoop:
        bootstrap, store, seed = self._args
        c = self.catalog
        ids, vectors, rows, num_rows, row_ids = ((*self._items, None, None, None) if c is None
                                                 else (c.ids, c.vectors, c.rows, c.num_rows, c.row_ids))
        return TrainerLoop(self.settings, ids, vectors, SampleLog.open(bootstrap, self.settings), store,
                           rows=rows, num_rows=num_rows, row_ids=row_ids, seed=seed)

    def _follow_catalog(self) -> None:
        """Between rounds: when the embedding output has a new live run, train on that catalog
        (the tables grow for new items; TrainerLoop.set_catalog)."""
        from streamrec.vectors import load_catalog, read_manifest

        if self.catalog is None:
            return
        manifest = read_manifest(self.settings.embedding.output_dir)
        if manifest is None or str(manifest.get("run_id")) == self.catalog.version:
            return
        c = load_catalog(self.settings.embedding.output_dir)
        grew = self.loop.set_catalog(c.ids, c.vectors, c.rows, c.num_rows, c.row_ids)
        self.catalog = c
        log.info("trainer follows catalog %s (%d items%s)", c.version, len(c.ids),
                 f", tables grown to {c.num_rows} rows" if grew else "")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._round_started = time.monotonic()
                    try:
                        try:
                            self._follow_catalog()
                        except Exception as e:  # train on the catalog it has; say why in metrics
                            log.exception("cannot follow the catalog")
                            self.catalog_error = f"{type(e).__name__}: {e}"
                        else:
                            self.catalog_error = None
                        self._round()
                    finally:
                        self._round_started = None
                        self._export()
                self.error = None
            except Exception as e:  # keep training; show the error in metrics
                log.exception("training round failed")
                self.error = f"{type(e).__name__}: {e}"
            self._stop.wait(self.settings.trainer.train_every_s)

    def _round(self) -> dict | None:
        if self._broken:
            try:
                self.loop.close()
            except Exception:  # closed by an earlier attempt
                pass
            timeline = self.loop.timeline
            self.loop = self._new_loop()
            self.loop.timeline.extend(timeline)
            self._exported = dict(self.loop.stats)
            self._broken = False
        try:
            return self.loop.round()
        except Exception:
            self._broken = True
            raise

    def _export(self) -> None:
        """Rounds, samples, gate decisions and the last gate's estimates, for the cluster-wide metrics."""
        st, t = self.loop.stats, self.telemetry
        t.add_counts({"rounds": "streamrec_trainer_rounds", "consumed": "streamrec_trainer_samples"}, st, self._exported)
        for decision in ("published", "rejected", "deferred", "rolled_back"):
            t.add_counts({decision: "streamrec_gate_decisions"}, st, self._exported, decision=decision)
        last = st.get("last") or {}
        for policy, key in (("candidate", "ope"), ("live", "current_ope")):
            ope = last.get(key)
            if isinstance(ope, dict):
                for bound in ("value", "low", "high"):
                    if isinstance(ope.get(bound), (int, float)):
                        t.set("streamrec_gate_estimate", ope[bound], policy=policy, bound=bound)
        t.set("streamrec_trainer_serving_version", self.loop.serving_version or 0)
        arms = st.get("arms") or {}
        for arm, figures in (arms.get("by_arm") or {}).items():
            t.set("streamrec_arm_ctr", figures["ctr"], arm=arm)
        for bound, key in (("value", "lift"), ("low", "low"), ("high", "high")):
            if arms.get(key) is not None:
                t.set("streamrec_lift", arms[key], bound=bound)

    def train_now(self) -> dict | None:
        with self._lock:
            return self._round()

    def rollback(self, to: int | None = None, reason: str = "operator rollback") -> dict:
        with self._lock:
            return self.loop.rollback(to, reason)

    def metrics(self) -> dict:
        started = self._round_started
        return {**self.loop.stats, "serving_version": self.loop.serving_version, "error": self.error,
                "catalog": None if self.catalog is None else self.catalog.version, "catalog_error": self.catalog_error,
                "item_rows": self.loop.spec.num_rows - 1,
                "in_round_s": 0.0 if started is None else round(time.monotonic() - started, 1),
                "algorithm": self.loop.spec.algorithm, "log": self.loop.source.metrics()}

    def timeline(self, since: float = 0.0) -> list[dict]:
        """The rounds' points after ``since`` (epoch seconds), oldest first (the dashboard's series)."""
        return [p for p in self.loop.timeline if p["ts"] > since]

    def spec(self) -> dict:
        return self.loop.spec.to_dict()

    def stop(self) -> None:
        """End the rounds and release the loop's consumer and learners (a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            self.loop.close()
