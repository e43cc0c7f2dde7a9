"""The embedding job end to end on the shared local Ray: every id once, incremental, job server."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.jobs.embed import run_embedding_job
from streamrec.config import settings_from_args
from streamrec.vectors import load_catalog, load_vectors, read_manifest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _write_catalog(path: Path, n: int, changed: set[int] = frozenset()) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "blurb"])
        for i in range(n):
            w.writerow([f"sku-{i}", f"Product {i}" + (" v2" if i in changed else ""), f"A thing of kind {i % 7}"])


def _settings(catalog: Path, out: Path):
    return settings_from_args({"catalog": {"source": "table", "path": str(catalog), "id_column": "sku",
                                           "text_columns": ["name", "blurb"]},
                               "embedding": {"output_dir": str(out)}, "encoder": {"device": "cpu"}}, env={})


def test_job_writes_every_id_once_and_an_incremental_run_reembeds_only_the_changed(ray_session, tmp_path):
    cat = tmp_path / "catalog.csv"
    _write_catalog(cat, 120)
    s = _settings(cat, tmp_path / "out")
    m1 = run_embedding_job(s, num_encoders=1)
    assert m1["outputs"]["items"]["count"] == 120 and m1["outputs"]["items"]["embedded"] == 120
    ids, vecs, _ = load_vectors(tmp_path / "out")
    assert sorted(ids) == sorted(f"sku-{i}" for i in range(120)) and len(set(ids)) == 120
    assert vecs.shape == (120, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)

    changed = {3, 17, 29, 40, 51, 66, 70, 88, 99, 111}
    _write_catalog(cat, 120, changed)
    m2 = run_embedding_job(s, num_encoders=1)
    assert m2["outputs"]["items"]["embedded"] == 10 and m2["outputs"]["items"]["kept"] == 110
    ids2, vecs2, _ = load_vectors(tmp_path / "out")
    assert sorted(ids2) == sorted(ids)
    same = np.isclose((vecs * vecs2).sum(1), 1.0, atol=1e-5)
    assert {ids[i] for i in np.where(~same)[0]} == {f"sku-{i}" for i in changed}
    assert not (tmp_path / "out" / m1["outputs"]["items"]["dir"]).exists()  # the old run is gone
    assert not (tmp_path / "out" / m1["outputs"]["items"]["rows"]).exists()
    again = load_catalog(tmp_path / "out")  # rows stay as the first run numbered them (sorted ids)
    assert dict(zip(again.ids, again.rows.tolist())) == dict(zip(ids, range(1, 121))) and again.num_rows == 121
    assert again.row_ids == ("", *ids)  # every row's item: what a version's rows digest is taken over
    t = pq.read_table(tmp_path / "out" / m2["outputs"]["items"]["dir"])
    assert set(t.column_names) == {"item_id", "vector", "content_hash", "model_id"}


def test_synthetic_catalog_embeds_items_and_user_text(ray_session, tmp_path):
    s = settings_from_args({"catalog": {"num_items": 60, "num_users": 20},
                            "embedding": {"output_dir": str(tmp_path / "o")}, "encoder": {"device": "cpu"}}, env={})
    m = run_embedding_job(s, num_encoders=1)
    assert m["outputs"]["items"]["count"] == 60 and m["outputs"]["users"]["count"] == 20
    uids, uvecs, _ = load_vectors(tmp_path / "o", "users")
    assert len(uids) == 20 and uvecs.shape == (20, 384)


def test_the_job_runs_through_the_clusters_job_server_into_object_storage(ray_session, ray_dashboard, tmp_path,
                                                                            s3_bucket, s3_server):
    """Submitted as a user submits it, with the object store's endpoint and credentials in the
    job's environment; Ray Data writes the shards straight to s3://, the manifest last."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    cat = tmp_path / "catalog.csv"
    _write_catalog(cat, 30)
    cfg = tmp_path / "cfg.yaml"
    import yaml

    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    raw["applications"][0]["args"].update({
        "catalog": {"source": "table", "path": str(cat), "id_column": "sku", "text_columns": ["name"]},
        "embedding": {"output_dir": f"{s3_bucket}/embeddings"}, "encoder": {"device": "cpu"}})
    cfg.write_text(yaml.safe_dump(raw))
    ctx = ray_session.get_runtime_context()
    client = JobSubmissionClient(ray_dashboard)
    deadline = time.monotonic() + 120
    while True:  # the dashboard agent registers a little after ray.init; the job server says so
        try:
            job = client.submit_job(entrypoint=f"{sys.executable} -m cluster.jobs.embed --config {cfg} --num-encoders 1",
                                    runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", **s3_server["env"]}})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    deadline = time.monotonic() + 300
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline
        time.sleep(1)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    m = read_manifest(f"{s3_bucket}/embeddings")
    assert m["outputs"]["items"]["count"] == 30
    ids, vecs, _ = load_vectors(f"{s3_bucket}/embeddings")
    assert sorted(ids) == sorted(f"sku-{i}" for i in range(30)) and vecs.shape == (30, 384)
    assert not (tmp_path / "out").exists()
    del ctx
