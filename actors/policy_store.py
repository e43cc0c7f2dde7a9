"""PolicyStore: versioned policy weights (safetensors + manifest) in a durable directory, behind a named actor.

::

    store_dir/
      LATEST                  {"version": 12}           (replaced atomically)
      v000012/manifest.json   version, parent, sha256, created, spec, trained_through, ope, ...
      v000012/weights.safetensors

:class:`PolicyDirectory` is the whole logic (no Ray): ``publish`` validates before anything is
written (safetensors only, finite, the tensor names and shapes the spec's policy expects, the
sha256 it was sent with) and refuses with :class:`rl.weights.WeightsError`; ``latest`` is cheap
(replicas poll it); ``get`` returns the bytes; ``rollback`` republishes an earlier good version's
weights as a *new* version (``rollback_of`` names it), so versions only ever go forward and a
replica never has to serve backwards. The last ``keep`` versions stay on disk.
:class:`PolicyStore` is the named, detached Ray actor around it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from rl.policies import PolicySpec, expected_shapes
from rl.weights import WeightsError, sha256_hex, unpack

__all__ = ["PolicyDirectory", "PolicyStore", "STORE_NAME", "get_or_create_store"]

STORE_NAME = "streamrec-policy-store"
NAMESPACE = "streamrec"


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class PolicyDirectory:
    def __init__(self, path: str | os.PathLike, keep: int = 10):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.refused = 0

    # -- reading -------------------------------------------------------------------------------
    def _dir(self, version: int) -> Path:
        return self.path / f"v{int(version):06d}"

    def versions(self) -> list[int]:
        out = []
        for p in self.path.glob("v*/manifest.json"):
            try:
                out.append(int(p.parent.name[1:]))
            except ValueError:
                continue
        return sorted(out)

    def latest(self) -> dict | None:
        """The manifest of the version to serve (None before the first publish)."""
        try:
            v = json.loads((self.path / "LATEST").read_text())["version"]
        except (FileNotFoundError, KeyError, ValueError):
            return None
        return self.manifest(v)

    def manifest(self, version: int) -> dict:
        p = self._dir(version) / "manifest.json"
        if not p.is_file():
            raise KeyError(f"policy version {version} is not in the store (kept: {self.versions()})")
        return json.loads(p.read_text())

    def get(self, version: int | None = None) -> tuple[dict, bytes]:
        """(manifest, safetensors bytes) of a version (default: latest)."""
        if version is None:
            m = self.latest()
            if m is None:
                raise KeyError("no policy has been published yet")
            version = m["version"]
        m = self.manifest(version)
        return m, (self._dir(version) / "weights.safetensors").read_bytes()

    # -- writing -------------------------------------------------------------------------------
    def publish(self, blob: bytes, manifest: dict) -> dict:
        """Validate and store a new version; returns its full manifest. Raises WeightsError."""
        try:
            spec = PolicySpec.from_dict(manifest.get("spec") or {})
        except (TypeError, ValueError) as e:
            self.refused += 1
            raise WeightsError(f"manifest spec is invalid: {e}") from None
        sha = manifest.get("sha256") or sha256_hex(blob)
        try:
            unpack(blob, sha256=sha, expect=expected_shapes(spec))
        except WeightsError:
            self.refused += 1
            raise
        current = self.latest()
        version = (max(self.versions()) if self.versions() else 0) + 1
        full = {**manifest, "version": version, "parent": current["version"] if current else None,
                "sha256": sha, "created": time.time(), "spec": spec.to_dict()}
        d = self._dir(version)
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=".publish."))
        (tmp / "weights.safetensors").write_bytes(blob)
        _write_json(tmp / "manifest.json", full)
        os.replace(tmp, d)
        _write_json(self.path / "LATEST", {"version": version})
        self._prune(keep_also=version)
        return full

    def rollback(self, to: int | None = None) -> dict:
        """Serve an earlier version again (default: the current one's parent), as a new version."""
        current = self.latest()
        if current is None:
            raise KeyError("nothing to roll back: no policy has been published")
        target = to if to is not None else current.get("rollback_of_parent", current.get("parent"))
        if target is None:
            raise KeyError(f"version {current['version']} has no parent to roll back to")
        m, blob = self.get(target)
        keep = {k: v for k, v in m.items() if k not in ("version", "parent", "created")}
        return self.publish(blob, {**keep, "rollback_of": target, "rolled_back": current["version"],
                                   "rollback_of_parent": m.get("parent")})

    def _prune(self, keep_also: int) -> None:
        vs = self.versions()
        for v in vs[:-self.keep]:
            if v != keep_also:
                shutil.rmtree(self._dir(v), ignore_errors=True)

    def metrics(self) -> dict:
        m = self.latest()
        return {"latest": m["version"] if m else None, "kept": len(self.versions()), "refused": self.refused}


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class PolicyStore(PolicyDirectory):
    """The named, detached actor (``streamrec-policy-store``); restarts re-read the directory."""


def get_or_create_store(store_dir: str, keep: int = 10, detached: bool = True):
    """The store actor of this cluster, created on first use."""
    opts: dict[str, Any] = {"name": STORE_NAME, "namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    return PolicyStore.options(**opts).remote(str(Path(store_dir).resolve()), keep)
