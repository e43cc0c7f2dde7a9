"""Blocking: call a Ray actor's methods as plain methods (``ray.get`` of each call, with a timeout).

The pure loops (:class:`rl.trainer_loop.TrainerLoop`, :class:`serve.follower.PolicyFollower`)
take plain interfaces; the actor shells hand them ``Blocking(handle)``, tests a plain object.
"""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["Blocking"]


class Blocking:
    def __init__(self, handle: Any, timeout_s: float | None = 60.0):
        self.handle, self.timeout_s = handle, timeout_s

    def __getattr__(self, method: str):
        remote = getattr(self.handle, method).remote
        return lambda *args, **kwargs: ray.get(remote(*args, **kwargs), timeout=self.timeout_s)

    def __reduce__(self):
        return Blocking, (self.handle, self.timeout_s)
