"""The ML-100K bench's protocol (RecBole's 8:1:1 split, full-ranking metrics) and its two learners on a toy world."""

import math

import numpy as np
import pytest

from bench.offline_ml100k import evaluate, split_8_1_1, train_bpr, train_ranker


def test_each_user_is_split_8_1_1_at_random():
    users = np.repeat(np.arange(5), [10, 20, 7, 1, 30])
    part = split_8_1_1(users, seed=3)
    for u, n in zip(range(5), [10, 20, 7, 1, 30]):
        got = np.bincount(part[users == u], minlength=3).tolist()
        n_train, n_valid = round(n * 0.8), round(n * 0.1)
        assert got == [n_train, n_valid, n - n_train - n_valid]
    assert not np.array_equal(part, split_8_1_1(users, seed=4))  # the seed draws the split
    assert np.array_equal(part, split_8_1_1(users, seed=3))


def test_full_ranking_metrics_skip_masked_items_and_users_without_test_items():
    scores = np.array([[9.0, 8.0, 7.0] + [0.0] * 9, [1.0] * 12])
    # user 0: item 0 is masked (seen in train), so the ranking starts 1, 2, ...; item 2 is relevant
    got = evaluate(scores, masked=[{0}, set()], relevant=[{2}, set()])
    assert got["users"] == 1  # user 1 has nothing to find
    assert got["recall@10"] == 1.0
    assert got["ndcg@10"] == pytest.approx(round(1 / math.log2(3), 4))


def _two_taste_world(seed=0):
    """Users 0-19 like items 0-9, users 20-39 like items 10-19; each has seen six of their ten."""
    rng = np.random.default_rng(seed)
    seen, held = {}, {}
    for u in range(40):
        own = np.arange(10) + (0 if u < 20 else 10)
        pick = rng.permutation(own)
        seen[u], held[u] = set(pick[:6].tolist()), set(pick[6:].tolist())
    return seen, held


def test_bpr_ranks_a_users_own_taste_above_the_other():
    seen, held = _two_taste_world()
    users, scores, _ = train_bpr(seen, 20, epochs=200, lr=0.05, batch=64, seed=0)
    assert users == list(range(40))
    got = evaluate(scores, [seen[u] for u in users], [held[u] for u in users])
    assert got["recall@10"] == 1.0  # every held item in the top 10 of the 14 unseen


def test_the_policy_network_warm_start_finds_held_items_from_text_vectors():
    seen, held = _two_taste_world()
    rng = np.random.default_rng(1)
    taste = rng.normal(size=(2, 16))
    vecs = np.concatenate([taste[0] + 0.3 * rng.normal(size=(10, 16)), taste[1] + 0.3 * rng.normal(size=(10, 16))])
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    users, scores, _ = train_ranker(vecs, seen, epochs=30, m=8, hidden=32, embed=16, id_dim=8, lr=1e-2,
                                    progress=False, input_dropout=0.5)
    got = evaluate(scores, [seen[u] for u in users], [held[u] for u in users])
    assert got["recall@10"] >= 0.9
