"""ProfileMirror: a Ranker replica's copy of the users' profiles, kept current by deltas (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from serve.profile_mirror import ProfileMirror
from streamrec.profile import HistoryBook, blend_with_prior, popularity_prior


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


# -- the popularity prior: what a user with little or no history ranks from -----------------------------------
V = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
INDEX = {"a": 0, "b": 1, "c": 2}


def test_the_popularity_prior_weighs_each_item_by_its_recent_events():
    got = popularity_prior(["a", "b", "a", "a", "gone"], INDEX, V)  # an item not in the catalog counts for nothing
    assert np.allclose(got, np.array([3, 1, 0]) / np.sqrt(10))
    assert popularity_prior([], INDEX, V) is None and popularity_prior(["gone"], INDEX, V) is None


@pytest.mark.parametrize("n, prior_events, expected", [
    (1, 3.0, [0.25, 0.75]),   # one event: the prior weighs 3 / (1 + 3)
    (3, 3.0, [0.5, 0.5]),
    (30, 3.0, [30 / 33, 3 / 33]),
    (5, 0.0, [1.0, 0.0]),     # no prior
])
def test_a_history_outweighs_the_prior_as_it_grows(n, prior_events, expected):
    got = blend_with_prior(V[0], n, V[1], prior_events)
    want = np.array([*expected, 0.0], np.float32)
    assert np.allclose(got, want / np.linalg.norm(want))


def test_no_history_stays_zero_and_no_prior_leaves_the_history():
    assert not blend_with_prior(np.zeros(3), 0, V[1], 3.0).any()
    assert np.array_equal(blend_with_prior(V[2], 4, None, 3.0), V[2])


def test_the_mirror_takes_the_prior_every_prior_every_s():
    store, asked = FakeStore(), []

    def prior():
        asked.append(1)
        return V[2]

    m = ProfileMirror(store.changes_since, fetch_prior=prior, prior_every_s=3600)
    assert m.prior is None
    m.sync()
    m.sync()
    assert np.array_equal(m.prior, V[2]) and len(asked) == 1  # the second sync came too soon
