"""Trainer: pulls logged samples, trains the policy, gates each candidate off-policy, publishes to the store.

One round (:meth:`TrainerLoop.round`)::

    samples  <- SampleBuffer.take()                    (ingest's hand-off; committed offsets behind it)
    logged   <- rl.logged.samples_to_logged(...)        rebuild the exact serving-time inputs
    train    <- all but the newest holdout_fraction     holdout <- the newest ones
    PPO: SlateLearner.update(train)  |  bandits: policy.update(...) per sample
    report   <- rl.gate.evaluate(candidate, holdout) vs the serving version on the same holdout
    publish to the PolicyStore when rl.gate.promote(...) says so; checkpoint the learner

:class:`TrainerLoop` holds no Ray handles of its own beyond the two it is given (the buffer and
the store, either Ray actors or plain objects), so tests drive it round by round.
:class:`Trainer` is the Ray actor that runs rounds on a cadence in a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rl.features import Featurizer, fit_projection
from rl.gate import ClickModel, GateReport, evaluate, promote
from rl.logged import Logged, samples_to_logged
from rl.policies import BanditPolicy, PolicySpec, make_policy, policy_from_state
from rl.ppo import LoggedBatch, PPOHyper, SlateLearner
from rl.weights import pack, unpack
from streamrec.config import StreamrecSettings

__all__ = ["TrainerLoop", "Trainer", "policy_spec", "TRAINER_NAME"]

log = logging.getLogger(__name__)
TRAINER_NAME = "streamrec-trainer"


def _call(obj, method: str, *args, **kwargs):
    f = getattr(obj, method)
    return ray.get(f.remote(*args, **kwargs)) if hasattr(f, "remote") else f(*args, **kwargs)


def policy_spec(settings: StreamrecSettings, num_rows: int, text_dim: int) -> PolicySpec:
    p = settings.policy
    n = min(p.num_candidates, num_rows - 1)  # a catalog smaller than N: rank all of it
    return PolicySpec(algorithm=p.algorithm, m=p.feature_dim, num_candidates=n,
                      slate_size=min(p.slate_size, n), num_rows=num_rows, text_dim=text_dim, temperature=p.temperature,
                      penalty=p.diversity_penalty, epsilon=p.epsilon, alpha=p.alpha,
                      draws=p.thompson_draws)


def _subset(logged: Logged, idx: np.ndarray) -> Logged:
    b = logged.batch
    batch = LoggedBatch(b.obs[idx], b.actions[idx], b.logp[idx], b.rewards[idx],
                        None if b.dist_inputs is None else b.dist_inputs[idx])
    props = logged.propensities[idx] if logged.propensities is not None else None
    return Logged(batch, [logged.observations[i] for i in idx], logged.slates[idx], logged.clicks[idx], 0, props)


def _concat(parts: list[Logged]) -> Logged:
    b = [p.batch for p in parts]
    batch = LoggedBatch(np.concatenate([x.obs for x in b]), np.concatenate([x.actions for x in b]),
                        np.concatenate([x.logp for x in b]), np.concatenate([x.rewards for x in b]),
                        np.concatenate([x.dist_inputs for x in b]))
    props = (np.concatenate([p.propensities for p in parts])
             if all(p.propensities is not None for p in parts) else None)
    return Logged(batch, [o for p in parts for o in p.observations], np.concatenate([p.slates for p in parts]),
                  np.concatenate([p.clicks for p in parts]), 0, props)


class TrainerLoop:
    def __init__(self, settings: StreamrecSettings, item_ids, item_vectors: np.ndarray, buffer, store,
                 *, seed: int = 0):
        self.settings, self.buffer, self.store = settings, buffer, store
        self.rng = np.random.default_rng(seed)
        t = settings.trainer
        self.checkpoint_dir = Path(t.checkpoint_dir)
        item_vectors = np.asarray(item_vectors, np.float32)
        latest = _call(store, "latest")
        projection = lineage = None
        if latest is not None:  # continue the published lineage: same projection, same weights
            manifest, blob = _call(store, "get", latest["version"])
            lineage = PolicySpec.from_dict(manifest["spec"])
            tensors = unpack(blob, sha256=manifest["sha256"])
            ours = lineage.algorithm == settings.policy.algorithm
            # a bandit's exploring version 1 (see publish_initial): same lineage, nothing learned yet
            first = lineage.algorithm == "random" and manifest.get("ope") is None and settings.policy.algorithm != "ppo"
            if (ours or first) and lineage.num_rows == len(item_ids) + 1:
                projection = tensors["projection"]
            else:
                latest = None
        if projection is None:
            projection = fit_projection(item_vectors, settings.policy.feature_dim, seed=seed)
        self.featurizer = Featurizer(np.asarray(item_ids), item_vectors, projection)
        self.spec = policy_spec(settings, self.featurizer.num_rows, item_vectors.shape[1])
        self.learner: SlateLearner | None = None
        if self.spec.algorithm == "ppo":
            self.learner = SlateLearner(self.spec, PPOHyper(lr=t.lr, num_epochs=t.num_epochs,
                                                            minibatch_size=t.minibatch_size, seed=seed))
            ckpt = self.checkpoint_dir / "learner"
            if ckpt.exists() and latest is not None:
                self.learner.restore(str(ckpt))
            elif latest is not None:
                self._load_published_into_learner(tensors)
            self.policy = self.learner.serving_policy()
        else:
            self.policy = make_policy(self.spec)
            if latest is not None and lineage.algorithm == self.spec.algorithm:
                self.policy = policy_from_state(self.spec, tensors)
        if latest is None:
            self.serving = None
        elif lineage.algorithm == self.spec.algorithm:
            self.serving = self.policy
        else:  # the exploring version 1
            self.serving = policy_from_state(lineage, tensors)
        self.serving_version = latest["version"] if latest else None
        self.trained_through: dict[str, int] = dict(latest.get("trained_through", {})) if latest else {}
        self.holdout: list[Logged] = []  # held-out samples of recent rounds (never trained on)
        # DR's direct method, grown on every round's training samples (never on held-out ones): a
        # model of the recent holdout alone is too small to value a much better candidate
        self.click_model = ClickModel()
        self.stats = {"rounds": 0, "samples": 0, "skipped": 0, "published": 0, "rejected": 0, "deferred": 0,
                      "last": None}
        self._last_publish = time.monotonic() if latest is not None else float("-inf")

    # -- one round -------------------------------------------------------------------------------
    def round(self) -> dict | None:
        """Take what the buffer holds; train, gate and maybe publish. None when there was too little."""
        t = self.settings.trainer
        size = _call(self.buffer, "size")
        if size < t.min_samples:
            return None
        samples = _call(self.buffer, "take", t.max_batch)
        logged = samples_to_logged(samples, self.featurizer, self.spec, self.settings.policy.diversity_lambda)
        self.stats["skipped"] += logged.skipped
        n = len(logged.observations)
        if n < 2:
            return None
        order = np.arange(n)  # the buffer hands samples over in arrival order: the newest are last
        n_hold = max(1, int(round(n * t.holdout_fraction)))
        train, fresh = _subset(logged, order[:-n_hold]), _subset(logged, order[-n_hold:])
        self.holdout.append(fresh)
        while sum(len(h.observations) for h in self.holdout[1:]) >= t.holdout_window:
            self.holdout.pop(0)
        hold = _concat(self.holdout)
        started = time.monotonic()
        learner_metrics: dict[str, float] = {}
        if self.learner is not None:
            learner_metrics = self.learner.update(train.batch)
            candidate = self.learner.serving_policy()
        else:
            for o, s, c in zip(train.observations, train.slates, train.clicks):
                self.policy.update(o, s, c)
            candidate = self.policy
        if train.observations:
            self.click_model.add(train.observations, train.slates, train.clicks)
        gate = dict(estimator=t.ope_estimator, rng=self.rng, min_ess=t.min_ess, min_support=t.min_support,
                    lam=self.settings.policy.diversity_lambda, click_model=self.click_model, dr_weights=t.dr_weights)
        report = evaluate(candidate, hold, **gate)
        current = evaluate(self.serving, hold, **gate) if self.serving is not None else None
        ok, why = promote(report, current, t.gate_tolerance)
        wait = t.publish_every_s - (time.monotonic() - self._last_publish)
        held = len(hold.observations)
        deferral = (f"{held} held-out samples < min_holdout {t.min_holdout}" if held < t.min_holdout
                    else f"{wait:.1f} s to go (publish_every_s)" if wait > 0 else None)
        deferred = ok and current is not None and deferral is not None
        if deferred:
            ok, why = False, f"{why}; deferred: {deferral}"
        self._advance_offsets(samples)
        out = {"samples": n, "train": len(train.observations), "holdout": len(hold.observations), "ok": ok, "why": why,
               "ope": report.to_dict(), "current_ope": current.to_dict() if current else None,
               "measured_ctr": float(logged.ctr.mean()), "learner": learner_metrics,
               "deferred": deferred, "train_s": round(time.monotonic() - started, 3)}
        if ok:
            manifest = self._publish(candidate, report)
            out["version"] = manifest["version"]
            self.serving, self.serving_version = candidate, manifest["version"]
            if isinstance(candidate, BanditPolicy):  # the serving copy must not move with further updates
                self.serving = policy_from_state(self.spec, candidate.state())
            self.stats["published"] += 1
            self._last_publish = time.monotonic()
        else:
            self.stats["deferred" if deferred else "rejected"] += 1
        if isinstance(self.policy, BanditPolicy):  # the new holdout has been scored; now learn from it too
            for o, s, c in zip(fresh.observations, fresh.slates, fresh.clicks):
                self.policy.update(o, s, c)
        self.stats["rounds"] += 1
        self.stats["samples"] += n
        self.stats["last"] = out
        return out

    def _advance_offsets(self, samples) -> None:
        for s in samples:
            if s.source:
                topic, part, off = s.source
                key = f"{topic}:{part}"
                self.trained_through[key] = max(self.trained_through.get(key, -1), int(off))

    def _publish(self, policy, report: GateReport) -> dict:
        tensors = {**policy.state(), "projection": self.featurizer.projection}
        blob, sha = pack(tensors)
        manifest = _call(self.store, "publish", blob, {
            "sha256": sha, "spec": self.spec.to_dict(), "algorithm": self.spec.algorithm,
            "trained_through": dict(self.trained_through), "ope": report.to_dict(),
            "samples_trained": self.stats["samples"]})
        if self.learner is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.learner.save(str((self.checkpoint_dir / "learner").resolve()))
        return manifest

    def publish_initial(self) -> dict | None:
        """Publish version 1 so serving has something from the start.

        A bandit with no data scores every candidate alike and would serve those ties as one
        deterministic slate, logging data no off-policy estimator can value a candidate on; its
        version 1 is the uniformly random policy instead (exact propensities). PPO's untrained
        network already samples with exact propensities."""
        if self.serving is not None:
            return None
        first = self.policy
        if isinstance(first, BanditPolicy) and self.spec.algorithm != "random":
            first = make_policy(dataclasses.replace(self.spec, algorithm="random"))
        manifest = _call(self.store, "publish", *self._blob(first))
        self.serving, self.serving_version = first, manifest["version"]
        if isinstance(first, BanditPolicy):
            self.serving = policy_from_state(first.spec, first.state())
        return manifest

    def _blob(self, policy) -> tuple[bytes, dict]:
        blob, sha = pack({**policy.state(), "projection": self.featurizer.projection})
        return blob, {"sha256": sha, "spec": policy.spec.to_dict(), "algorithm": policy.spec.algorithm,
                      "trained_through": {}, "ope": None, "samples_trained": 0}

    def rollback(self, to: int | None = None) -> dict:
        """Roll the store back and continue training from the weights now served."""
        manifest = _call(self.store, "rollback", to)
        _, blob = _call(self.store, "get", manifest["version"])
        tensors = unpack(blob, sha256=manifest["sha256"])
        if self.learner is not None:
            self._load_published_into_learner(tensors)
            self.policy = self.learner.serving_policy()
        else:
            self.policy = policy_from_state(self.spec, tensors)
        self.serving = policy_from_state(self.spec, tensors)
        self.serving_version = manifest["version"]
        return manifest

    def _load_published_into_learner(self, tensors) -> None:
        state = self.learner.module_state()
        state.update({k: v for k, v in tensors.items() if k in state})
        self.learner.set_module_state(state)


@ray.remote(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
class Trainer:
    """Runs :class:`TrainerLoop` rounds every ``trainer.train_every_s`` in a background thread."""

    def __init__(self, settings: dict[str, Any], item_ids, item_vectors, buffer, store, seed: int = 0):
        self.settings = StreamrecSettings.model_validate(settings)
        self.loop = TrainerLoop(self.settings, item_ids, item_vectors, buffer, store, seed=seed)
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

    def rollback(self, to: int | None = None) -> dict:
        with self._lock:
            return self.loop.rollback(to)

    def metrics(self) -> dict:
        return {**self.loop.stats, "serving_version": self.loop.serving_version, "error": self.error,
                "algorithm": self.loop.spec.algorithm}

    def spec(self) -> dict:
        return self.loop.spec.to_dict()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
