"""Every artifact on a plain directory and on a real S3-protocol server (moto's, over HTTP), with
the same "a pointer names a complete run" switch: readers never see half a run or version."""

from __future__ import annotations

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.policies import expected_shapes
from rl.spec import PolicySpec
from rl.weights import WeightsError, pack
from streamrec.profile import HistoryBook
from streamrec.storage import Location, absolute, is_uri
from streamrec.vectors import load_vectors, read_manifest, write_vectors

pytestmark = pytest.mark.integration


@pytest.fixture(params=["dir", "s3"])
def where(request, tmp_path) -> str:
    if request.param == "dir":
        return str(tmp_path / "artifacts")
    return request.getfixturevalue("s3_bucket") + "/loop"


def test_location_reads_writes_lists_and_removes(where):
    loc = Location(where)
    assert loc.read_json("nothing.json", default=None) is None
    with pytest.raises(FileNotFoundError, match="nothing.json: no such file"):
        loc.read_bytes("nothing.json")
    loc.write_json("a/b.json", {"x": 1})
    loc.write_bytes("a/c.bin", b"\x00\x01")
    loc.append_line("log.jsonl", '{"n": 1}')
    loc.append_line("log.jsonl", '{"n": 2}')
    assert loc.read_json("a/b.json") == {"x": 1} and loc.read_bytes("a/c.bin") == b"\x00\x01"
    assert loc.read_bytes("log.jsonl").decode().splitlines() == ['{"n": 1}', '{"n": 2}']
    assert loc.listdir() == ["a", "log.jsonl"] and loc.listdir("a") == ["b.json", "c.bin"]
    assert [f.rsplit("/", 1)[-1] for f in loc.files("", ".json")] == ["b.json"]
    loc.write_json("a/b.json", {"x": 2})  # replaced whole
    assert loc.read_json("a/b.json") == {"x": 2}
    loc.remove("a")
    assert not loc.exists("a/b.json") and loc.listdir() == ["log.jsonl"]
    loc.remove("a")  # gone already: nothing to do
    again = Location(loc.uri)  # another process's view (pickles by URI)
    assert again.read_bytes("log.jsonl").count(b"\n") == 2


def test_paths_and_uris():
    assert is_uri("s3://b/p") and is_uri("file:///tmp/x") and not is_uri("rel/dir")
    assert absolute("s3://b/p") == "s3://b/p" and absolute("rel/dir").startswith("/")


def _blob(spec: PolicySpec) -> bytes:
    return pack({k: np.ones(v, np.float32) for k, v in expected_shapes(spec).items()})[0]


def test_policy_store_versions_switch_atomically(where):
    spec = PolicySpec("linucb", m=3, num_candidates=6, slate_size=2, num_rows=7)
    store = PolicyDirectory(where, keep=2)
    assert store.latest() is None and store.history() == []
    for _ in range(3):
        store.publish(_blob(spec), {"spec": spec.to_dict()})
    assert store.latest()["version"] == 3 and store.versions() == [2, 3]  # pruned to keep=2
    m, blob = store.get()
    assert m["version"] == 3 and blob == _blob(spec)
    # a publish that died after its weights, before its manifest: not a version, not served
    store.loc.write_bytes("v000004/weights.safetensors", b"half")
    assert store.versions() == [2, 3] and store.latest()["version"] == 3
    with pytest.raises(WeightsError):
        store.publish(b"not safetensors", {"spec": spec.to_dict()})
    assert store.publish(_blob(spec), {"spec": spec.to_dict()})["version"] == 4  # takes the orphan's number
    assert store.rollback(reason="test")["rollback_of"] == 3
    assert [h["action"] for h in PolicyDirectory(where).history()] == ["publish"] * 4 + ["rollback"]


def test_vectors_and_profile_snapshots(where):
    ids = np.array(["b", "a", "c"])
    vecs = np.eye(3, dtype=np.float32)
    write_vectors(where, {"items": (ids, vecs, "item_id")}, model_id="test@1")
    got_ids, got, m = load_vectors(where)
    assert list(got_ids) == ["a", "b", "c"] and np.array_equal(got[0], vecs[1])
    assert read_manifest(where)["model_id"] == "test@1"
    book = HistoryBook(history_length=3)
    book.record([("u1", "a", 1.0), ("u1", "b", 2.0)])
    Location(where).write_bytes("profiles/profiles.json", book.to_json())
    back = HistoryBook.from_json(Location(where).read_bytes("profiles/profiles.json"))
    assert back.history("u1") == [("a", 1.0), ("b", 2.0)]


def test_profile_store_and_learner_checkpoint_restart_from_object_storage(s3_bucket, ray_session):
    import ray

    from actors.profile_store import ProfileStore

    where = f"{s3_bucket}/profiles"
    store = ProfileStore.options(runtime_env={"env_vars": _aws_env()}).remote(history_length=3, snapshot_dir=where)
    ray.get(store.set_item_vectors.remote(["i1", "i2"], np.eye(2, dtype=np.float32)))
    ray.get(store.record.remote([("u1", "i1", 1.0), ("u1", "i2", 2.0)]))
    assert ray.get(store.snapshot.remote()) == f"{where}/profiles.json"
    ray.kill(store)
    again = ProfileStore.options(runtime_env={"env_vars": _aws_env()}).remote(history_length=3, snapshot_dir=where)
    assert ray.get(again.histories.remote(["u1"])) == [[("i1", 1.0), ("i2", 2.0)]]
    assert ray.get(again.profiles.remote(["u1"], now=2.0)).shape == (1, 2)
    ray.kill(again)


def _aws_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
