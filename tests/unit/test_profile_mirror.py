"""ProfileMirror: a Ranker replica's copy of the users' profiles, kept current by deltas (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from serve.profile_mirror import ProfileMirror
from streamrec.profile import HistoryBook


class FakeStore:
    """ProfileStore.changes_since over a HistoryBook, with a profile = one-hot of the last item."""

    def __init__(self):
        self.book, self.epoch, self.calls = HistoryBook(5), "e1", []

    def changes_since(self, epoch, seq, limit):
        self.calls.append((epoch, seq, limit))
        users = self.book.changed_since(seq if epoch == self.epoch else 0, limit)
        vecs = np.zeros((len(users), 3), np.float32)
        for r, u in enumerate(users):
            vecs[r, int(self.book.history(u)[-1][0])] = 1
        return self.epoch, self.book.seq, users, vecs


def test_the_mirror_applies_only_what_changed_and_holds_the_newest():
    store = FakeStore()
    m = ProfileMirror(store.changes_since, capacity=2)
    store.book.record([("a", "0", 1), ("b", "1", 1), ("c", "2", 1)])
    assert m.sync() == 2 and len(m) == 2  # the capacity keeps the two newest
    assert m.get("a") is None and m.get("b")[1] == 1 and m.get("c")[2] == 1
    store.book.record([("b", "2", 2)])
    assert m.sync() == 1 and store.calls[-1] == ("e1", 3, 2)  # asked only for what came after seq 3
    assert m.get("b")[2] == 1
    store.book.record([("d", "0", 3)])
    m.sync()
    assert m.get("c") is None and m.get("d")[0] == 1 and m.get("b") is not None  # c is the oldest now
    assert m.sync() == 0  # nothing new


def test_a_restarted_store_is_mirrored_from_scratch():
    store = FakeStore()
    m = ProfileMirror(store.changes_since, capacity=10)
    store.book.record([("a", "0", 1), ("b", "1", 1)])
    m.sync()
    store.book, store.epoch = HistoryBook(5), "e2"  # restarted from an older snapshot: only "b"
    store.book.record([("b", "2", 1)])
    assert m.sync() == 1 and store.calls[-1] == ("e1", 2, 10)
    assert m.get("a") is None and m.get("b")[2] == 1 and m.epoch == "e2"


def test_a_user_without_a_known_item_has_no_profile():
    m = ProfileMirror(lambda e, s, n: ("e", 1, ["z"], np.zeros((1, 3), np.float32)))
    m.sync()
    assert m.get("z") is None and m.get("nobody") is None
    with pytest.raises(ValueError, match="capacity must be >= 1, got 0"):
        ProfileMirror(lambda e, s, n: None, capacity=0)
