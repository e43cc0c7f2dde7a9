"""PolicyFollower: keep a local copy of the newest published policy, swapping only whole, valid versions.

Every Ranker replica (and the benchmark's in-process clients) holds one::

    follower = PolicyFollower(store, item_ids, item_vectors)
    follower.poll()            # cheap: asks the store for the latest manifest; fetches only when newer
    follower.current           # (featurizer, policy, version) — replaced in one assignment

A new version is fetched, checked (sha256, finite, the tensor names and shapes its spec
implies), converted into the serving model and warmed up on a dummy request before the swap.
Anything wrong leaves the old version serving and is counted in ``refused``/``last_error``.
Versions only move forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ray

from rl.features import Featurizer
from rl.policies import Observation, PolicySpec, expected_shapes, policy_from_state
from rl.weights import WeightsError, unpack

__all__ = ["PolicyFollower", "Served"]


def _call(obj, method: str, *args):
    f = getattr(obj, method)
    return ray.get(f.remote(*args), timeout=30) if hasattr(f, "remote") else f(*args)


@dataclass
class Served:
    featurizer: Featurizer
    policy: object
    version: int
    spec: PolicySpec
    loaded_at: float = field(default_factory=time.time)


class PolicyFollower:
    def __init__(self, store, item_ids, item_vectors: np.ndarray, *, explore: bool = True):
        self.store = store
        self.item_ids = np.asarray(item_ids)
        self.item_vectors = np.asarray(item_vectors, np.float32)
        self.explore = explore
        self.current: Served | None = None
        self.refused = 0
        self.swaps = 0
        self.last_error: str | None = None
        self._refused_versions: set[int] = set()

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    def poll(self) -> bool:
        """Swap to the store's latest version if it is newer and valid; True when a swap happened."""
        latest = _call(self.store, "latest")
        if latest is None:
            return False
        v = int(latest["version"])
        if (self.current is not None and v <= self.current.version) or v in self._refused_versions:
            return False
        try:
            self.current = self.load(*_call(self.store, "get", v))
        except (WeightsError, ValueError, KeyError) as e:
            self.refused += 1
            self._refused_versions.add(v)
            self.last_error = f"version {v} refused: {e}"
            return False
        self.swaps += 1
        return True

    def load(self, manifest: dict, blob: bytes) -> Served:
        """Validate and build a servable version (raises WeightsError/ValueError; nothing is swapped here)."""
        spec = PolicySpec.from_dict(manifest["spec"])
        if spec.num_rows != len(self.item_ids) + 1 or spec.text_dim != self.item_vectors.shape[1]:
            raise WeightsError(f"version {manifest['version']} was built for {spec.num_rows - 1} items of "
                               f"dimension {spec.text_dim}; this replica serves {len(self.item_ids)} of "
                               f"dimension {self.item_vectors.shape[1]}")
        tensors = unpack(blob, sha256=manifest["sha256"], expect=expected_shapes(spec))
        featurizer = Featurizer(self.item_ids, self.item_vectors, tensors["projection"])
        policy = policy_from_state(spec, tensors, explore=self.explore)
        # warm up on a dummy request: a version that cannot score does not get swapped in
        n = min(spec.num_candidates, len(self.item_ids))
        obs = Observation(np.zeros(spec.layout.user_dim, np.float32), featurizer.projected[:n],
                          np.arange(1, n + 1))
        s = policy.scores(obs)
        if not np.isfinite(s).all():
            raise WeightsError(f"version {manifest['version']} scores NaN or infinity")
        return Served(featurizer, policy, int(manifest["version"]), spec)
