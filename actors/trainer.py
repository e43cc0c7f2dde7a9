"""Trainer: the Ray actor that runs :class:`rl.trainer_loop.TrainerLoop` rounds on a cadence.

The loop is plain code (rounds, gate, canary, manifests, rollback); this shell gives it the
SampleBuffer and PolicyStore actors behind blocking adapters, runs a round every
``trainer.train_every_s`` in a background thread, and answers ``metrics``/``train_now``/``rollback``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from actors.remote import Blocking
from rl.trainer_loop import TrainerLoop
from streamrec.config import StreamrecSettings

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
class Trainer:
    """Runs :class:`TrainerLoop` rounds every ``trainer.train_every_s`` in a background thread."""

    def __init__(self, settings: dict[str, Any], item_ids, item_vectors, buffer, store, seed: int = 0):
        self.settings = StreamrecSettings.model_validate(settings)
        self.loop = TrainerLoop(self.settings, item_ids, item_vectors, Blocking(buffer), Blocking(store), seed=seed)
        self.loop.publish_initial()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.loop.round()
                self.error = None
            except Exception as e:  # keep training; show the error in metrics
                log.exception("training round failed")
                self.error = f"{type(e).__name__}: {e}"
            self._stop.wait(self.settings.trainer.train_every_s)

    def train_now(self) -> dict | None:
        with self._lock:
            return self.loop.round()

    def rollback(self, to: int | None = None, reason: str = "operator rollback") -> dict:
        with self._lock:
            return self.loop.rollback(to, reason)

    def metrics(self) -> dict:
        return {**self.loop.stats, "serving_version": self.loop.serving_version, "error": self.error,
                "algorithm": self.loop.spec.algorithm}

    def spec(self) -> dict:
        return self.loop.spec.to_dict()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
