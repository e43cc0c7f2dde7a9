"""Retrieval: exact search is exactly right; faiss agrees with it within the recall bound."""

import numpy as np
import pytest

from streamrec.index import ExactIndex, ItemIndex


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_returns_the_true_top_k_in_order():
    rng = np.random.default_rng(0)
    v = _unit(rng.normal(size=(500, 16)).astype(np.float32))
    ids = np.array([f"i{j}" for j in range(500)])
    idx = ItemIndex.build(ids, v)
    assert isinstance(idx, ExactIndex)
    q = _unit(rng.normal(size=(3, 16)).astype(np.float32))
    scores, got = idx.search(q, 10)
    full = q @ v.T
    for b in range(3):
        want = np.argsort(-full[b])[:10]
        assert list(got[b]) == list(ids[want])
        assert np.allclose(scores[b], full[b][want])


@pytest.mark.parametrize("ids, vecs, msg", [
    (["a"], np.zeros((2, 4)), "1 ids for 2 vectors"),
    (["a"], np.zeros(4), r"vectors must be \(n, d\), got shape \(4,\)"),
    (["a"], np.array([[np.nan, 0.0]]), "vectors contain NaN or infinity"),
])
def test_bad_inputs(ids, vecs, msg):
    with pytest.raises(ValueError, match=msg):
        ItemIndex.build(ids, vecs)


def test_faiss_recall_at_100_on_100k_items_is_at_least_095():
    from streamrec.data.synthetic import TOPIC_NAMES

    # 100k synthetic items: topic-mixture vectors in 384-d, like the encoder's clusters
    rng = np.random.default_rng(1)
    d, n = 384, 100_000
    topics = _unit(rng.normal(size=(len(TOPIC_NAMES) * 8, d)).astype(np.float32))
    mix = rng.dirichlet(np.full(len(topics), 0.1), size=n).astype(np.float32)
    v = _unit(mix @ topics + 0.5 * _unit(rng.normal(size=(n, d)).astype(np.float32)))
    ids = np.arange(n)
    idx = ItemIndex.build(ids, v)
    assert idx.kind == "faiss-ivf"
    exact = ExactIndex(ids, v)
    q = _unit(v[rng.choice(n, 200, replace=False)] + 0.1 * _unit(rng.normal(size=(200, d)).astype(np.float32)))
    _, got = idx.search(q, 100)
    _, want = exact.search(q, 100)
    recall = np.mean([len(set(g) & set(w)) / 100 for g, w in zip(got, want)])
    assert recall >= 0.95, recall
