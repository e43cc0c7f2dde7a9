"""The learning loop as plain code: train, gate, canary, publish, roll back. No Ray in here.

One round (:meth:`TrainerLoop.round`)::

    samples  <- source.take()                           (the samples log, from the checkpoint's position)
    logged   <- rl.logged.samples_to_logged(...)        rebuild the exact serving-time inputs
    train    <- all but the newest holdout_fraction     holdout <- the newest ones
    PPO: SlateLearner.update(train)  |  bandits: policy.update_batch(train)
    report   <- rl.gate.evaluate(candidate, holdout) vs the serving version on the same holdout
    publish to the store when rl.gate.promote(...) says so
    checkpoint: the policy being trained + the log position after these samples; then commit

With ``trainer.canary_share`` > 0 a candidate is judged on evidence gathered for it instead
(:meth:`TrainerLoop._canary_round`)::

    train on every sample; no canary running: freeze a copy, store.publish_canary(copy, share)
    replicas serve it to ``share`` of users (an experiment of one arm, rl.experiment.canary_experiment)
    once ``canary_samples`` samples logged since it went live are in: rl.gate.evaluate(copy, both
    arms' impressions, the two loggers pooled) vs the serving version on the same -> store.promote
    or store.end_canary

A restarted trainer resumes from its checkpoint: the weights it had trained and the position in
the log after the samples that trained them, so every sample is trained once whenever it stops
(docs/architecture.md, "From ingest to trainer").

The loop talks to two interfaces, :class:`SampleSource` and :class:`PolicyStoreAPI`: the
:class:`actors.trainer.Trainer` actor hands it an :class:`actors.sample_log.SampleLog` and the
PolicyStore actor behind a blocking adapter; tests hand it a list and an
:class:`actors.policy_store.PolicyDirectory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import deque
from typing import Any, Protocol, Sequence

import numpy as np

from rl.bandits import BanditPolicy, RandomPolicy
from rl.click_model import ClickModel
from rl.features import Featurizer, fit_projection, table_rows
from rl.experiment import CANARY_ARM
from rl.gate import GateReport, evaluate, promote
from rl.logged import Logged, samples_to_logged
from rl.manifest import PolicyManifest
from rl.metrics import ArmImpression, arm_figures, lift_over_control
from rl.policies import Policy, grow_rows, make_policy, policy_from_state
from rl.sequential import LiveWatch
from rl.slate import mixture_position_probs
from rl.spec import PolicySpec
from rl.weights import WeightsError, pack, unpack
from streamrec.config import StreamrecSettings
from streamrec.storage import Location
from streamrec.vectors import rows_digest, rows_match

__all__ = ["TrainerLoop", "SampleSource", "PolicyStoreAPI", "policy_spec", "LineageError", "CHECKPOINT", "ids_digest"]

log = logging.getLogger(__name__)


CHECKPOINT = "round.json"
"""In ``trainer.checkpoint_dir``: the state the trainer resumes from (see :meth:`TrainerLoop._checkpoint`)."""
ROUNDS = "rounds"
"""In ``trainer.checkpoint_dir``: the rounds log, one JSON line per start and per round in hourly
files (``rounds/<UTC yyyymmddhh>.jsonl``): which records of the samples log each round took, in
order, and what it decided. ``streamrec replay`` (cluster/replay.py) rebuilds the lineage from it."""


def record_runs(records) -> list[list[int]]:
    """(partition, offset) pairs in order -> ``[[partition, first, last], ...]``: consecutive offsets of
    one partition in a row become one run (a round's records are mostly such runs)."""
    runs: list[list[int]] = []
    for p, o in records:
        if runs and runs[-1][0] == p and runs[-1][2] + 1 == o:
            runs[-1][2] = o
        else:
            runs.append([int(p), int(o), int(o)])
    return runs


def run_records(runs) -> list[tuple[int, int]]:
    """:func:`record_runs` inverted."""
    return [(int(p), o) for p, first, last in runs for o in range(int(first), int(last) + 1)]


def ids_digest(event_ids) -> int:
    """Sum of the ids' 64-bit BLAKE2b hashes mod 2**64: equal digests and counts mean (but for a
    negligible chance) the same set of ids, each once, in any order."""
    return sum(int.from_bytes(hashlib.blake2b(e.encode(), digest_size=8).digest(), "little") for e in event_ids) % 2**64


class LineageError(RuntimeError):
    """The trainer cannot continue the lineage the store serves, and no operator forced a new one."""


class SampleSource(Protocol):
    """Where training samples wait (:class:`actors.sample_log.SampleLog`)."""

    def take(self, max_n: int, min_n: int = 1) -> Sequence:
        """Up to about ``max_n`` samples, oldest first; [] when fewer than ``min_n`` are there."""

    def position(self) -> dict[str, int]:
        """Where the next take starts (JSON-able)."""

    def seek(self, position: dict[str, int] | None, written_at: float | None = None) -> None:
        """Start there (None: where the source's own committed position is); ``written_at``: when
        that position was checkpointed (the source recognises samples taken shortly before it)."""

    def commit(self) -> None:
        """Record :meth:`position` with the source (lag figures; the checkpoint holds the truth)."""

    def close(self) -> None:
        """Release what the source holds (its consumer)."""


class PolicyStoreAPI(Protocol):
    """The calls the loop makes on the policy store (:class:`actors.policy_store.PolicyDirectory`)."""

    def latest(self) -> dict | None: ...

    def canary(self) -> dict | None: ...

    def get(self, version: int | None = None) -> tuple[dict, bytes]: ...

    def publish(self, blob: bytes, manifest: dict) -> dict: ...

    def publish_canary(self, blob: bytes, manifest: dict, share: float) -> dict: ...

    def promote(self, version: int, extra: dict | None = None) -> dict: ...

    def end_canary(self, version: int, reason: str, extra: dict | None = None) -> dict: ...

    def rollback(self, to: int | None = None, reason: str = "operator rollback") -> dict: ...

    def experiment(self) -> dict | None: ...

    def advance_arm(self, arm: str, blob: bytes, manifest: dict) -> dict: ...


def policy_spec(settings: StreamrecSettings, num_rows: int, text_dim: int) -> PolicySpec:
    p = settings.policy
    n = min(p.num_candidates, num_rows - 1)  # a catalog smaller than N: rank all of it
    return PolicySpec(algorithm=p.algorithm, m=p.feature_dim, num_candidates=n,
                      slate_size=min(p.slate_size, n), num_rows=num_rows, text_dim=text_dim, temperature=p.temperature,
                      penalty=p.diversity_penalty, epsilon=p.epsilon, alpha=p.alpha,
                      draws=p.thompson_draws)


@dataclasses.dataclass
class _Canary:
    """The candidate on canary: a frozen copy, and the samples logged since it was published."""

    policy: Any
    version: int
    published_at: float = dataclasses.field(default_factory=time.time)
    pending: list[Logged] = dataclasses.field(default_factory=list)
    live_since: float = float("inf")
    """ts of the first impression it served: from then on its users' impressions are its evidence."""
    seen_since_published: int = 0
    """Samples logged after it was published (a trainer behind the stream first reads older ones)."""

    def add(self, logged: Logged) -> None:
        self.pending.append(logged)
        self.seen_since_published += int((logged.ts >= self.published_at).sum())
        mine = logged.versions == self.version
        if mine.any():
            self.live_since = min(self.live_since, float(logged.ts[mine].min()))

    def evidence(self) -> Logged | None:
        """The pending samples logged since it went live (None before it served one)."""
        if self.live_since == float("inf") or not self.pending:
            return None
        every = Logged.concat(self.pending)
        return every.subset(np.flatnonzero(every.ts >= self.live_since))


class TrainerLoop:
    def __init__(self, settings: StreamrecSettings, item_ids, item_vectors: np.ndarray, source: SampleSource,
                 store: PolicyStoreAPI, *, rows=None, num_rows: int | None = None, row_ids=None, seed: int = 0):
        """``rows``/``num_rows``/``row_ids``: the catalog's stable item rows, table size and the item
        of every row (:class:`streamrec.vectors.Catalog`; default 1..n, n + 1, not known)."""
        self.settings, self.source, self.store = settings, source, store
        self.rng = np.random.default_rng(seed)
        t = settings.trainer
        self.checkpoint = Location(t.checkpoint_dir)
        item_vectors = np.asarray(item_vectors, np.float32)
        table = table_rows(len(item_ids), rows, num_rows)  # the catalog's item-id table size
        self.row_ids = row_ids
        latest = store.latest()
        projection = lineage = None
        if latest is not None:  # continue the published lineage: same projection, same weights
            raw, blob = store.get(latest["version"])
            manifest = PolicyManifest.from_dict(raw)
            lineage = manifest.spec
            tensors = unpack(blob, sha256=manifest.sha256)
            ours = lineage.algorithm == settings.policy.algorithm
            # a bandit's exploring version 1 (see publish_initial): same lineage, nothing learned yet
            first = lineage.algorithm == "random" and manifest.ope is None and settings.policy.algorithm != "ppo"
            same_rows = lineage.num_rows <= table and rows_match(manifest.rows_digest, row_ids, lineage.num_rows)
            if (ours or first) and same_rows:  # the same catalog, or one that grew
                projection = tensors["projection"]
            elif not t.force_new_lineage:
                other = "" if lineage.num_rows > table or same_rows else " whose rows stand for other items"
                raise LineageError(
                    f"the store serves version {latest['version']} ({lineage.algorithm}, {lineage.num_rows - 1} item rows); "
                    f"this trainer is {settings.policy.algorithm} for a catalog of {table - 1} item rows{other} and cannot "
                    "continue it. "
                    "A new lineage goes live only by an operator's decision, which no gate can check: set "
                    "trainer.force_new_lineage to who decided and why (recorded in the store's history)")
            else:
                latest = None
        if projection is None:
            projection = fit_projection(item_vectors, settings.policy.feature_dim, seed=seed)
        self.featurizer = Featurizer(np.asarray(item_ids), item_vectors, projection, rows, num_rows)
        # Tables start at the lineage's size (or its checkpoint's, when that grew past the last
        # published version) and grow to the catalog's once everything is loaded (_grow)
        start = table if latest is None else self._checkpoint_rows(lineage.num_rows, table, item_vectors.shape[1])
        self.spec = policy_spec(settings, start, item_vectors.shape[1])
        if latest is not None and lineage.num_rows < start:
            lineage, tensors = grow_rows(lineage, tensors, start)
        self.stats = {"rounds": 0, "samples": 0, "skipped": 0, "published": 0, "rejected": 0, "deferred": 0,
                      "canaries": 0, "rolled_back": 0, "consumed": 0, "digest": 0, "last": None}
        """``consumed``: samples this lineage took from the log, over restarts (``digest``: the sum of
        their event ids' 64-bit hashes, mod 2**64, to compare with what ingest wrote)."""
        self.watch = LiveWatch(t.rollback_drop, t.rollback_alpha, t.rollback_beta, t.rollback_min_impressions)
        self.learner = None
        self._seed = seed
        if self.spec.algorithm == "ppo":
            self.learner = self._new_learner()
            if latest is not None:
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
        self.serving_version: int | None = int(latest["version"]) if latest else None
        self.trained_through: dict[str, int] = dict(latest.get("trained_through", {})) if latest else {}
        self.holdout: list[Logged] = []  # held-out samples of recent rounds (never trained on)
        self._arms: deque[ArmImpression] = deque(maxlen=t.lift_window)  # the most recent served impressions
        self._shadow_logs: dict[str, tuple[int, list[Logged]]] = {}  # arm -> (version, its users' recent samples)
        self._shadow_policies: dict[int, Policy | str] = {}  # version -> its policy, or why it cannot be valued
        self._shadow_rng = np.random.default_rng(seed + 1)  # shadow estimates draw nothing from the gate's stream
        self._arm_experiment: tuple | None = None  # (name, started) of the experiment whose algorithm arms train here
        self._arm_policies: dict[str, Policy] = {}  # algorithm arm -> its policy, learning in place
        self._arm_stored: dict[str, float] = {}  # algorithm arm -> monotonic time its last version was stored
        self.timeline: deque[dict] = deque(maxlen=t.timeline_points)
        """One point per round (:meth:`_timeline_point`): what the dashboard draws."""
        # DR's direct method, grown on every round's training samples (never on held-out ones): a
        # model of the recent holdout alone is too small to value a much better candidate
        self.click_model = ClickModel()
        self._last_publish = time.monotonic() if latest is not None else float("-inf")
        self.canary: _Canary | None = None
        self._initial: Policy | None = None  # version 1 as publish_initial made it
        running = store.canary()
        if running is not None:  # its evidence died with the previous trainer: start over
            store.end_canary(running["version"], "the trainer restarted before judging it")
        self._checkpoint_state: str | None = None
        self._rounds_hour: str | None = None  # the rounds log's hour file written last
        restored = self._restore() if latest is not None else (None, None)
        self.source.seek(*restored)
        self._log_round({"kind": "start", "position": restored[0], "serving_version": self.serving_version,
                         "seed": seed, "algorithm": self.spec.algorithm, "num_rows": self.spec.num_rows})
        if table > self.spec.num_rows:
            self._grow(table)

    def _new_learner(self):
        from rl.learners.ppo import PPOHyper, SlateLearner  # torch and RLlib: only for the neural policy

        t = self.settings.trainer
        return SlateLearner(self.spec, PPOHyper(lr=t.lr, num_epochs=t.num_epochs, minibatch_size=t.minibatch_size,
                                                seed=self._seed, num_learners=t.num_learners,
                                                gpus_per_learner=t.gpus_per_learner))

    # -- the catalog -------------------------------------------------------------------------------
    def set_catalog(self, item_ids, item_vectors: np.ndarray, rows=None, num_rows: int | None = None,
                    row_ids=None) -> bool:
        """Train on another catalog version (same projection): samples are rebuilt with its items
        from the next round on. When it gave out new rows, the tables grow (learned rows kept,
        :func:`rl.policies.grow_rows`), so the next published version ranks the new items by their
        own rows. True when they grew; raises ValueError for a catalog with fewer rows than the
        lineage, or whose rows stand for other items (an embedding output started afresh)."""
        featurizer = self.featurizer.with_catalog(item_ids, np.asarray(item_vectors, np.float32), rows, num_rows)
        if featurizer.projection.shape[0] != featurizer.item_vectors.shape[1]:
            raise ValueError(f"the catalog's vectors have dimension {featurizer.item_vectors.shape[1]}, "
                             f"the lineage's projection {featurizer.projection.shape[0]}")
        if featurizer.num_rows < self.spec.num_rows:
            raise ValueError(f"the catalog has {featurizer.num_rows - 1} item rows, fewer than the lineage's "
                             f"{self.spec.num_rows - 1}: its rows were renumbered (embedding output without its rows file?)")
        if not rows_match(rows_digest(self.row_ids, self.spec.num_rows), row_ids, self.spec.num_rows):
            raise ValueError(f"the catalog's item rows 1-{self.spec.num_rows - 1} stand for other items than the "
                             "lineage's: they were renumbered (embedding output started afresh?)")
        self.featurizer = featurizer
        self.row_ids = row_ids if row_ids is not None else self.row_ids
        if featurizer.num_rows == self.spec.num_rows:
            return False
        self._grow(featurizer.num_rows)
        return True

    def _grow(self, num_rows: int) -> None:
        """Tables of ``num_rows`` rows for the policy in training, its learner and the live version's
        copy (which the gate scores on samples that name the new rows)."""
        if self.canary is not None:  # judged on the old tables: start over with the next candidate
            self.store.end_canary(self.canary.version, f"the catalog grew to {num_rows - 1} item rows")
            self.canary = None
        grown = policy_spec(self.settings, num_rows, self.featurizer.projection.shape[0])  # (N too, in a catalog < N)
        if self.learner is not None:
            _, state = grow_rows(self.spec, self.learner.module_state(), num_rows)
            self.spec = grown
            self.learner.shutdown()
            self.learner = self._new_learner()
            self.learner.set_module_state(state)
            self.policy = self.learner.serving_policy()
        else:
            _, state = grow_rows(self.spec, self.policy.state(), num_rows)
            self.spec = grown
            self.policy = policy_from_state(self.spec, state)
        if self.serving is not None and self.serving.spec.num_rows < num_rows:
            self.serving = policy_from_state(*grow_rows(self.serving.spec, self.serving.state(), num_rows))
        self.stats["grown_to_rows"] = num_rows

    def _checkpoint_rows(self, lineage_rows: int, table: int, text_dim: int) -> int:
        """The table size to start from: the checkpoint's when it continues this lineage at a size
        between the published version's and the catalog's, else the published version's."""
        record = self.checkpoint.read_json(CHECKPOINT, default=None)
        spec = record.get("spec") if isinstance(record, dict) else None
        rows = spec.get("num_rows") if isinstance(spec, dict) else None
        if (isinstance(rows, int) and lineage_rows < rows <= table
                and spec == policy_spec(self.settings, rows, text_dim).to_dict()):
            return rows
        return lineage_rows

    # -- one round -------------------------------------------------------------------------------
    def round(self) -> dict | None:
        """Take what the log holds; train, gate and maybe publish; checkpoint. None when there was too little."""
        t = self.settings.trainer
        samples = self.source.take(t.max_batch, t.min_samples)
        if not samples:
            return None
        out = self._round(samples)
        self._timeline_point(out)
        self._consumed(samples)
        self._checkpoint()
        self.source.commit()
        self._log_round({"kind": "round", "records": record_runs(getattr(self.source, "last_records", ())),
                         "taken": len(samples), "digest": ids_digest(x.event_id for x in samples),
                         "ok": None if out is None else bool(out.get("ok")),
                         "version": None if out is None else out.get("version"),
                         "canary": None if out is None else out.get("canary"),
                         "rolled_back": None if out is None else (out.get("rolled_back") or {}).get("to"),
                         "serving_version": self.serving_version, "num_rows": self.spec.num_rows})
        return out

    def _log_round(self, entry: dict) -> None:
        """One line of the rounds log (:data:`ROUNDS`), written after the checkpoint it follows;
        starting a new hour's file removes those older than ``trainer.rounds_log_hours``."""
        now = time.time()
        hour = time.strftime('%Y%m%d%H', time.gmtime(now))
        self.checkpoint.append_line(f"{ROUNDS}/{hour}.jsonl", json.dumps({"ts": now, **entry}))
        keep = self.settings.trainer.rounds_log_hours
        if keep and hour != self._rounds_hour:
            self._rounds_hour = hour
            oldest = time.strftime('%Y%m%d%H', time.gmtime(now - keep * 3600))
            for f in self.checkpoint.files(ROUNDS, ".jsonl"):
                name = f.rsplit("/", 1)[-1]
                if name[:-len(".jsonl")] < oldest:
                    self.checkpoint.remove(f"{ROUNDS}/{name}")

    def _round(self, samples: Sequence) -> dict | None:
        t = self.settings.trainer
        logged = samples_to_logged(samples, self.featurizer, self.spec, self.settings.policy.diversity_lambda)
        self.stats["skipped"] += logged.skipped
        self._count_arms(logged)
        n = len(logged.observations)
        if n < 2:
            return None
        self._train_algorithm_arms(logged)
        if t.canary_share > 0 and self.serving is not None:
            return self._canary_round(samples, logged)
        order = np.arange(n)  # the samples log holds them in the order they closed: the newest are last
        n_hold = max(1, int(round(n * t.holdout_fraction)))
        train, fresh = logged.subset(order[:-n_hold]), logged.subset(order[-n_hold:])
        self.holdout.append(fresh)
        while sum(len(h.observations) for h in self.holdout[1:]) >= t.holdout_window:
            self.holdout.pop(0)
        hold = Logged.concat(self.holdout)
        started = time.monotonic()
        learner_metrics = self._train(train)
        candidate = self.learner.serving_policy() if self.learner is not None else self.policy
        if train.observations:
            self.click_model.add(train.observations, train.slates, train.clicks)
        gate = self._gate_options()
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
            manifest = self._publish(candidate, report, why=why)
            out["version"] = manifest["version"]
            self.watch.went_live(int(manifest["version"]), self.serving_version)
            self.serving, self.serving_version = self._frozen(candidate), int(manifest["version"])
            self.stats["published"] += 1
            self._last_publish = time.monotonic()
        else:
            self.stats["deferred" if deferred else "rejected"] += 1
        if isinstance(self.policy, BanditPolicy):  # the new holdout has been scored; now learn from it too
            self._train(fresh)
        self._watch(logged, out)
        self.stats["rounds"] += 1
        self.stats["samples"] += n
        self.stats["last"] = out
        return out

    def _train_algorithm_arms(self, logged: Logged) -> None:
        """Train each algorithm arm of the running experiment (:data:`rl.experiment.ARM_ALGORITHMS`)
        on this round's samples, beside the live lineage and apart from it (no gate: the experiment
        measures it), and store a version of each every ``trainer.publish_every_s``
        (``store.advance_arm``). A new arm starts from the recent held-out samples. What was stored
        is in ``stats["algorithm_arms"]``."""
        exp = self.store.experiment()
        key = None if exp is None else (exp["name"], exp.get("started"))
        if key != self._arm_experiment:  # another experiment (or none): its arms start afresh
            self._arm_experiment, self._arm_policies, self._arm_stored = key, {}, {}
            self.stats.pop("algorithm_arms", None)
        if exp is None:
            return
        report = self.stats.setdefault("algorithm_arms", {})
        for arm in exp["arms"]:
            name, algorithm = arm["name"], arm.get("algorithm")
            if algorithm is None:
                continue
            policy = self._arm_policies.get(name)
            if policy is None:
                policy = self._arm_policies[name] = make_policy(dataclasses.replace(self.spec, algorithm=algorithm))
                for past in self.holdout:
                    policy.update_batch(past.observations, past.slates, past.clicks)
            elif policy.spec.num_rows < self.spec.num_rows:  # the catalog grew
                policy = self._arm_policies[name] = policy_from_state(
                    *grow_rows(policy.spec, policy.state(), self.spec.num_rows))
            policy.update_batch(logged.observations, logged.slates, logged.clicks)
            figures = report.setdefault(name, {"algorithm": algorithm, "version": arm.get("version"), "samples": 0})
            figures["samples"] += len(logged.observations)
            if time.monotonic() - self._arm_stored.get(name, float("-inf")) < self.settings.trainer.publish_every_s:
                continue
            blob, manifest = self._manifest(policy, None, f"{algorithm} arm {name!r} of experiment {exp['name']!r}")
            try:
                stored = self.store.advance_arm(name, blob, manifest)
            except ValueError as e:  # stopped or replaced meanwhile: the next round sees it
                figures["error"] = str(e)
                continue
            self._arm_stored[name] = time.monotonic()
            figures["version"] = int(stored["version"])
            figures.pop("error", None)

    def _count_arms(self, logged: Logged) -> None:
        """Per-arm figures over the last ``trainer.lift_window`` impressions (``stats["arms"]``): the
        live policy's lift over the control arm (:func:`rl.metrics.lift_over_control`); under
        ``by_arm``, every arm's CTR, ILD, coverage and lift (:func:`rl.metrics.arm_figures`); under
        ``shadow``, each shadow arm's figures (:meth:`_count_shadows`)."""
        if logged.arms is None or not len(logged.arms):
            return
        self._arms.extend(ArmImpression(str(a), bool(c), float(d), tuple(o.rows[s].tolist()))
                          for a, c, d, o, s in zip(logged.arms, logged.ctr > 0, logged.ild, logged.observations,
                                                   logged.slates))
        by_arm = arm_figures(self._arms, max(1, len(self.featurizer.item_ids)))
        n = {a: (f["impressions"], f["clicked"]) for a, f in by_arm.items()}
        self.stats["arms"] = {**lift_over_control(*n.get("policy", (0, 0)), *n.get("control", (0, 0))),
                              "by_arm": by_arm, "shadow": self._count_shadows(logged)}

    def _count_shadows(self, logged: Logged) -> dict:
        """Per shadow arm, over its users' most recent ``trainer.holdout_window`` impressions: the
        slates it computed, their overlap with the served ones, and the off-policy estimate of its
        version's CTR (the gate's estimator; the served CTR beside it)."""
        if logged.shadows is not None:
            rows: dict[tuple[str, int], list[int]] = {}
            for i, x in enumerate(logged.shadows):
                if x is not None:
                    rows.setdefault((x[0], int(x[1])), []).append(i)
            for (arm, version), idx in rows.items():
                kept_version, parts = self._shadow_logs.get(arm, (version, []))
                if kept_version != version:  # the arm now shadows another version: its evidence starts over
                    parts = []
                parts.append(logged.subset(np.asarray(idx)))
                while sum(len(p) for p in parts[1:]) >= self.settings.trainer.holdout_window:
                    parts.pop(0)
                self._shadow_logs[arm] = (version, parts)
        return {arm: self._shadow_estimate(version, parts) for arm, (version, parts) in self._shadow_logs.items()}

    def _shadow_estimate(self, version: int, parts: list[Logged]) -> dict:
        policy = self._shadow_policies.get(version)
        if policy is None:
            try:
                raw, blob = self.store.get(version)
                manifest = PolicyManifest.from_dict(raw)
                tensors = unpack(blob, sha256=manifest.sha256)
                if not np.array_equal(tensors["projection"], self.featurizer.projection):
                    policy = "it ranks over other item features than the trainer's"
                else:
                    policy = policy_from_state(manifest.spec, tensors)
            except (KeyError, WeightsError, ValueError) as e:
                policy = f"{type(e).__name__}: {e}"
            self._shadow_policies[version] = policy
        evidence = Logged.concat(parts)
        figures: dict[str, Any] = {"version": version, "slates": len(evidence),
                                   "overlap": float(np.mean([x[2] for x in evidence.shadows])),
                                   "served_ctr": float(evidence.ctr.mean())}
        if isinstance(policy, str):
            return {**figures, "estimate": None, "why": policy}
        report = evaluate(policy, evidence, **{**self._gate_options(), "rng": self._shadow_rng}).to_dict()
        return {**figures, "estimate": {k: report[k] for k in ("estimator", "ctr", "ctr_low", "ctr_high", "ess")}}

    def _timeline_point(self, out: dict | None) -> None:
        """One point of :attr:`timeline`: the served version, this round's gate decision and
        estimates, and the per-arm figures as they stand."""
        arms = self.stats.get("arms") or {}
        point: dict[str, Any] = {"ts": time.time(), "serving_version": self.serving_version,
                                 "lift": arms.get("lift"), "low": arms.get("low"), "high": arms.get("high"),
                                 "arms": {a: {k: f[k] for k in ("impressions", "ctr", "low", "high", "ild", "coverage")}
                                          for a, f in (arms.get("by_arm") or {}).items()}}
        if out is not None:
            gate = None
            if out.get("ope") is not None:
                gate = {"ok": bool(out.get("ok")), "deferred": bool(out.get("deferred")), "why": out.get("why"),
                        "candidate": out["ope"].get("ctr"), "live": (out.get("current_ope") or {}).get("ctr")}
            point.update(published=out.get("version"), canary=out.get("canary"), gate=gate,
                         measured_ctr=out.get("measured_ctr"))
        self.timeline.append(point)

    def _gate_options(self) -> dict:
        t = self.settings.trainer
        return dict(estimator=t.ope_estimator, rng=self.rng, min_ess=t.min_ess, min_support=t.min_support,
                    lam=self.settings.policy.diversity_lambda, click_model=self.click_model, dr_weights=t.dr_weights)

    def _train(self, logged: Logged) -> dict[str, float]:
        if self.learner is not None:
            return self.learner.update(logged.batch)
        self.policy.update_batch(logged.observations, logged.slates, logged.clicks)
        return {}

    def _snapshot(self) -> Policy:
        """A frozen copy of the policy being trained (what a canary serves)."""
        if self.learner is not None:
            return self.learner.serving_policy()
        return self._frozen(self.policy)

    @staticmethod
    def _frozen(policy: Policy) -> Policy:
        """A bandit learns in place: the copy that serves must not move with further updates."""
        return policy_from_state(policy.spec, policy.state()) if isinstance(policy, BanditPolicy) else policy

    def _canary_round(self, samples, logged: Logged) -> dict:
        """Train on everything; judge the running canary once it has evidence, else start one."""
        t = self.settings.trainer
        started = time.monotonic()
        learner_metrics = self._train(logged)
        self._advance_offsets(samples)
        n = len(logged.observations)
        out: dict[str, Any] = {"samples": n, "train": n, "ok": False, "deferred": False, "learner": learner_metrics,
                               "measured_ctr": float(logged.ctr.mean())}
        c = self.canary
        if c is None:
            self.click_model.add(logged.observations, logged.slates, logged.clicks)
        else:
            c.add(logged)
            evidence = c.evidence()
            out["canary"] = c.version
            out["holdout"] = 0 if evidence is None else len(evidence.observations)
            if evidence is not None and len(evidence.observations) >= t.canary_samples:
                self._judge(c, evidence, out)
            elif evidence is None and c.seen_since_published >= 3 * t.canary_samples:
                why = f"no replica served it in {c.seen_since_published} samples logged since it was published"
                self.store.end_canary(c.version, why)
                self._close_canary(c)
                out["why"] = why
                self.stats["rejected"] += 1
        wait = t.publish_every_s - (time.monotonic() - self._last_publish)
        if self.canary is None and wait <= 0:
            policy = self._snapshot()
            manifest = self._publish(policy, None, canary_share=t.canary_share)
            self.canary = _Canary(policy, manifest["version"])
            self.stats["canaries"] += 1
            out["canary"] = manifest["version"]
        out["train_s"] = round(time.monotonic() - started, 3)
        self._watch(logged, out)
        self.stats["rounds"] += 1
        self.stats["samples"] += n
        self.stats["last"] = out
        return out

    def _judge(self, c: _Canary, evidence: Logged, out: dict) -> None:
        """Both versions valued on every impression the canary's users and the live version's users
        were served since the canary went live. Each impression was logged by one of them with its
        exact propensities; the other's probabilities of the slate are computed here, and the two
        loggers are pooled by the balance heuristic (Agarwal et al., WSDM 2017): an impression's
        behaviour probability is the two versions' mixed by their shares of the evidence. The
        candidate's weights stay below 1 / its share, and neither estimate rests on its own arm's
        few samples alone (:func:`rl.gate.promote` then compares them)."""
        gate = self._gate_options()
        mine = (evidence.arms == CANARY_ARM) & (evidence.versions == c.version)
        theirs = (evidence.arms == "policy") & (evidence.versions == self.serving_version)
        if not mine.any() or not theirs.any():
            return  # one side served nothing yet: wait for more
        both = evidence.subset(np.flatnonzero(mine | theirs))
        by_canary = both.arms == CANARY_ARM
        cand_k, live_k = both.propensities.copy(), both.propensities.copy()  # what each logged, as logged
        for i, (o, slate) in enumerate(zip(both.observations, both.slates)):
            if by_canary[i]:
                live_k[i] = self.serving.position_probabilities(o, slate)
            else:
                cand_k[i] = c.policy.position_probabilities(o, slate)
        pooled = both.logged_by(mixture_position_probs(cand_k, live_k, float(by_canary.mean())))
        report = evaluate(c.policy, pooled, target_probs=cand_k, **gate)
        current = evaluate(self.serving, pooled, target_probs=live_k, **gate)
        ok, why = promote(report, current, self.settings.trainer.gate_tolerance)
        figures = {"ope": report.to_dict(), "current_ope": current.to_dict(), "gate": why,
                   "ope_samples": len(both), "ope_canary_samples": int(by_canary.sum())}
        out.update({"ok": ok, "why": why, "ope": report.to_dict(), "current_ope": current.to_dict(),
                    "holdout": len(evidence.observations)})
        if ok:
            self.store.promote(c.version, figures)
            self.watch.went_live(c.version, self.serving_version)
            self.serving, self.serving_version = c.policy, c.version
            self.stats["published"] += 1
            self._last_publish = time.monotonic()
            out["version"] = c.version
        else:
            self.store.end_canary(c.version, why, figures)
            self.stats["rejected"] += 1
        self._close_canary(c)

    def _close_canary(self, c: _Canary) -> None:
        """The canary's samples were evidence; now the click model may learn from them too."""
        for p in c.pending:
            self.click_model.add(p.observations, p.slates, p.clicks)
        self.canary = None

    def _advance_offsets(self, samples) -> None:
        for s in samples:
            if s.source:
                topic, part, off = s.source
                key = f"{topic}:{part}"
                self.trained_through[key] = max(self.trained_through.get(key, -1), int(off))

    def _manifest(self, policy: Policy, report: GateReport | None, why: str | None) -> tuple[bytes, dict]:
        """The version's safetensors blob (policy tensors + projection) and the manifest the store completes."""
        blob, sha = pack({**policy.state(), "projection": self.featurizer.projection})
        trained = report is not None or policy is not self._initial
        manifest = PolicyManifest(sha256=sha, spec=policy.spec,
                                  trained_through=dict(self.trained_through) if trained else {},
                                  samples_trained=self.stats["samples"] if trained else 0,
                                  ope=report.to_dict() if report else None, gate=why,
                                  rows_digest=rows_digest(self.row_ids, policy.spec.num_rows))
        return blob, manifest.to_dict()

    def _publish(self, policy: Policy, report: GateReport | None, canary_share: float | None = None,
                 why: str | None = None) -> dict:
        blob, manifest = self._manifest(policy, report, why)
        return (self.store.publish(blob, manifest) if canary_share is None
                else self.store.publish_canary(blob, manifest, canary_share))

    def publish_initial(self) -> dict | None:
        """Publish version 1 so serving has something from the start.

        A bandit with no data scores every candidate alike and would serve those ties as one
        deterministic slate, logging data no off-policy estimator can value a candidate on; its
        version 1 is the uniformly random policy instead (exact propensities). PPO's untrained
        network already samples with exact propensities."""
        if self.serving is not None:
            return None
        first = self.policy
        if isinstance(first, BanditPolicy) and not isinstance(first, RandomPolicy):
            first = make_policy(dataclasses.replace(self.spec, algorithm=RandomPolicy.algorithm))
        self._initial = first
        replaced = self.store.latest()
        why = (f"forced new lineage over version {replaced['version']}: {self.settings.trainer.force_new_lineage}"
               if replaced is not None else "first version")
        manifest = self._publish(first, None, why=why)
        self.watch.went_live(int(manifest["version"]), None)
        self.serving, self.serving_version = self._frozen(first), int(manifest["version"])
        return manifest

    def rollback(self, to: int | None = None, reason: str = "operator rollback") -> dict:
        """Roll the store back and continue training from the weights now served."""
        manifest = self.store.rollback(to, reason)  # ends a running canary too
        self.canary = None
        _, blob = self.store.get(manifest["version"])
        tensors = unpack(blob, sha256=manifest["sha256"])
        served = PolicyManifest.from_dict(manifest).spec  # a bandit's exploring version 1 is another algorithm
        if served.num_rows < self.spec.num_rows:  # published before the catalog grew
            served, tensors = grow_rows(served, tensors, self.spec.num_rows)
        if served.algorithm != self.spec.algorithm:
            self.policy = make_policy(self.spec)  # nothing of ours was learned yet at that version
        elif self.learner is not None:
            self._load_published_into_learner(tensors)
            self.policy = self.learner.serving_policy()
        else:
            self.policy = policy_from_state(self.spec, tensors)
        self.serving = policy_from_state(served, tensors)
        self.serving_version = int(manifest["version"])
        self.watch.went_live(self.serving_version, None)
        return manifest

    def _watch(self, logged: Logged, out: dict) -> None:
        """Count what each version served; roll the live version back when the sequential test finds
        it worse than the version it replaced."""
        live = slice(None) if logged.arms is None else logged.arms == "policy"  # not an experiment's arms
        self.watch.add(logged.versions[live], logged.ctr[live])
        result = self.watch.check()
        if result is None or result.decision != "worse":
            return
        worse = self.serving_version
        reason = f"automatic: version {worse} is worse than version {self.watch.predecessor}: {result.describe()}"
        manifest = self.rollback(None, reason)
        self.stats["rolled_back"] += 1
        out["rolled_back"] = {"from": worse, "to": manifest["version"], "rollback_of": manifest["rollback_of"],
                              "why": reason}

    def close(self) -> None:
        """Let go of the samples source and the learner group (remote learners included)."""
        try:
            self.source.close()
        finally:
            if self.learner is not None:
                self.learner.shutdown()

    # -- the checkpoint ---------------------------------------------------------------------------
    def _consumed(self, samples: Sequence) -> None:
        self.stats["consumed"] += len(samples)
        self.stats["digest"] = (self.stats["digest"] + ids_digest(x.event_id for x in samples)) % 2**64

    def _checkpoint(self) -> None:
        """The policy being trained, then ``round.json`` naming it with the log position after the
        samples it learned from (written last: a reader sees the old pair or the new one)."""
        name = f"state-{time.time_ns()}"
        if self.learner is not None:
            self.learner.save(self.checkpoint.uri_of(name))
            sha = None
        else:
            blob, sha = pack(self.policy.state())
            self.checkpoint.write_bytes(f"{name}/policy.safetensors", blob)
        self.checkpoint.write_json(CHECKPOINT, {
            "state": name, "sha256": sha, "spec": self.spec.to_dict(), "position": self.source.position(),
            "serving_version": self.serving_version, "trained_through": self.trained_through, "written_at": time.time(),
            "watch": self.watch.state(), "log_id": self.settings.kafka.log_id,
            **{k: self.stats[k] for k in ("consumed", "digest", "samples", "skipped")}})
        if self._checkpoint_state is not None:
            self.checkpoint.remove(self._checkpoint_state)
        self._checkpoint_state = name

    def _restore(self) -> tuple[dict[str, int] | None, float | None]:
        """Load the checkpoint when it continues this lineage; its log position and when it was
        written ((None, None): none, or refused)."""
        record = self.checkpoint.read_json(CHECKPOINT, default=None)
        if not isinstance(record, dict):
            return None, None
        try:
            if record.get("spec") != self.spec.to_dict():
                raise WeightsError("it was written for another policy spec")
            where = self.checkpoint.uri_of(record["state"])
            if self.learner is not None:
                self.learner.restore(where)
                self.policy = self.learner.serving_policy()
            else:
                blob = self.checkpoint.read_bytes(f"{record['state']}/policy.safetensors")
                self.policy = policy_from_state(self.spec, unpack(blob, sha256=record["sha256"]))
        except (WeightsError, OSError, KeyError) as e:
            self.stats["checkpoint_refused"] = str(e)
            log.warning("trainer checkpoint at %s refused, resuming from the published version: %s",
                        self.checkpoint.uri, e)
            return None, None
        self._checkpoint_state = record["state"]
        for k in ("consumed", "digest", "samples", "skipped"):
            self.stats[k] = int(record.get(k, 0))
        self.trained_through = {**self.trained_through, **record.get("trained_through", {})}
        if record.get("serving_version") == self.serving_version and "watch" in record:
            self.watch.restore(record["watch"])  # the live version's test goes on from its counts
        if record.get("log_id", "") != self.settings.kafka.log_id:  # another broker's log: its offsets mean nothing here
            self.stats["log_changed"] = f"checkpoint read log {record.get('log_id', '')!r}; reading {self.settings.kafka.log_id!r} from its start"
            log.warning("trainer: %s", self.stats["log_changed"])
            return None, None
        return record["position"], record.get("written_at")

    def _load_published_into_learner(self, tensors) -> None:
        state = self.learner.module_state()
        state.update({k: v for k, v in tensors.items() if k in state})
        self.learner.set_module_state(state)


