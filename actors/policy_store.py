"""PolicyStore: versioned policy weights (safetensors + manifest) in a durable directory, behind a named actor.

::

    store_dir/                (a local path or a URI: streamrec.storage)
      LATEST                  {"version": 12}           (replaced atomically)
      CANARY                  {"version": 13, "share": 0.2}   (only while a canary runs)
      EXPERIMENT              an rl.experiment.Experiment: an operator's arms (only while one runs)
      history/000000000.jsonl what went live, was refused or rolled back, experiments started and
                              stopped: one JSON line each, in segments of 1,000 lines (streamrec.storage.LineLog)
      v000012/manifest.json   an rl.manifest.PolicyManifest: version, parent, sha256, created, spec, stage, ...
      v000012/weights.safetensors

:class:`PolicyDirectory` is the whole logic (no Ray): ``publish`` validates before anything is
written (safetensors only, finite, the tensor names and shapes the spec's policy expects, the
sha256 it was sent with) and refuses with :class:`rl.weights.WeightsError`; ``serving`` says
what replicas should serve (the actor answers replicas' long polls from memory:
:meth:`PolicyStore.serving_change`); ``get`` returns the bytes; ``rollback`` republishes an earlier good version's
weights as a *new* version (``rollback_of`` names it), so versions only ever go forward and a
replica never has to serve backwards. The last ``keep`` versions stay on disk. Manifests go in
and come out as plain dicts (they cross Ray as JSON-like data) and are checked as
:class:`rl.manifest.PolicyManifest` on the way in.

Canaries (``trainer.canary_share``): ``publish_canary`` stores a validated candidate without moving
LATEST; replicas serve it to a sticky share of users, an experiment of one arm
(:func:`rl.experiment.canary_experiment`), and the gate values it on the impressions both arms
served meanwhile. Then ``promote`` makes it LATEST, or ``end_canary`` refuses it. A
manifest's ``stage`` says which: ``live`` (served as LATEST at some point), ``canary`` or
``refused``; a refused version is never a rollback target.

Experiments (``streamrec experiment``, ``/v1/admin/experiment``): ``start_experiment`` stores an
operator's arms (:class:`rl.experiment.Experiment`: stored versions, user shares, shadow or
served) after checking every arm's version is stored; replicas follow it through ``serving()``
like the live version and the canary, and its versions are kept on disk while it runs.
An arm that names an algorithm gets its versions from the trainer, which trains that algorithm
beside the live lineage: ``advance_arm`` stores each (stage ``arm``, its parent the arm's previous
version) and points the arm at it, and replicas follow. ``stop_experiment`` ends it. Starts,
stops and arm versions are in the history, with the operator's name.
:class:`PolicyStore` is the named, detached Ray actor around it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time

import ray

from rl.experiment import Experiment
from rl.manifest import PolicyManifest, serving_key
from rl.policies import expected_shapes
from rl.weights import WeightsError, sha256_hex, unpack
from streamrec.storage import LineLog, Location

__all__ = ["PolicyDirectory", "PolicyStore", "ExperimentConflict", "NoExperiment"]


class ExperimentConflict(ValueError):
    """An experiment is already running."""


class NoExperiment(ValueError):
    """No experiment is running."""


class PolicyDirectory:
    def __init__(self, path: str | os.PathLike, keep: int = 10):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.loc = Location(path)
        self.keep = keep
        self.refused = 0
        self._history = LineLog(self.loc, "history")

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _dir(version: int) -> str:
        return f"v{int(version):06d}"

    def versions(self) -> list[int]:
        """Stored versions: those whose manifest exists (it is written last, after the weights)."""
        out = []
        for f in self.loc.files("", "/manifest.json"):
            name = f.rsplit("/", 2)[-2]
            if name.startswith("v") and name[1:].isdigit():
                out.append(int(name[1:]))
        return sorted(out)

    def latest(self) -> dict | None:
        """The manifest of the version to serve (None before the first publish)."""
        try:
            v = self.loc.read_json("LATEST")["version"]
        except (FileNotFoundError, KeyError, ValueError):
            return None
        return self.manifest(v)

    def manifest(self, version: int) -> dict:
        try:
            return self.loc.read_json(f"{self._dir(version)}/manifest.json")
        except FileNotFoundError:
            raise KeyError(f"policy version {version} is not in the store (kept: {self.versions()})") from None

    def canary(self) -> dict | None:
        """The manifest of the version on canary, with its traffic ``share`` (None when none runs)."""
        try:
            c = self.loc.read_json("CANARY")
            return {**self.manifest(c["version"]), "share": float(c["share"])}
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def experiment(self) -> dict | None:
        """The running experiment (:meth:`rl.experiment.Experiment.to_dict`), or None."""
        try:
            return self.loc.read_json("EXPERIMENT")
        except (FileNotFoundError, ValueError):
            return None

    def serving(self) -> dict:
        """What replicas should serve, in one call: ``{"latest": manifest | None, "canary": manifest
        | None, "experiment": experiment | None}``."""
        return {"latest": self.latest(), "canary": self.canary(), "experiment": self.experiment()}

    def serving_change(self, known: list | None, wait_s: float = 0.0) -> dict:
        """:meth:`serving`, at once: a directory has nobody to wake a waiter (the actor,
        :meth:`PolicyStore.serving_change`, waits for a change)."""
        return self.serving()

    def get(self, version: int | None = None) -> tuple[dict, bytes]:
        """(manifest, safetensors bytes) of a version (default: latest)."""
        if version is None:
            m = self.latest()
            if m is None:
                raise KeyError("no policy has been published yet")
            version = m["version"]
        m = self.manifest(version)
        return m, self.loc.read_bytes(f"{self._dir(version)}/weights.safetensors")

    # -- writing -------------------------------------------------------------------------------
    def publish(self, blob: bytes, manifest: dict) -> dict:
        """Validate and store a new version and serve it (LATEST); returns its full manifest.
        Raises WeightsError. A canary still running is ended: this version supersedes it."""
        full = self._store(blob, {**manifest, "stage": "live"})
        self._end_running_canary(f"superseded by version {full['version']}")
        self.loc.write_json("LATEST", {"version": full["version"]})
        self._record("rollback" if full.get("rollback_of") is not None else "publish", full["version"],
                     full.get("rollback_reason") or full.get("gate") or "")
        self._prune()
        return full

    def publish_canary(self, blob: bytes, manifest: dict, share: float) -> dict:
        """Validate and store a candidate that replicas serve on ``share`` of requests; LATEST stays."""
        if not 0.0 < share < 1.0:
            raise ValueError(f"canary share must be in (0, 1), got {share}")
        running = self.canary()
        if running is not None:
            raise ValueError(f"version {running['version']} is already on canary: promote or end it first")
        if self.latest() is None:
            raise ValueError("a canary needs a live version to share traffic with: publish one first")
        full = self._store(blob, {**manifest, "stage": "canary", "canary_share": share})
        self.loc.write_json("CANARY", {"version": full["version"], "share": share})
        self._record("canary", full["version"], f"share {share:g}")
        self._prune()
        return full

    def promote(self, version: int, extra: dict | None = None) -> dict:
        """Make the canary ``version`` the served one (LATEST); ``extra`` (the gate's figures) joins its manifest."""
        self._check_on_canary(version)
        full = self._checked({**self.manifest(version), **(extra or {}), "stage": "live", "promoted": time.time()})
        self.loc.write_json(f"{self._dir(version)}/manifest.json", full)
        self.loc.write_json("LATEST", {"version": int(version)})
        self.loc.remove("CANARY")
        self._record("promote", int(version), full.get("gate") or "")
        return full

    def end_canary(self, version: int, reason: str, extra: dict | None = None) -> dict:
        """Stop serving the canary ``version`` and mark it refused (kept on disk for the record)."""
        self._check_on_canary(version)
        full = self._checked({**self.manifest(version), **(extra or {}), "stage": "refused",
                              "refused_because": reason})
        self.loc.write_json(f"{self._dir(version)}/manifest.json", full)
        self.loc.remove("CANARY")
        self._record("refuse", int(version), reason)
        return full

    def start_experiment(self, definition: dict, operator: str = "operator") -> dict:
        """Run an operator's experiment (``definition``: :meth:`rl.experiment.Experiment.from_dict`);
        returns it as stored. ValueError naming the field when it is invalid, an arm's version is
        not stored, or an experiment already runs."""
        exp = Experiment.from_dict(definition)
        running = self.experiment()
        if running is not None:
            raise ExperimentConflict(f"experiment {running['name']!r} is running: stop it first")
        for i, a in enumerate(exp.arms):
            if a.algorithm is not None:
                if a.version is not None:
                    raise ValueError(f"arms[{i}].version: an algorithm arm starts without one "
                                     "(the trainer stores its versions)")
                continue
            try:
                self.manifest(a.version)
            except KeyError as e:
                raise ValueError(f"arms[{i}].version: {e.args[0]}") from None
        stored = exp.to_dict()
        self.loc.write_json("EXPERIMENT", stored)
        arms = ", ".join(f"{a.name}={a.algorithm or f'v{a.version}'} {a.share:.0%}{' shadow' if a.shadow else ''}"
                         for a in exp.arms)
        self._record("experiment_start", self._live_version(), f"{exp.name} by {operator}: {arms}")
        return stored

    def stop_experiment(self, reason: str = "stopped", operator: str = "operator") -> dict:
        """End the running experiment (ValueError when none runs); returns what ran."""
        running = self.experiment()
        if running is None:
            raise NoExperiment("no experiment is running")
        self.loc.remove("EXPERIMENT")
        self._record("experiment_stop", self._live_version(), f"{running['name']} by {operator}: {reason}")
        self._prune()
        return running

    def advance_arm(self, arm: str, blob: bytes, manifest: dict) -> dict:
        """Store the next version of the running experiment's algorithm arm ``arm`` (validated as
        :meth:`publish` validates) and serve it to that arm's users; returns its manifest.
        ValueError when no experiment runs, it has no such algorithm arm, or the weights are of
        another algorithm."""
        running = self.experiment()
        if running is None:
            raise NoExperiment("no experiment is running")
        arms = list(running["arms"])
        i = next((i for i, a in enumerate(arms) if a["name"] == arm), None)
        if i is None:
            raise ValueError(f"experiment {running['name']!r} has no arm {arm!r}")
        algorithm = arms[i].get("algorithm")
        if algorithm is None:
            raise ValueError(f"arm {arm!r} serves stored version {arms[i]['version']}: only an algorithm arm advances")
        got = (manifest.get("spec") or {}).get("algorithm") if isinstance(manifest, dict) else None
        if got != algorithm:
            raise ValueError(f"arm {arm!r} trains {algorithm}; these weights are {got}")
        before = arms[i]["version"]
        full = self._store(blob, {**manifest, "stage": "arm"}, parent=before)
        arms[i] = {**arms[i], "version": full["version"]}
        self.loc.write_json("EXPERIMENT", {**running, "arms": arms})
        self._record("arm_version", full["version"], f"{running['name']}/{arm} ({algorithm})")
        if before is not None and before not in self._pinned():  # superseded: never live, never a rollback
            self.loc.remove(self._dir(before))  # target; the trainer stores one a round, which would crowd
        self._prune()                           # the live lineage's versions out of keep_versions
        return full

    def _live_version(self) -> int:
        m = self.latest()
        return 0 if m is None else int(m["version"])

    # -- the record of what went live and why --------------------------------------------------
    def _record(self, action: str, version: int, reason: str) -> None:
        """One line of the history (append-only; never pruned): what changed, when and why."""
        self._history.append(json.dumps({"ts": time.time(), "action": action, "version": int(version), "reason": reason}))

    def history(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` entries of the record: publish, canary, promote, refuse, rollback,
        experiment_start, experiment_stop."""
        return [json.loads(x) for x in self._history.tail(limit)]

    @staticmethod
    def _checked(manifest: dict) -> dict:
        """The manifest as :class:`rl.manifest.PolicyManifest` writes it (ValueError on an unknown key)."""
        return PolicyManifest.from_dict(manifest).to_dict()

    def _check_on_canary(self, version: int) -> None:
        running = self.canary()
        if running is None or int(running["version"]) != int(version):
            raise ValueError(f"version {version} is not on canary "
                             f"(canary: {None if running is None else running['version']})")

    def _end_running_canary(self, reason: str) -> None:
        running = self.canary()
        if running is not None:
            self.end_canary(running["version"], reason)

    def _store(self, blob: bytes, manifest: dict, parent: int | None | str = "live") -> dict:
        """Validate and write a version; its parent is the live version unless ``parent`` is given."""
        try:
            m = PolicyManifest.from_dict({"sha256": sha256_hex(blob), **manifest})
        except (TypeError, ValueError) as e:
            self.refused += 1
            raise WeightsError(str(e)) from None
        try:
            unpack(blob, sha256=m.sha256, expect=expected_shapes(m.spec))
        except WeightsError:
            self.refused += 1
            raise
        current = self.latest()
        version = (max(self.versions()) if self.versions() else 0) + 1
        if parent == "live":
            parent = current["version"] if current else None
        full = m.replace(version=version, parent=parent, created=time.time()).to_dict()
        d = self._dir(version)  # weights first, the manifest last: a version exists once it is whole
        self.loc.write_bytes(f"{d}/weights.safetensors", blob)
        self.loc.write_json(f"{d}/manifest.json", full)
        return full

    def rollback(self, to: int | None = None, reason: str = "operator rollback") -> dict:
        """Serve an earlier version again (default: the current one's parent), as a new version;
        ``reason`` goes into its manifest and the history."""
        current = self.latest()
        if current is None:
            raise KeyError("nothing to roll back: no policy has been published")
        if to is not None:
            target = to
        elif current.get("rollback_of") is not None:  # a rollback's own parent is the version it replaced
            target = current.get("rollback_of_parent")
        else:
            target = current.get("parent")
        if target is None:
            raise KeyError(f"version {current['version']} has no parent to roll back to")
        m, blob = self.get(target)
        if m.get("stage", "live") != "live":
            raise ValueError(f"version {target} was never served ({m['stage']}): not a rollback target")
        keep = {k: v for k, v in m.items() if k not in ("version", "parent", "created", "stage", "promoted")}
        keep.pop("rollback_reason", None)
        return self.publish(blob, {**keep, "rollback_of": target, "rolled_back": current["version"],
                                   "rollback_of_parent": m.get("parent"), "rollback_reason": reason})

    def _prune(self) -> None:
        """Keep the newest ``keep`` versions, and always the served one, the canary and the experiment's."""
        pinned = self._pinned()
        for v in self.versions()[:-self.keep]:
            if v not in pinned:
                self.loc.remove(self._dir(v))

    def _pinned(self) -> set[int]:
        """Versions replicas may be serving: the live one, the canary and the experiment's arms'."""
        pinned = {int(m["version"]) for m in (self.latest(), self.canary()) if m is not None}
        return pinned | {int(a["version"]) for a in (self.experiment() or {}).get("arms", []) if a["version"] is not None}

    def metrics(self) -> dict:
        m, c = self.latest(), self.canary()
        rollbacks = sum(1 for h in self.history(10_000) if h["action"] == "rollback")
        return {"latest": m["version"] if m else None, "canary": c["version"] if c else None,
                "kept": len(self.versions()), "refused": self.refused, "rollbacks": rollbacks}


#: Most seconds one :meth:`PolicyStore.serving_change` call waits (a caller's timeout must exceed it).
MAX_WATCH_S = 60.0


def _waking(write):
    """``write`` (a PolicyDirectory method), then wake :meth:`PolicyStore.serving_change`'s waiters
    with the state it left (refused writes included: a refusal can end a canary)."""

    @functools.wraps(write)
    def method(self, *args, **kwargs):
        try:
            return write(self, *args, **kwargs)
        finally:
            self._changed()

    return method


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, concurrency_groups={"watch": 512})
class PolicyStore(PolicyDirectory):
    """The named, detached actor (:data:`actors.registry.STORE`); restarts re-read the directory.

    Replicas follow it with :meth:`serving_change`, a long poll: each waits in the ``watch``
    concurrency group (its own threads) until what the store serves differs from what that replica
    holds, so a publish reaches every replica at once and an idle store reads nothing from its
    storage. The methods that write run one at a time in the default group; each
    refreshes the state the watchers wait on."""

    def __init__(self, path, keep: int = 10):
        super().__init__(path, keep)
        self._watch = threading.Condition()
        self._serving = PolicyDirectory.serving(self)

    def _changed(self) -> None:
        state = PolicyDirectory.serving(self)
        with self._watch:
            self._serving = state
            self._watch.notify_all()

    # every write that can change what replicas serve wakes the watchers
    publish = _waking(PolicyDirectory.publish)
    publish_canary = _waking(PolicyDirectory.publish_canary)
    promote = _waking(PolicyDirectory.promote)
    end_canary = _waking(PolicyDirectory.end_canary)
    rollback = _waking(PolicyDirectory.rollback)
    start_experiment = _waking(PolicyDirectory.start_experiment)
    stop_experiment = _waking(PolicyDirectory.stop_experiment)
    advance_arm = _waking(PolicyDirectory.advance_arm)

    @ray.method(concurrency_group="watch")
    def serving_change(self, known: list | None, wait_s: float = 20.0) -> dict:
        """:meth:`serving` as soon as its :func:`rl.manifest.serving_key` differs from ``known``
        (at once when it already does, or ``known`` is None), else after ``wait_s`` (at most
        :data:`MAX_WATCH_S`) with the unchanged state."""
        deadline = time.monotonic() + min(max(0.0, wait_s), MAX_WATCH_S)
        with self._watch:
            while known is not None and serving_key(self._serving) == list(known):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._watch.wait(left)
            return self._serving
