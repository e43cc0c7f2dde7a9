"""Embedding job output: Parquet shards of (id, vector, content hash, model id) plus a manifest.

::

    out/
      manifest.json            # which run is live: model_id, dim, counts, the vectors dir
      items-<run_id>/*.parquet # item_id, content_hash, model_id, vector (fixed-size list float32[d])
      rows-<run_id>.parquet    # item_id, row: every item's row of the policies' item-id tables
      users-<run_id>/*.parquet # user_id, ... (when the dataset has user text)

The manifest is replaced atomically at the very end of a run, so a run that dies half way
leaves the previous output live and untouched. Each run is a catalog version (its ``run_id``):
replicas and the trainer follow the manifest and switch to a new run while they serve and train
(:func:`load_catalog`).

Rows are stable across runs (:func:`assign_rows`): an item keeps its row for good, a new item
gets the next free one, so a policy trained on an older catalog still finds its learned rows,
and its tables grow at the end (:func:`rl.policies.grow_rows`). A policy version records which
item each of its rows stands for (:func:`rows_digest`); replicas and the trainer use it only
over a catalog whose rows give the same digest (an output directory started afresh, or one that
lost its rows files, may number the same items otherwise).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from streamrec.storage import Location

__all__ = ["read_manifest", "write_manifest", "load_vectors", "write_vectors", "MANIFEST", "Catalog", "load_catalog",
           "assign_rows", "read_rows", "write_rows", "write_item_rows", "rows_digest", "rows_match"]

MANIFEST = "manifest.json"


def _loc(output_dir: str | os.PathLike | Location) -> Location:
    return output_dir if isinstance(output_dir, Location) else Location(output_dir)


def read_manifest(output_dir: str | os.PathLike | Location) -> dict[str, Any] | None:
    """The live run's manifest (None before the first run). ``output_dir`` is a path or a URI."""
    return _loc(output_dir).read_json(MANIFEST, default=None)


def write_manifest(output_dir: str | os.PathLike | Location, manifest: dict[str, Any]) -> None:
    _loc(output_dir).write_json(MANIFEST, manifest, indent=2)


def load_vectors(output_dir: str | os.PathLike | Location, kind: str = "items") -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids (n,), vectors (n, d) float32, manifest) of the live run."""
    import pyarrow.parquet as pq

    loc = _loc(output_dir)
    m = read_manifest(loc)
    if m is None or kind not in m.get("outputs", {}):
        raise FileNotFoundError(f"{loc.uri}: no {kind} embeddings (run `streamrec embed` first)")
    out = m["outputs"][kind]
    t = pq.read_table(loc.path(out["dir"]), filesystem=loc.fs)
    id_col = out["id_column"]
    ids = t.column(id_col).to_numpy(zero_copy_only=False)
    vec = t.column("vector").combine_chunks()
    d = vec.type.list_size
    vectors = vec.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order], m


def assign_rows(previous: Mapping[str, int], ids: Iterable[str]) -> dict[str, int]:
    """Rows of the item-id tables (1-based; row 0 is the unknown item) for a catalog of ``ids``:
    every id in ``previous`` keeps its row, ids never seen take the next rows in sorted order.
    Rows of ids that left the catalog stay theirs (one that comes back finds its row again)."""
    out = {str(k): int(v) for k, v in previous.items()}
    nxt = max(out.values(), default=0) + 1
    for i in sorted({str(i) for i in ids} - out.keys()):
        out[i] = nxt
        nxt += 1
    return out


def read_rows(output_dir: str | os.PathLike | Location, manifest: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The rows the manifest's items have ({} before the first run). A run written before rows
    existed numbers its items 1..n in sorted order, as they were served then."""
    import pyarrow.parquet as pq

    loc = _loc(output_dir)
    m = read_manifest(loc) if manifest is None else manifest
    items = (m or {}).get("outputs", {}).get("items")
    if not items:
        return {}
    if "rows" in items:
        t = pq.read_table(loc.path(items["rows"]), filesystem=loc.fs)
        return dict(zip(t.column("item_id").to_pylist(), t.column("row").to_pylist()))
    t = pq.read_table(loc.path(items["dir"]), columns=[items["id_column"]], filesystem=loc.fs)
    return assign_rows({}, t.column(0).to_pylist())


