"""Catalog versions: stable item rows across embedding runs, and the featurizer over them."""

from __future__ import annotations

import numpy as np
import pytest

from rl.features import Featurizer
from streamrec.vectors import assign_rows, load_catalog, read_manifest, write_vectors


@pytest.mark.parametrize("previous, ids, expected", [
    ({}, ["b", "a", "c"], {"a": 1, "b": 2, "c": 3}),                      # first run: sorted order
    ({"a": 1, "b": 2}, ["b", "a", "z", "c"], {"a": 1, "b": 2, "c": 3, "z": 4}),  # new ids: the next rows, sorted
    ({"a": 1, "b": 2, "c": 3}, ["a", "c"], {"a": 1, "b": 2, "c": 3}),     # b left: its row stays reserved
    ({"a": 1, "b": 2, "c": 3}, ["a", "d"], {"a": 1, "b": 2, "c": 3, "d": 4}),
    ({"x": 7}, [], {"x": 7}),
])
def test_assign_rows_keeps_every_row_and_numbers_new_ids_after_the_largest(previous, ids, expected):
    assert assign_rows(previous, ids) == expected


def test_catalog_versions_keep_rows_as_items_come_leave_and_return(tmp_path):
    rng = np.random.default_rng(0)

    def run(ids):
        write_vectors(tmp_path, {"items": (np.array(ids), rng.normal(size=(len(ids), 4)).astype(np.float32), "item_id")},
                      "m")
        return load_catalog(tmp_path)

    first = run(["i2", "i1", "i3"])
    assert list(first.ids) == ["i1", "i2", "i3"] and list(first.rows) == [1, 2, 3] and first.num_rows == 4
    grown = run(["i1", "i2", "i3", "i0", "i9"])
    assert dict(zip(grown.ids, grown.rows)) == {"i0": 4, "i1": 1, "i2": 2, "i3": 3, "i9": 5}
    assert grown.num_rows == 6 and grown.version != first.version
    left = run(["i1", "i9"])  # i0, i2, i3 withdrawn: their rows stay theirs, the tables do not shrink
    assert dict(zip(left.ids, left.rows)) == {"i1": 1, "i9": 5} and left.num_rows == 6
    back = run(["i1", "i2", "i9", "i5"])
    assert dict(zip(back.ids, back.rows)) == {"i1": 1, "i2": 2, "i5": 6, "i9": 5} and back.num_rows == 7
    assert read_manifest(tmp_path)["outputs"]["items"]["rows"].startswith("rows-")


def test_featurizer_reads_stable_rows_and_vectors_by_id():
    vecs = np.eye(3, dtype=np.float32)
    fz = Featurizer(np.array(["a", "b", "c"]), vecs, np.eye(3, 2, dtype=np.float32), [5, 1, 3], 8)
    assert list(fz.rows(["c", "a", "new"])) == [3, 5, 0] and fz.num_rows == 8
    assert np.array_equal(fz.candidate_features(["c", "a", "new"]), [[0, 0], [1, 0], [0, 0]])
    assert Featurizer(np.array(["a", "b"]), vecs[:2], np.eye(3, 2, dtype=np.float32)).num_rows == 3  # default 1..n


@pytest.mark.parametrize("rows, table, message", [
    ([1, 1, 2], None, "3 distinct rows >= 1"),
    ([0, 1, 2], None, "3 distinct rows >= 1"),
    ([1, 2], None, "3 distinct rows >= 1"),
    ([1, 2, 9], 5, r"table_rows 5 < the largest row \+ 1 \(10\)"),
])
def test_featurizer_refuses_rows_that_cannot_index_its_tables(rows, table, message):
    with pytest.raises(ValueError, match=message):
        Featurizer(np.array(["a", "b", "c"]), np.eye(3, dtype=np.float32), np.eye(3, 2, dtype=np.float32), rows, table)
