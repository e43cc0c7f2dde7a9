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

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_manifest", "write_manifest", "load_vectors", "MANIFEST"]

MANIFEST = "manifest.json"


def read_manifest(output_dir: str | Path) -> dict[str, Any] | None:
    p = Path(output_dir) / MANIFEST
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return None


def write_manifest(output_dir: str | Path, manifest: dict[str, Any]) -> Path:
    d = Path(output_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, d / MANIFEST)
    return d / MANIFEST


def load_vectors(output_dir: str | Path, kind: str = "items") -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids (n,), vectors (n, d) float32, manifest) of the live run."""
    import pyarrow.parquet as pq

    m = read_manifest(output_dir)
    if m is None or kind not in m.get("outputs", {}):
        raise FileNotFoundError(f"{output_dir}: no {kind} embeddings (run `streamrec embed` first)")
    out = m["outputs"][kind]
    t = pq.read_table(Path(output_dir) / out["dir"])
    id_col = out["id_column"]
    ids = t.column(id_col).to_numpy(zero_copy_only=False)
    vec = t.column("vector").combine_chunks()
    d = vec.type.list_size
    vectors = vec.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order], m
