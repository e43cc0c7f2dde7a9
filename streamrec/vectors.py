"""Embedding job output: Parquet shards of (id, vector, content hash, model id) plus a manifest.

::

    out/
      manifest.json            # which run is live: model_id, dim, counts, the vectors dir
      items-<run_id>/*.parquet # item_id, content_hash, model_id, vector (fixed-size list float32[d])
      users-<run_id>/*.parquet # user_id, ... (when the dataset has user text)

The manifest is replaced atomically at the very end of a run, so a run that dies half way
leaves the previous output live and untouched.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from streamrec.storage import Location

__all__ = ["read_manifest", "write_manifest", "load_vectors", "write_vectors", "MANIFEST"]

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


def write_vectors(output_dir: str | os.PathLike | Location, outputs: dict[str, tuple[np.ndarray, np.ndarray, str]],
                  model_id: str) -> dict:
    """Write precomputed vectors in the embedding job's layout: ``{kind: (ids (n,), vectors (n, d), id_column)}``.

    For vectors made elsewhere (and for tests); the embedding job is the way to make them from text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = _loc(output_dir)
    run_id = time.strftime("%Y%m%d%H%M%S")
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
    write_manifest(loc, manifest)
    return manifest