def write_item_rows(output_dir: str | os.PathLike | Location, run_id: str, ids: Iterable[str]) -> dict[str, str]:
    """Give a run's items their rows (the live run's kept, new ids the next ones) and write them;
    returns the entry the run's manifest records for its items' rows."""
    loc = _loc(output_dir)
    write_rows(loc, f"rows-{run_id}.parquet", assign_rows(read_rows(loc), map(str, ids)))
    return {"rows": f"rows-{run_id}.parquet"}


def rows_digest(row_ids: Sequence[str] | None, num_rows: int) -> str | None:
    """sha256 of the item ids of rows 1 .. ``num_rows`` - 1 in row order (``row_ids[r]``: the item
    of row r, :attr:`Catalog.row_ids`): which item each row of tables that size stands for. None
    when ``row_ids`` is None or has fewer rows."""
    if row_ids is None or len(row_ids) < num_rows:
        return None
    return hashlib.sha256("\n".join(row_ids[1:num_rows]).encode()).hexdigest()


def rows_match(recorded: str | None, row_ids: Sequence[str] | None, num_rows: int) -> bool:
    """Whether a catalog's rows (``row_ids``) stand for the items a version's ``num_rows`` rows
    were learned for (``recorded``: its :func:`rows_digest`). True when either is not known."""
    return recorded is None or row_ids is None or rows_digest(row_ids, num_rows) == recorded


def write_rows(output_dir: str | os.PathLike | Location, name: str, rows: Mapping[str, int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"item_id": pa.array(list(rows), pa.string()),
                             "row": pa.array(list(rows.values()), pa.int64())}), sink)
    _loc(output_dir).write_bytes(name, sink.getvalue().to_pybytes())


@dataclass(frozen=True, eq=False)
class Catalog:
    """One catalog version: the live run's items with their vectors and stable rows."""

    ids: np.ndarray
    """(n,) item ids, sorted."""
    vectors: np.ndarray
    """(n, D) float32 text vectors."""
    rows: np.ndarray
    """(n,) each item's row of the item-id tables (>= 1)."""
    num_rows: int
    """Size of those tables: every row ever given out + the unknown row 0."""
    version: str
    """The embedding run that wrote it."""
    row_ids: tuple[str, ...] | None = None
    """Every id that ever had a row, by row (``row_ids[r]``; row 0, the unknown item, is ""):
    withdrawn items keep theirs. :func:`rows_digest` of it identifies the numbering."""


def load_catalog(output_dir: str | os.PathLike | Location) -> Catalog:
    """The live catalog version (FileNotFoundError before the first embedding run)."""
    ids, vectors, m = load_vectors(output_dir)
    every = read_rows(output_dir, m)
    missing = [i for i in ids if str(i) not in every]
    if missing:
        raise ValueError(f"{_loc(output_dir).uri}: the rows file lacks {len(missing)} items, e.g. {missing[:3]}")
    rows = np.asarray([every[str(i)] for i in ids], np.int64)
    num_rows = max(every.values(), default=0) + 1
    row_ids = [""] * num_rows
    for i, r in every.items():
        row_ids[r] = str(i)
    return Catalog(ids, vectors, rows, num_rows, str(m.get("run_id")), tuple(row_ids))


def write_vectors(output_dir: str | os.PathLike | Location, outputs: dict[str, tuple[np.ndarray, np.ndarray, str]],
                  model_id: str) -> dict:
    """Write precomputed vectors in the embedding job's layout: ``{kind: (ids (n,), vectors (n, d), id_column)}``.

    For vectors made elsewhere (and for tests); the embedding job is the way to make them from text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = _loc(output_dir)
    run_id = time.strftime("%Y%m%d%H%M%S-") + uuid.uuid4().hex[:6]
    manifest: dict[str, Any] = {"model_id": model_id, "run_id": run_id, "outputs": {}}
    for kind, (ids, vectors, id_col) in outputs.items():
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        target = f"{kind}-{run_id}"
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({id_col: pa.array([str(i) for i in ids]), "vector": col}), sink)
        loc.write_bytes(f"{target}/part-0.parquet", sink.getvalue().to_pybytes())
        manifest["dim"] = int(v.shape[1])
        manifest["outputs"][kind] = {"dir": target, "id_column": id_col, "count": len(ids),
                                     "embedded": len(ids), "kept": 0}
        if kind == "items":
            manifest["outputs"][kind].update(write_item_rows(loc, run_id, ids))
    write_manifest(loc, manifest)
    return manifest
