"""Catalog loaders on small files the tests write; the table of bad catalogs with messages."""

from pathlib import Path

import numpy as np
import pytest

from streamrec.data import CatalogError, SyntheticWorld, load_movielens, load_table_catalog, synthetic_items
from streamrec.profile import HistoryBook, pool_profile

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def _grouplens(d: Path):
    d.mkdir()
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    (d / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
                              "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"]) + "\n",
                              encoding="latin-1")
    (d / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t5\t891717742\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n")


def _atomic(d: Path):
    d.mkdir()
    (d / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                               "1\tToy Story\t1995\tAnimation Children's Comedy\n")
    (d / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t1\t3\t881250949\n")


def test_grouplens_layout(tmp_path):
    _grouplens(tmp_path / "gl")
    c = load_movielens(tmp_path / "gl")
    assert c.items.column("text").to_pylist() == ["Toy Story (1995). Action, Comedy", "GoldenEye (1995). Western"]
    assert c.interactions.column("ts").to_pylist() == [881250949.0, 891717742.0]
    assert c.users.column("occupation").to_pylist() == ["technician"]


def test_recbole_atomic_layout(tmp_path):
    _atomic(tmp_path / "ab")
    c = load_movielens(tmp_path / "ab")
    assert c.items.column("text").to_pylist() == ["Toy Story (1995). Animation, Children's, Comedy"]
    assert c.interactions.num_rows == 1 and c.users is None


def test_shared_ml100k_when_present():
    if not ML100K.is_dir():
        pytest.skip(f"MovieLens-100K not at {ML100K}")
    c = load_movielens(ML100K)
    assert (c.items.num_rows, c.interactions.num_rows, c.users.num_rows) == (1682, 100_000, 943)


def _csv(tmp_path, body, name="c.csv"):
    p = tmp_path / name
    p.write_text(body)
    return p


@pytest.mark.parametrize("body, kwargs, message", [
    ("sku,name\n1,a\n1,b\n", {"id_column": "sku", "text_columns": ["name"]}, "duplicate item ids: 1"),
    ("sku,name\n1,a\n2,\n", {"id_column": "sku", "text_columns": ["name"]}, "1 item(s) have empty text (first: item_id '2')"),
    ("sku,name\n1,a\n", {"id_column": "id", "text_columns": ["name"]}, "missing column 'id' (have: sku, name)"),
    ("sku,name\n1,a\n", {"id_column": "sku", "text_columns": ["title"]}, "missing column 'title' (have: sku, name)"),
])
def test_bad_catalogs(tmp_path, body, kwargs, message):
    p = _csv(tmp_path, body)
    with pytest.raises(CatalogError) as e:
        load_table_catalog(p, **kwargs)
    assert str(e.value) == f"{p}: {message}"


def test_missing_files(tmp_path):
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_table_catalog(tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="unsupported catalog format '.xlsx'"):
        load_table_catalog(_csv(tmp_path, "x", "c.xlsx"))
    with pytest.raises(CatalogError, match="MovieLens directory not found"):
        load_movielens(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="neither the GroupLens layout"):
        load_movielens(tmp_path / "empty")


def test_table_catalog_joins_text_columns_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = load_table_catalog(_csv(tmp_path, "sku,name,blurb,price\n7,Lamp,bright,9.5\n8,Desk,,120\n"),
                           id_column="sku", text_columns=["name", "blurb"])
    assert c.items.column("item_id").to_pylist() == ["7", "8"]
    assert c.items.column("text").to_pylist() == ["Lamp. bright", "Desk"]
    assert "price" in c.items.column_names
    pq.write_table(pa.table({"item_id": [1, 2], "title": ["a", "b"]}), tmp_path / "c.parquet")
    assert load_table_catalog(tmp_path / "c.parquet").items.column("text").to_pylist() == ["a", "b"]


def test_synthetic_is_seeded_and_blockwise_stable():
    a = synthetic_items(0, 100, seed=3)
    b = synthetic_items(50, 100, seed=3)
    assert a.slice(50).column("text").to_pylist() == b.column("text").to_pylist()
    assert synthetic_items(0, 5, seed=4).column("text") != a.slice(0, 5).column("text")
    w = SyntheticWorld(30, 10).catalog()
    assert w.items.num_rows == 30 and w.users.num_rows == 10
    assert set(w.users.column_names) >= {"user_id", "age", "gender", "occupation", "text", "taste"}


def test_pool_profile_exact_weights():
    v = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # ages 0 and one half-life: weights 1 and 0.5 -> (1, .5)/1.5 -> normalised
    got = pool_profile(v, [0.0, 10.0], half_life_s=10.0)
    want = np.array([1.0, 0.5]) / np.linalg.norm([1.0, 0.5])
    assert np.allclose(got, want, atol=1e-6)
    assert not pool_profile(v[:0], [], 10.0).any()
    with pytest.raises(ValueError, match=r"ages_s must be \(2,\), got shape \(1,\)"):
        pool_profile(v, [1.0], 10.0)


def test_history_book_is_bounded_and_snapshots(tmp_path):
    b = HistoryBook(history_length=2, max_users=2)
    b.record([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1)])
    assert b.history("u1") == [("b", 2.0), ("c", 3.0)]  # newest two
    b.record([("u1", "d", 4), ("u3", "z", 1)])
    assert len(b) == 2 and b.history("u2") == []  # u2 was least recently used
    assert HistoryBook.from_json(b.to_json()).history("u3") == [("z", 1.0)]


def test_history_book_lists_users_changed_since_a_seq_newest_first():
    b = HistoryBook(history_length=3, max_users=3)
    b.record([("u1", "a", 1), ("u2", "a", 1), ("u1", "b", 2)])
    assert b.seq == 3
    assert b.changed_since(0, 10) == ["u1", "u2"]
    assert b.changed_since(2, 10) == ["u1"]  # u2 last changed at 2
    assert b.changed_since(3, 10) == []
    assert b.changed_since(0, 1) == ["u1"]  # the limit keeps the newest
    b.record([("u3", "c", 3), ("u4", "d", 4)])  # u2 is evicted (max_users 3), and forgotten
    assert b.changed_since(0, 10) == ["u4", "u3", "u1"]
    assert b.changed_since(3, 10) == ["u4", "u3"] and b.changed_since(4, 10) == ["u4"]
