"""Embedding job on Ray Data: catalog text -> vectors, streamed block by block.

    streamrec embed [--config ray_config.yaml] [--full]
    ray job submit --working-dir . -- python -m cluster.jobs.embed --config ray_config.yaml

Pipeline (every stage streams; the catalog is never held whole)::

    read catalog -> content hash -> [incremental: keep unchanged rows of the live run]
      -> tokenize (CPU tasks) -> encode (actor pool: one per GPU, else CPU actors)
      -> Parquet (id, vector, content_hash, model_id) + manifest (switched atomically at the end)

A run that dies half way leaves the previous manifest, and so the previous vectors, live; run
it again and it embeds what is still missing or changed (docs/architecture.md, "Embedding").
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamrec.data.catalog import content_hash
from streamrec.storage import Location
from streamrec.vectors import read_manifest, write_item_rows, write_manifest

__all__ = ["run_embedding_job", "main", "EncodeBatch", "tokenize_batch"]

_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _tokenizer(model: str, max_length: int):
    key = (model, max_length)
    if key not in _TOKENIZERS:  # one load per worker process, reused across blocks
        from transformers import AutoTokenizer

        from streamrec.encoder import resolve_model

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(resolve_model(model))
    return _TOKENIZERS[key]


def hash_batch(batch: pa.Table, id_column: str) -> pa.Table:
    texts = batch.column("text").to_pylist()
    return pa.table({id_column: batch.column(id_column), "text": batch.column("text"),
                     "content_hash": [content_hash(t) for t in texts]})


def keep_changed(batch: pa.Table, id_column: str, previous_ref) -> pa.Table:
    """Rows whose id is new or whose content hash changed since the live run."""
    import pyarrow.compute as pc
    import ray

    prev: dict[str, str] = ray.get(previous_ref) if not isinstance(previous_ref, dict) else previous_ref
    ids = batch.column(id_column).to_pylist()
    hashes = batch.column("content_hash").to_pylist()
    mask = pa.array([prev.get(i) != h for i, h in zip(ids, hashes)])
    return pc.filter(batch, mask)


def keep_ids(batch: pa.Table, id_column: str, ids_ref) -> pa.Table:
    import pyarrow.compute as pc
    import ray

    keep = ray.get(ids_ref) if not isinstance(ids_ref, (set, frozenset)) else ids_ref
    mask = pa.array([i in keep for i in batch.column(id_column).to_pylist()])
    return pc.filter(batch, mask)


def tokenize_batch(batch: pa.Table, model: str, max_length: int, id_column: str) -> pa.Table:
    """Text -> ragged int32 token ids (CPU task)."""
    tok = _tokenizer(model, max_length)
    enc = tok(batch.column("text").to_pylist(), truncation=True, max_length=max_length, padding=False,
              return_attention_mask=False, return_token_type_ids=False)
    return pa.table({id_column: batch.column(id_column), "content_hash": batch.column("content_hash"),
                     "token_ids": pa.array(enc["input_ids"], type=pa.list_(pa.int32()))})


class EncodeBatch:
    """An encoder actor: token ids -> unit vectors (GPU bf16 when it has one, else CPU)."""

    def __init__(self, model: str, max_length: int, device: str, quantize_int8: bool, id_column: str,
                 num_threads: int | None = None, encode_batch_size: int = 256, stats_path: str | None = None):
        import logging

        import torch

        from streamrec.encoder import TextEncoder

        self.stats_path = stats_path
        if device == "cuda" and not torch.cuda.is_available():
            # scheduled on a GPU node whose CUDA is not usable (a driver missing, a test cluster's
            # fake GPU): slower, not wrong; the job's log says so
            logging.getLogger("streamrec.embed").warning(
                "encoder actor on a node with a GPU resource but no usable CUDA device: encoding on CPU")
            print("streamrec embed: no usable CUDA device on this GPU node: encoding on CPU", flush=True)
            device = "cpu"
        self.device = device

        self.enc = TextEncoder(model, max_length=max_length, device=device, quantize_int8=quantize_int8,
                               batch_size=encode_batch_size, num_threads=num_threads)
        self.id_column = id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = batch.column("token_ids").combine_chunks()
        offsets = tokens.offsets.to_numpy()
        flat = tokens.values.to_numpy(zero_copy_only=False)
        ragged = [flat[offsets[i]:offsets[i + 1]] for i in range(len(tokens))]
        t0 = time.time()
        vecs = self.enc.encode_tokens(ragged)  # (B, d)
        if self.stats_path:  # per-batch timings, for the steady-state rate (bench/embed.py)
            with open(self.stats_path, "a") as f:
                f.write(f'{{"t0": {t0}, "t1": {time.time()}, "n": {len(ragged)}}}\n')
        d = vecs.shape[1]
        vector = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), type=pa.float32()), d)
        return pa.table({self.id_column: batch.column(self.id_column), "vector": vector,
                         "content_hash": batch.column("content_hash"),
                         "model_id": pa.array([self.enc.model_id] * len(batch), type=pa.string())})


def _synthetic_block(batch: dict, seed: int) -> pa.Table:
    from streamrec.data.synthetic import synthetic_items

    ids = batch["id"]
    t = synthetic_items(int(ids[0]), int(ids[-1]) + 1, seed)
    return t.select(["item_id", "text"])


def _source_datasets(settings) -> dict[str, tuple[Any, str]]:
    """kind -> (Ray Dataset with id + text columns, id column)."""
    import ray.data

    c = settings.catalog
    out: dict[str, tuple[Any, str]] = {}
    if c.source == "synthetic":
        from streamrec.data.synthetic import synthetic_users

        blocks = max(1, c.num_items // 5_000)
        out["items"] = (ray.data.range(c.num_items, override_num_blocks=blocks)
                        .map_batches(_synthetic_block, fn_kwargs={"seed": c.seed}, batch_size=5_000,
                                     batch_format="numpy"), "item_id")
        users = synthetic_users(c.num_users, c.seed).select(["user_id", "text"])
        out["users"] = (ray.data.from_arrow(users), "user_id")
    elif c.source == "movielens":
        from streamrec.data.movielens import load_movielens

        cat = load_movielens(c.path)
        out["items"] = (ray.data.from_arrow(cat.items.select(["item_id", "text"])), "item_id")
        if cat.users is not None and "text" in cat.users.column_names:
            out["users"] = (ray.data.from_arrow(cat.users.select(["user_id", "text"])), "user_id")
    else:
        from streamrec.data.table import load_table_catalog

        p = Path(c.path)
        if p.suffix.lower() in (".parquet", ".pq") or p.is_dir():
            from streamrec.data.table import join_text

            cols = [c.id_column, *c.text_columns]

            def to_text(batch: pa.Table) -> pa.Table:
                return pa.table({"item_id": batch.column(c.id_column).cast(pa.string()),
                                 "text": join_text(batch, c.text_columns, str(p))})

            ds = ray.data.read_parquet(str(p), columns=cols).map_batches(to_text, batch_format="pyarrow")
        else:  # CSV: validated in full (ids unique, text present) before any work
            ds = ray.data.from_arrow(load_table_catalog(p, id_column=c.id_column,
                                                        text_columns=c.text_columns).items.select(["item_id", "text"]))
        out["items"] = (ds, "item_id")
    return out


def _pool(settings, num_encoders: int | None) -> tuple[dict[str, Any], str]:
    import ray

    from ray.data import ActorPoolStrategy

    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = settings.embedding.device
    n = num_encoders or settings.embedding.num_encoders
    # auto: the GPUs up now; cuda: ask for GPUs even when none is up, so an autoscaler with a GPU
    # node type at min 0 starts one (KubeRay's render sets it when it renders a GPU group)
    if device == "cuda" or (device == "auto" and gpus > 0):  # one actor per GPU; a fixed n, else 1..GPUs
        most = max(1, gpus, settings.embedding.max_gpus)
        pool = ActorPoolStrategy(size=n) if n else ActorPoolStrategy(min_size=1, max_size=most)
        return {"compute": pool, "num_gpus": 1, "batch_size": 4_096}, "cuda"
    # CPU: torch scales well to ~8 intra-op threads, so one actor per 8 cores, each using its
    # share of the cores; it reserves one core less than it uses so tokenize tasks (10-20x
    # cheaper than encoding) still get scheduled beside it. The cores counted are those free now:
    # on a cluster that serves and trains, a re-embedding of new items fits beside the loop.
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    most = max(1, cpus // 8)
    size = n or most
    threads = max(1, cpus // size)
    pool = ActorPoolStrategy(size=n) if n else ActorPoolStrategy(min_size=1, max_size=most)
    return {"compute": pool, "num_cpus": max(1, threads - 1), "batch_size": 1_024,
            "_threads": threads}, "cpu"


def steady_rate(stats_path: str | Path) -> float | None:
    """Vectors/s between the end of the first encoded batch and the end of the last one."""
    import json

    try:
        rows = [json.loads(line) for line in Path(stats_path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r["t1"])
    span = rows[-1]["t1"] - rows[0]["t1"]
    return sum(r["n"] for r in rows[1:]) / span if span > 0 else None


def run_embedding_job(settings, *, output_dir: str | None = None, full: bool = False,
                      num_encoders: int | None = None, kinds: tuple[str, ...] = ("items", "users"),
                      record_stats: bool = False) -> dict:
    """Embed the configured catalog (incrementally unless ``full``); returns the new manifest."""
    import ray

    if not ray.is_initialized():
        # the encoder actors' warnings (a GPU node without CUDA) belong in the job's log
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    out = Location(output_dir or settings.embedding.output_dir)
    enc = settings.encoder
    pool, device = _pool(settings, num_encoders)
    threads = pool.pop("_threads", None)
    from streamrec.encoder import model_id as encoder_model_id

    model_id = encoder_model_id(enc.model, enc.max_length, enc.quantize_int8 and device == "cpu")
    live = None if full else read_manifest(out)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    manifest: dict[str, Any] = {"run_id": run_id, "model_id": model_id, "created": time.time(),
                                "catalog": settings.catalog.model_dump(mode="json"), "device": device,
                                "outputs": {}}

    def stats(kind: str) -> str | None:  # per-batch timings (bench/embed.py; a local output only)
        return out.path(f".encode-{run_id}-{kind}.jsonl") if record_stats and out.local else None

    t0 = time.perf_counter()
    for kind, (ds, id_col) in _source_datasets(settings).items():
        if kind not in kinds:
            continue
        hashed = ds.map_batches(hash_batch, fn_kwargs={"id_column": id_col}, batch_format="pyarrow")
        prev = (live or {}).get("outputs", {}).get(kind)
        kept_ds, kept_ids = None, set()
        if prev and live.get("model_id") == model_id:
            import pyarrow.parquet as pq

            old = pq.read_table(out.path(prev["dir"]), columns=[id_col, "content_hash"], filesystem=out.fs)
            previous = dict(zip(old.column(id_col).to_pylist(), old.column("content_hash").to_pylist()))
            prev_ref = ray.put(previous)
            todo = hashed.map_batches(keep_changed, fn_kwargs={"id_column": id_col, "previous_ref": prev_ref},
                                      batch_format="pyarrow")
            current = pa.concat_tables(ray.get(hashed.select_columns([id_col, "content_hash"]).to_arrow_refs()))
            kept_ids = {i for i, h in zip(current.column(id_col).to_pylist(), current.column("content_hash").to_pylist())
                        if previous.get(i) == h}
            kept_ds = ray.data.read_parquet(out.path(prev["dir"]), filesystem=out.fs).map_batches(
                keep_ids, fn_kwargs={"id_column": id_col, "ids_ref": ray.put(kept_ids)}, batch_format="pyarrow")
        else:
            todo = hashed
        tokens = todo.map_batches(tokenize_batch, batch_size=1_024, batch_format="pyarrow", num_cpus=1,
                                  fn_kwargs={"model": enc.model, "max_length": enc.max_length, "id_column": id_col})
        vectors = tokens.map_batches(
            EncodeBatch, batch_format="pyarrow",
            fn_constructor_kwargs={"model": enc.model, "max_length": enc.max_length, "device": device,
                                   "quantize_int8": enc.quantize_int8, "id_column": id_col,
                                   "num_threads": threads, "encode_batch_size": 64 if device == "cpu" else 1_024,
                                   "stats_path": stats(kind)},
            **pool)
        result = vectors.union(kept_ds) if kept_ds is not None else vectors
        target = f"{kind}-{run_id}"
        result.write_parquet(out.path(target), filesystem=out.fs)  # straight to the path or the object store
        import pyarrow.parquet as pq

        total = sum(pq.read_metadata(f, filesystem=out.fs).num_rows for f in out.files(target, ".parquet"))
        manifest["outputs"][kind] = {"dir": target, "id_column": id_col, "count": total,
                                     "embedded": total - len(kept_ids), "kept": len(kept_ids)}
        if kind == "items":  # stable rows: earlier runs' items keep theirs, new ones take the next
            ids = pq.read_table(out.path(target), columns=[id_col], filesystem=out.fs).column(0).to_pylist()
            manifest["outputs"][kind].update(write_item_rows(out, run_id, ids))
        if stats(kind):
            manifest["outputs"][kind]["steady_per_s"] = steady_rate(stats(kind))
    manifest["seconds"] = time.perf_counter() - t0
    old_manifest = read_manifest(out)
    write_manifest(out, manifest)
    for kind, o in (old_manifest or {}).get("outputs", {}).items():  # the previous run is no longer live
        if o["dir"] != manifest["outputs"].get(kind, {}).get("dir"):
            out.remove(o["dir"])
            if "rows" in o:
                out.remove(o["rows"])
    live_dirs = {o[k] for o in manifest["outputs"].values() for k in ("dir", "rows") if k in o}
    for stale in fnmatch.filter(out.listdir(), "*-2*"):  # half-written output of runs that died
        if stale not in live_dirs:
            out.remove(stale)
    return manifest


def main(argv: list[str] | None = None) -> int:
    import json

    from cluster.jobs import job_parser, job_settings

    ap = job_parser("cluster.jobs.embed", __doc__)
    ap.add_argument("--output", default=None, help="output directory (default: embedding.output_dir)")
    ap.add_argument("--full", action="store_true", help="re-embed everything, not only new or changed items")
    ap.add_argument("--num-encoders", type=int, default=None, help="encoder actors (default: one per GPU, or CPUs/2)")
    args = ap.parse_args(argv)
    settings = job_settings(args.config)
    if settings is None:
        return 2
    manifest = run_embedding_job(settings, output_dir=args.output, full=args.full, num_encoders=args.num_encoders)
    print(json.dumps(manifest["outputs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
