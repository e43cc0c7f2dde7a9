"""PolicyFollower: keep a local copy of the newest published policy, swapping only whole, valid versions.

Every Ranker replica (and the benchmark's in-process clients) holds one::

    follower = PolicyFollower(store, item_ids, item_vectors)
    follower.poll()            # one store call for the latest and canary manifests; fetches only what is new
    follower.poll(state)       # the same with a state the caller already has (a long poll's answer)
    follower.current           # (featurizer, policy, version) — replaced in one assignment
    follower.canary            # the trainer's candidate served to a share of users (ServedExperiment of one arm), or None
    follower.experiment        # the operator's experiment with its arms' policies (ServedExperiment), or None
    follower.set_catalog(ids, vectors, rows, num_rows)   # another catalog version: the same weights over its items

A new version is fetched, checked (sha256, finite, the tensor names and shapes its spec
implies), converted into the serving model and warmed up on a dummy request before the swap.
Anything wrong leaves the old version serving and is counted in ``refused``/``last_error``.
Versions only move forward. A canary (:meth:`actors.policy_store.PolicyDirectory.publish_canary`)
is loaded the same way and served as an experiment of one arm
(:func:`rl.experiment.canary_experiment`); it is dropped when the store ends or promotes it. An experiment's arms
(:class:`rl.experiment.Experiment`) are loaded the same way too; an arm whose version cannot be
served here (refused, or ranking over other item features than the live version) is left out, and
its users see the live version (``last_error`` says why).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rl.experiment import CANARY_ARM, Experiment, canary_experiment
from rl.features import Featurizer, table_rows
from rl.manifest import PolicyManifest
from rl.policies import Policy, expected_shapes, policy_from_state
from rl.spec import Observation, PolicySpec
from rl.weights import WeightsError, unpack
from streamrec.vectors import rows_match

__all__ = ["PolicyFollower", "Served", "ServedExperiment", "StoreReader", "CatalogBehind"]

log = logging.getLogger(__name__)


class StoreReader(Protocol):
    """The store calls a follower and its replica make (the PolicyStore actor behind :class:`actors.remote.Blocking`)."""

    def serving(self) -> dict: ...

    def serving_change(self, known: list | None, wait_s: float) -> dict: ...

    def get(self, version: int | None = None) -> tuple[dict, bytes]: ...


@dataclass
class Served:
    featurizer: Featurizer
    policy: Policy
    version: int
    spec: PolicySpec
    manifest: PolicyManifest | None = None
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True, eq=False)
class ServedExperiment:
    """The running experiment and, per arm whose version loaded, (policy, version)."""

    experiment: Experiment
    policies: dict[str, tuple[Policy, int]]


class CatalogBehind(WeightsError):
    """A version built for item rows this replica's catalog does not have yet: it is fetched again
    once the replica follows the newer catalog (:meth:`PolicyFollower.set_catalog`)."""


class PolicyFollower:
    def __init__(self, store: StoreReader, item_ids, item_vectors: np.ndarray, *, rows=None, num_rows: int | None = None,
                 row_ids=None, explore: bool = True):
        """``rows``/``num_rows``/``row_ids``: the catalog's stable item rows, table size and the item
        of every row (:class:`streamrec.vectors.Catalog`; default 1..n, n + 1, not known)."""
        self.store = store
        self._take_catalog(item_ids, item_vectors, rows, num_rows, row_ids)
        self.explore = explore
        self.current: Served | None = None
        self.canary: ServedExperiment | None = None
        self.experiment: ServedExperiment | None = None
        self.refused = 0
        self.swaps = 0
        self.rollbacks = 0
        """Rollback versions this follower swapped to (automatic or an operator's)."""
        self.last_rollback: str | None = None
        self.last_error: str | None = None
        self._refused_versions: set[int] = set()

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    def _take_catalog(self, item_ids, item_vectors, rows, num_rows, row_ids) -> None:
        self.item_ids = np.asarray(item_ids)
        self.item_vectors = np.asarray(item_vectors, np.float32)
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.num_rows = table_rows(len(self.item_ids), self.rows, num_rows)
        self.row_ids = row_ids

    def set_catalog(self, item_ids, item_vectors: np.ndarray, rows=None, num_rows: int | None = None,
                    row_ids=None) -> None:
        """Serve another catalog version: the live version keeps its weights and projection, its
        featurizer takes the new items (one beyond the version's tables ranks by its text vector
        until a version with its row is published). The caller polls again: a version that waited
        for this catalog (:class:`CatalogBehind`) is fetched then. A catalog whose rows stand for
        other items than the served version learned them for is refused (ValueError; the follower
        keeps what it serves)."""
        cur = self.current
        if cur is not None and not rows_match(cur.manifest.rows_digest, row_ids, cur.spec.num_rows):
            raise ValueError(f"the catalog's item rows 1-{cur.spec.num_rows - 1} stand for other items than version "
                             f"{cur.version} learned them for: restore the embedding output's rows files, or start "
                             "a new lineage (trainer.force_new_lineage)")
        self._take_catalog(item_ids, item_vectors, rows, num_rows, row_ids)
        cur = self.current
        if cur is not None:
            featurizer = cur.featurizer.with_catalog(self.item_ids, self.item_vectors, self.rows, self.num_rows)
            self.current = Served(featurizer, cur.policy, cur.version, cur.spec, cur.manifest)

    def poll(self, state: dict | None = None) -> bool:
        """Follow the store: swap to a newer valid latest version, start or stop serving its canary
        and the operator's experiment.
        ``state``: the store's ``serving()`` answer when the caller already has it (a long poll's),
        else it is asked. True when what is served changed."""
        state = self.store.serving() if state is None else state
        changed = False
        latest, canary = state["latest"], state["canary"]
        if latest is not None:
            v = int(latest["version"])
            if (self.current is None or v > self.current.version) and v not in self._refused_versions:
                loaded = self._load_or_refuse(v)
                if loaded is not None:
                    self.current = loaded
                    self.swaps += 1
                    changed = True
                    if loaded.manifest is not None and loaded.manifest.rollback_of is not None:
                        self.rollbacks += 1
                        self.last_rollback = loaded.manifest.rollback_reason
        want = None if canary is None or self.current is None else int(canary["version"])
        if want is not None and want <= self.current.version:
            want = None  # promoted meanwhile (or older than what serves): nothing to share traffic with
        if want is None:
            changed |= self.canary is not None
            self.canary = None
        elif self.canary_version != want:
            policy = self._beside_live(want)
            new = None if policy is None else ServedExperiment(canary_experiment(want, float(canary["share"])),
                                                                {CANARY_ARM: (policy, want)})
            changed |= new is not None or self.canary is not None
            self.canary = new
        return self._follow_experiment(state.get("experiment")) or changed

    @property
    def canary_version(self) -> int | None:
        """The version on canary this follower serves (None: none, or it could not be loaded)."""
        return None if self.canary is None else self.canary.policies[CANARY_ARM][1]

    def _follow_experiment(self, raw: dict | None) -> bool:
        """Load the arms of the store's experiment (or drop the one served). True when it changed."""
        if raw is None or self.current is None:
            changed, self.experiment = self.experiment is not None, None
            return changed
        exp = Experiment.from_dict(raw)
        if self.experiment is not None and self.experiment.experiment == exp:
            return False
        held = {} if self.experiment is None else self.experiment.policies  # an algorithm arm moved: keep the others
        policies: dict[str, tuple[Policy, int]] = {}
        for a in exp.arms:
            if a.version is None:
                continue  # an algorithm arm before the trainer stored its first version: the live one serves
            if a.name in held and held[a.name][1] == a.version:
                policies[a.name] = held[a.name]
                continue
            policy = self.current.policy if a.version == self.current.version else self._beside_live(a.version)
            if policy is not None:
                policies[a.name] = (policy, a.version)
        self.experiment = ServedExperiment(exp, policies)
        return True

    def _beside_live(self, version: int) -> Policy | None:
        """``version``'s policy to serve beside the live version (a canary, an experiment's arm), on
        the live version's featurizer; None when it is refused, waits for a catalog, or ranks over
        another item projection than the live version's (refused too)."""
        loaded = None if version in self._refused_versions else self._load_or_refuse(version)
        if loaded is not None and not np.array_equal(loaded.featurizer.projection, self.current.featurizer.projection):
            self._refuse(version, "its item projection differs from the live version's")
            return None
        return None if loaded is None else loaded.policy

    def _load_or_refuse(self, version: int) -> Served | None:
        try:
            return self.load(*self.store.get(version))
        except CatalogBehind as e:  # not refused: asked for again after the next catalog
            self.last_error = f"version {version} waits: {e}"
            return None
        except (WeightsError, ValueError, KeyError) as e:
            self._refuse(version, str(e))
            return None

    def _refuse(self, version: int, why: str) -> None:
        self.refused += 1
        self._refused_versions.add(version)
        self.last_error = f"version {version} refused: {why}"
        log.warning("policy %s", self.last_error)

    def load(self, raw: dict, blob: bytes) -> Served:
        """Validate and build a servable version (raises WeightsError/ValueError; nothing is swapped here)."""
        manifest = PolicyManifest.from_dict(raw)
        spec = manifest.spec
        if spec.text_dim != self.item_vectors.shape[1]:
            raise WeightsError(f"version {manifest.version} was built for text vectors of dimension {spec.text_dim}; "
                               f"this replica's catalog has dimension {self.item_vectors.shape[1]}")
        if spec.num_rows > self.num_rows:
            raise CatalogBehind(f"version {manifest.version} was built for {spec.num_rows - 1} item rows; this "
                                f"replica's catalog has {self.num_rows - 1} (a newer catalog is on its way)")
        if not rows_match(manifest.rows_digest, self.row_ids, spec.num_rows):
            raise WeightsError(f"version {manifest.version} learned its item rows for other items than this "
                               "replica's catalog gives them (the embedding output was renumbered)")
        tensors = unpack(blob, sha256=manifest.sha256, expect=expected_shapes(spec))
        featurizer = Featurizer(self.item_ids, self.item_vectors, tensors["projection"], self.rows, self.num_rows)
        policy = policy_from_state(spec, tensors, explore=self.explore)
        # warm up on a dummy request: a version that cannot score does not get swapped in
        n = min(spec.num_candidates, len(self.item_ids))
        obs = Observation(np.zeros(spec.layout.user_dim, np.float32), featurizer.projected[:n],
                          np.arange(1, n + 1))
        s = policy.scores(obs)
        if not np.isfinite(s).all():
            raise WeightsError(f"version {manifest.version} scores NaN or infinity")
        return Served(featurizer, policy, manifest.version, spec, manifest)
