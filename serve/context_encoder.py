"""ContextEncoder deployment: the request's free-text context -> a unit vector, batched and cached.

It runs the one shared :class:`streamrec.encoder.TextEncoder` (the same the embedding job and
the trainer use), so a context vector lives in the catalog's space. ``@serve.batch`` groups
concurrent requests into one forward pass; an LRU cache answers repeated texts without one.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Any

import numpy as np
from ray import serve

from streamrec.config import settings_from_args

__all__ = ["ContextEncoder", "LRU"]


class LRU:
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        v = self._d.get(key)
        if v is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)


@serve.deployment(name="ContextEncoder", ray_actor_options={"num_cpus": 0.2})
class ContextEncoder:
    def __init__(self, args: dict[str, Any]):
        from serve.listeners import bind_replica_grpc_to_node_ip
        from streamrec.encoder import TextEncoder

        bind_replica_grpc_to_node_ip()
        s = settings_from_args(args)
        e = s.encoder
        self.encoder = TextEncoder(e.model, max_length=e.max_length, device=e.device, quantize_int8=e.quantize_int8)
        self.cache = LRU(s.serve.encoder_cache_size)
        self.encode_batch.set_max_batch_size(s.serve.encoder_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(s.serve.encoder_batch_wait_s)
        gc.collect()
        gc.freeze()  # the model and its imports live as long as the replica (see Ranker.__init__)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [self.cache.get(t) for t in texts]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            vecs = self.encoder.encode([texts[i] for i in todo])
            for i, v in zip(todo, vecs):
                out[i] = v
                self.cache.put(texts[i], v)
        return out  # type: ignore[return-value]

    async def encode(self, text: str) -> np.ndarray:
        return await self.encode_batch(text)

    def stats(self) -> dict:
        return {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses}
