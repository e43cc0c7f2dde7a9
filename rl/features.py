"""The policy's view of one impression: a fixed projection of embeddings, context features, observation layout.

Serving (the Ranker), training (the Trainer) and the simulators build observations with the
same :class:`Featurizer`, so the input a version is trained on is the input it is served with.

An observation is one flat float32 vector (what RLlib's Box space wants)::

    [ user (U) | item features (N*m) | item rows (N) ]
    user = [ profile·P (m) | context text·P (m) | context features (C) ]       U = 2m + C

Context features (C = 30), every typed field of the request's context; a value the vocabulary
does not know, or a missing one, sets its field's ``unknown`` slot:

    [0:2]   hour of day as sin, cos (the request's ``hour``, else the serving time's UTC hour)
    [2:6]   daypart one-hot: night, morning, afternoon, evening
    [6:8]   age / 100, age unknown
    [8:12]  gender one-hot: female, male, other, unknown
    [12:18] device one-hot: mobile, desktop, tv, tablet, other, unknown
    [18:30] locale's language one-hot: en es fr de pt it ja zh ko ru, other, unknown

The free ``text`` of the context is not here: the ContextEncoder embeds it (context text·P).

``P`` is a (D, m) PCA projection of the catalog's D-dimensional text vectors, fitted once per
policy lineage and published with the weights. ``item rows`` index the learnable item-id
embedding: stable across catalog versions (:func:`streamrec.vectors.assign_rows`); 0 is the unknown
item, and so is an item newer than a version's tables, which then ranks by its text vector alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["table_rows", "CONTEXT_DIM", "DAYPARTS", "GENDERS", "DEVICES", "LANGUAGES", "context_features", "fit_projection",
           "Featurizer", "ObsLayout"]

DAYPARTS = ("night", "morning", "afternoon", "evening")
GENDERS = ("female", "male", "other")
DEVICES = ("mobile", "desktop", "tv", "tablet", "other")
LANGUAGES = ("en", "es", "fr", "de", "pt", "it", "ja", "zh", "ko", "ru")
#: hour sin/cos, 4 dayparts, age/100 + unknown, gender (3 + unknown), device (5 + unknown),
#: locale language (10 + other + unknown)
CONTEXT_DIM = 2 + len(DAYPARTS) + 2 + (len(GENDERS) + 1) + (len(DEVICES) + 1) + (len(LANGUAGES) + 2)
_GENDER_AT, _DEVICE_AT, _LANGUAGE_AT = 8, 8 + len(GENDERS) + 1, 8 + len(GENDERS) + len(DEVICES) + 2


def daypart(hour: float) -> int:
    """0 night [0,6), 1 morning [6,12), 2 afternoon [12,18), 3 evening [18,24)."""
    return int(hour % 24) // 6


def _one_hot(out: np.ndarray, at: int, vocabulary: tuple[str, ...], value: Any, *, other: bool = False) -> None:
    """Set ``value``'s slot in ``out[at:]``: its index in ``vocabulary``; else (with ``other``) the
    other slot for a well-formed unknown string; else the unknown slot (the last)."""
    if isinstance(value, str) and value in vocabulary:
        out[at + vocabulary.index(value)] = 1.0
    elif other and isinstance(value, str) and value:
        out[at + len(vocabulary)] = 1.0
    else:
        out[at + len(vocabulary) + (1 if other else 0)] = 1.0


def context_features(context: Mapping[str, Any] | None, ts: float | None = None) -> np.ndarray:
    """(C,) typed request context -> features (the table in this module's docstring). A value of the
    wrong type or outside the vocabulary counts as unknown: events from any producer fit."""
    context = context or {}
    hour = context.get("hour")
    if not isinstance(hour, (int, float)) or isinstance(hour, bool) or not 0 <= hour < 24:
        hour = ((ts if ts is not None else 0.0) / 3600.0) % 24
    out = np.zeros(CONTEXT_DIM, dtype=np.float32)
    ang = 2 * math.pi * float(hour) / 24
    out[0], out[1] = math.sin(ang), math.cos(ang)
    out[2 + daypart(float(hour))] = 1.0
    age = context.get("age")
    if isinstance(age, (int, float)) and not isinstance(age, bool) and 0 < age < 130:
        out[6] = float(age) / 100.0
    else:
        out[7] = 1.0
    _one_hot(out, _GENDER_AT, GENDERS, context.get("gender"))
    _one_hot(out, _DEVICE_AT, DEVICES, context.get("device"))
    locale = context.get("locale")
    language = locale.replace("_", "-").split("-")[0].lower() if isinstance(locale, str) else None
    _one_hot(out, _LANGUAGE_AT, LANGUAGES, language, other=True)
    return out


def fit_projection(item_vectors: np.ndarray, m: int, seed: int = 0, max_rows: int = 20_000) -> np.ndarray:
    """(D, m) top-m principal directions of the item vectors (uncentred, so zero stays zero)."""
    v = np.asarray(item_vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) == 0:
        raise ValueError(f"item_vectors must be a non-empty (n, D) array, got shape {v.shape}")
    if not 1 <= m <= v.shape[1]:
        raise ValueError(f"projection size m must be in [1, {v.shape[1]}], got {m}")
    if len(v) > max_rows:
        v = v[np.random.default_rng(seed).choice(len(v), max_rows, replace=False)]
    _, _, vt = np.linalg.svd(v, full_matrices=False)
    p = vt[:m].T
    k = min(m, len(vt))
    if k < m:  # fewer items than m: pad with zeros, harmless
        p = np.concatenate([p, np.zeros((v.shape[1], m - k))], 1)
    return p.astype(np.float32)


@dataclass(frozen=True)
class ObsLayout:
    """Sizes of an observation; ``split`` undoes ``Featurizer.observe``."""

    m: int
    num_candidates: int
    context_dim: int = CONTEXT_DIM

    @property
    def user_dim(self) -> int:
        return 2 * self.m + self.context_dim

    @property
    def size(self) -> int:
        return self.user_dim + self.num_candidates * (self.m + 1)

    def split(self, obs):
        """obs (B, size) -> user (B, U), items (B, N, m), rows (B, N) (numpy or torch alike)."""
        u, n, m = self.user_dim, self.num_candidates, self.m
        user = obs[..., :u]
        items = obs[..., u:u + n * m].reshape(*obs.shape[:-1], n, m)
        rows = obs[..., u + n * m:]
        return user, items, rows


def table_rows(n_items: int, rows=None, num_rows: int | None = None) -> int:
    """Size of the item-id tables of a catalog: ``num_rows`` when given, else the largest of its
    ``rows`` + 1 (default rows 1..n: n + 1)."""
    if num_rows is not None:
        return int(num_rows)
    return n_items + 1 if rows is None or not len(rows) else int(np.max(rows)) + 1


@dataclass
class Featurizer:
    """Turns (profile, context, candidates) into observations, with the catalog it was built for.

    item_ids: (n,) catalog ids; item_vectors: (n, D) unit text vectors; projection: (D, m);
    rows: (n,) each item's row of the item-id tables (1-based, stable as the catalog grows: see
    :func:`streamrec.vectors.assign_rows`; default 1..n); table_rows: the tables' size (default
    the largest row + 1). A policy whose tables are smaller (a version trained before the catalog
    grew) reads the rows it lacks as row 0, the unknown item: the item ranks by its text vector.
    """

    item_ids: np.ndarray
    item_vectors: np.ndarray
    projection: np.ndarray
    rows_of_items: np.ndarray | None = None
    table_rows: int | None = None

    def __post_init__(self):
        self.item_ids = np.asarray(self.item_ids)
        n = len(self.item_ids)
        rows = np.arange(1, n + 1) if self.rows_of_items is None else np.asarray(self.rows_of_items, np.int64)
        if rows.shape != (n,) or (n and rows.min() < 1) or len(np.unique(rows)) != n:
            raise ValueError(f"rows_of_items must be {n} distinct rows >= 1, one per item")
        self.rows_of_items = rows
        ids = [str(i) for i in self.item_ids.tolist()]
        self.row_of = dict(zip(ids, rows.tolist()))  # 0 = unknown
        self._at = {i: k for k, i in enumerate(ids)}  # id -> its position in item_vectors
        largest = table_rows(n, rows)
        if self.table_rows is None:
            self.table_rows = largest
        elif self.table_rows < largest:
            raise ValueError(f"table_rows {self.table_rows} < the largest row + 1 ({largest})")
        self.projected = (np.asarray(self.item_vectors, np.float32) @ self.projection).astype(np.float32)

    @property
    def m(self) -> int:
        return int(self.projection.shape[1])

    @property
    def num_rows(self) -> int:
        """Size of the item-id tables (every row the catalog ever gave out + the unknown row 0)."""
        return int(self.table_rows)

    def with_catalog(self, item_ids, item_vectors: np.ndarray, rows_of_items=None, table_rows: int | None = None) -> "Featurizer":
        """The same projection over another catalog version."""
        return Featurizer(item_ids, item_vectors, self.projection, rows_of_items, table_rows)

    def layout(self, num_candidates: int) -> ObsLayout:
        return ObsLayout(self.m, num_candidates)

    def rows(self, candidate_ids: Sequence[str]) -> np.ndarray:
        return np.asarray([self.row_of.get(str(c), 0) for c in candidate_ids], dtype=np.int64)

    def candidate_features(self, candidate_ids: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """(N, m) projected text vectors; ``vectors`` (N, D) for items not in the catalog."""
        at = np.asarray([self._at.get(str(c), -1) for c in candidate_ids], dtype=np.int64)
        out = np.zeros((len(at), self.m), dtype=np.float32)
        known = at >= 0
        out[known] = self.projected[at[known]]
        if vectors is not None and (~known).any():
            out[~known] = np.asarray(vectors, np.float32)[~known] @ self.projection
        return out

    def user_features(self, profile: np.ndarray, context_vec: np.ndarray | None, ctx: np.ndarray) -> np.ndarray:
        """(U,) [profile·P, context text·P, context features]; profile/context_vec are (D,) or None."""
        d = self.projection.shape[0]
        p = np.zeros(d, np.float32) if profile is None else np.asarray(profile, np.float32)
        t = np.zeros(d, np.float32) if context_vec is None else np.asarray(context_vec, np.float32)
        return np.concatenate([p @ self.projection, t @ self.projection, np.asarray(ctx, np.float32)])

    def observe(self, user: np.ndarray, candidate_ids: Sequence[str], item_feats: np.ndarray | None = None) -> np.ndarray:
        """(size,) flat observation of one impression."""
        feats = self.candidate_features(candidate_ids) if item_feats is None else item_feats
        rows = self.rows(candidate_ids).astype(np.float32)
        return np.concatenate([np.asarray(user, np.float32), feats.reshape(-1), rows]).astype(np.float32)
