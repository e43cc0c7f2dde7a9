"""Retrieval over item vectors, one interface: exact inner product, or faiss above a size.

    index = ItemIndex.build(ids, vectors)       # (n,) ids, (n, d) unit vectors
    scores, ids = index.search(queries, k=100)  # (B, k) each, best first
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["ItemIndex", "ExactIndex", "FaissIndex"]


def _check(vectors: np.ndarray, ids: Sequence) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {v.shape}")
    if len(ids) != v.shape[0]:
        raise ValueError(f"{len(ids)} ids for {v.shape[0]} vectors")
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinity")
    return v


@dataclass
class ExactIndex:
    ids: np.ndarray
    vectors: np.ndarray
    kind: str = field(default="exact", init=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self.ids))
        scores = q @ self.vectors.T  # (B, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(scores, top, 1)
        order = np.argsort(-part, axis=1, kind="stable")
        rows = np.take_along_axis(top, order, 1)
        return np.take_along_axis(part, order, 1), self.ids[rows]


@dataclass
class FaissIndex:
    ids: np.ndarray
    index: object
    quantizer: object = None
    """kept alive with the index (faiss does not own it from Python)"""
    kind: str = field(default="faiss-ivf", init=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.ids))
        scores, rows = self.index.search(q, k)
        return scores, self.ids[np.clip(rows, 0, None)]


class ItemIndex:
    @staticmethod
    def build(ids: Sequence, vectors: np.ndarray, *, exact_max: int = 50_000, nlist: int | None = None,
              nprobe: int | None = None, seed: int = 0):
        """Exact search up to ``exact_max`` items, else a faiss IVF-Flat index (inner product).

        Defaults: ``nlist = sqrt(n)`` lists, ``nprobe = nlist / 3`` probed: recall@100 >= 0.95
        against exact search on clustered 384-d data (tests/unit/test_index.py), ~3x faster.
        """
        v = _check(vectors, ids)
        arr = np.asarray(ids)
        if len(arr) <= exact_max:
            return ExactIndex(arr, v)
        import faiss

        n, d = v.shape
        nlist = nlist or max(16, int(np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        index.train(v[rng.choice(n, min(n, nlist * 64), replace=False)])
        index.add(v)
        index.nprobe = nprobe or max(1, nlist // 3)
        return FaissIndex(arr, index, quantizer)
