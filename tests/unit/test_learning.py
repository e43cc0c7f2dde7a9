"""Pure learning pieces: the diverse slate distribution, features, policies, weights, store, gate, simulators."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from actors.policy_store import PolicyDirectory
from rl.features import CONTEXT_DIM, Featurizer, ObsLayout, context_features, fit_projection
from rl.diversity import ild
from rl.bandits import bandit_dim
from rl.click_model import ClickModel
from rl.gate import GateReport, evaluate, first_click, promote
from rl.logged import ImpressionFeatures, samples_to_logged
from rl.neural import SlateScorer
from rl.ope import Estimate
from rl.policies import expected_shapes, make_policy, policy_from_state
from rl.spec import Observation, PolicySpec
from rl.simulators import SyntheticUsers, position_bias
from rl.slate import (cosine_similarity, diverse_greedy, diverse_greedy_batch, mixture_position_probs,
                      plackett_luce_position_probs, plackett_luce_sample, prefix_frequencies)
from rl.weights import WeightsError, pack, unpack
from streamrec.events import TrainingSample
from streamrec.profile import blend_profile


# -- the diversity-aware Plackett-Luce ---------------------------------------------------------------

def _all_slates(n, k):
    return itertools.permutations(range(n), k)


@pytest.mark.parametrize("penalty", [0.0, 0.7, 3.0])
def test_diverse_pl_probabilities_sum_to_one_over_all_slates(penalty):
    rng = np.random.default_rng(1)
    scores, feats = rng.normal(size=5), rng.normal(size=(5, 3))
    sim = cosine_similarity(feats)
    total = sum(np.prod(plackett_luce_position_probs(scores, np.array(s), 0.8, sim, penalty))
                for s in _all_slates(5, 3))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_diverse_pl_by_hand():
    # two identical items (sim 1) and one orthogonal; equal scores; penalty ln 2 halves the twin's weight
    scores = np.zeros(3)
    sim = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = plackett_luce_position_probs(scores, np.array([0, 2, 1]), 1.0, sim, math.log(2))
    # first: 1/3; then among {1 (weight 1/2), 2 (weight 1)}: item 2 has 1 / 1.5; then item 1 alone: 1
    assert p == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_diverse_pl_sampling_matches_its_probabilities():
    rng = np.random.default_rng(0)
    scores, feats = np.array([1.0, 0.5, 0.0, -0.5]), rng.normal(size=(4, 2))
    sim = cosine_similarity(feats)
    counts: dict[tuple, int] = {}
    draws = 20_000
    for _ in range(draws):
        s, probs = plackett_luce_sample(scores, 2, rng, 1.0, sim, 2.0)
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    for s, c in counts.items():
        expect = np.prod(plackett_luce_position_probs(scores, np.array(s), 1.0, sim, 2.0))
        assert c / draws == pytest.approx(expect, abs=0.015)


def test_penalty_needs_similarities():
    with pytest.raises(ValueError, match="needs the \\(N, N\\) similarity matrix"):
        plackett_luce_sample(np.zeros(3), 2, np.random.default_rng(0), penalty=1.0)
    with pytest.raises(ValueError, match="penalty must be a finite number >= 0, got -1"):
        plackett_luce_position_probs(np.zeros(3), np.array([0]), penalty=-1)


def test_diverse_greedy_skips_near_duplicates():
    scores = np.array([1.0, 0.99, 0.5])
    sim = np.array([[1, 0.95, 0], [0.95, 1, 0], [0, 0, 1.0]])
    assert diverse_greedy(scores, sim, 2, 0.0).tolist() == [0, 1]
    assert diverse_greedy(scores, sim, 2, 1.0).tolist() == [0, 2]


# -- features ----------------------------------------------------------------------------------------

def test_context_features_table():
    f = context_features({"hour": 18, "age": 40, "gender": "female", "device": "tv", "locale": "pt-BR"})
    assert f.shape == (CONTEXT_DIM,) == (30,)
    assert f[2:6].tolist() == [0, 0, 0, 1]  # evening
    assert f[6] == pytest.approx(0.4) and f[7] == 0
    assert f[8:12].tolist() == [1, 0, 0, 0] and f[12:18].tolist() == [0, 0, 1, 0, 0, 0]
    assert f[18:30].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # pt
    g = context_features({"hour": "noon", "age": True}, ts=7 * 3600)  # bad types: fall back, flag missing age
    assert g[2:6].tolist() == [0, 1, 0, 0] and g[7] == 1
    assert g[11] == 1 and g[17] == 1 and g[29] == 1  # gender, device, language unknown
    h = context_features({"gender": "robot", "device": 3, "locale": "sv_SE"})  # values no vocabulary has
    assert h[11] == 1 and h[17] == 1 and h[28] == 1  # unknown, unknown, another language
    assert context_features({"locale": "EN_gb"})[18] == 1


def test_projection_and_observation_layout():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 12)).astype(np.float32)
    p = fit_projection(vecs, 4)
    assert p.shape == (12, 4)
    assert np.allclose(p.T @ p, np.eye(4), atol=1e-5)  # orthonormal directions
    fz = Featurizer(np.array([f"i{i}" for i in range(30)]), vecs, p)
    user = fz.user_features(vecs[0], None, context_features({"hour": 3}))
    obs = fz.observe(user, ["i3", "new-item", "i5"])
    o = Observation.from_flat(obs, ObsLayout(4, 3))
    assert o.rows.tolist() == [4, 0, 6]  # 0 = unknown
    assert np.allclose(o.items[0], vecs[3] @ p) and not o.items[1].any()
    assert np.allclose(o.user[:4], vecs[0] @ p)
    with pytest.raises(ValueError, match=r"projection size m must be in \[1, 12\], got 13"):
        fit_projection(vecs, 13)


def test_blend_profile_cold_start_and_warm():
    prior = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    hist = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    out = blend_profile(hist, prior)
    assert np.allclose(out[0], [0, 1])                       # no history: the prior alone
    assert np.allclose(out[1], np.array([1, 0.5]) / np.linalg.norm([1, 0.5]))


# -- policies and their exact probabilities ----------------------------------------------------------

def _obs(rng, n=6, m=3):
    user = rng.normal(size=2 * m + CONTEXT_DIM).astype(np.float32)
    user[2 * m:] = context_features({"hour": 20, "age": 30})
    return Observation(user, rng.normal(size=(n, m)).astype(np.float32), np.arange(1, n + 1))


@pytest.mark.parametrize("algorithm", ["egreedy", "random"])
def test_bandit_slate_probabilities_are_exact(algorithm):
    rng = np.random.default_rng(3)
    spec = PolicySpec(algorithm, m=3, num_candidates=4, slate_size=2, num_rows=5, epsilon=0.3)
    pol = make_policy(spec)
    obs = _obs(rng, n=4)
    for _ in range(5):
        pol.update(obs, np.array([0, 1]), np.array([1.0, 0.0]))
    total = sum(pol.slate_probability(obs, np.array(s)) for s in _all_slates(4, 2))
    assert total == pytest.approx(1.0)
    slate, probs, _ = pol.select(obs, 2, rng)
    assert np.prod(probs) == pytest.approx(pol.slate_probability(obs, slate))


def test_prefix_frequencies_by_hand():
    slates = np.array([[0, 1], [0, 2], [0, 1], [3, 1]])
    # position 0: 3 of 4 samples put 0 first; position 1: 2 of those 3 put 1 next
    assert prefix_frequencies(slates, np.array([0, 1])) == pytest.approx([3 / 4, 2 / 3])
    assert prefix_frequencies(slates, np.array([2, 0]), include_target=False) == pytest.approx([0.0, 0.0])


@pytest.mark.parametrize("penalty", [0.0, 0.7])
def test_diverse_greedy_batch_matches_the_single_slate_version(penalty):
    rng = np.random.default_rng(5)
    obs = _obs(rng, n=8)
    scores = rng.normal(size=(6, 8))
    batch = diverse_greedy_batch(scores, obs.similarity(), 3, penalty)
    assert batch.tolist() == [diverse_greedy(s, obs.similarity(), 3, penalty).tolist() for s in scores]


def test_thompson_logs_the_posterior_probability_of_its_slate():
    """Thompson's slate is random (its posterior draw): the logged propensities are estimated from
    the other draws, near 1/(number of candidates) a position with no data, near 1 with a lot."""
    rng = np.random.default_rng(2)
    spec = PolicySpec("thompson", m=3, num_candidates=6, slate_size=2, num_rows=7, draws=400)
    pol = make_policy(spec)
    obs = _obs(rng)
    slate, probs, _ = pol.select(obs, 2, rng)
    assert 0.05 < probs[0] < 0.5 and np.all(probs > 0)       # wide prior: six candidates nearly tie
    target = pol.position_probabilities(obs, slate)
    assert np.array_equal(target, pol.position_probabilities(obs, slate))  # a fixed stream of draws
    for _ in range(300):  # candidate 4 is clicked wherever it is shown
        shown, _, _ = pol.select(obs, 2, rng)
        pol.update(obs, shown, (shown == 4).astype(float))
    slate, probs, _ = pol.select(obs, 2, rng)
    assert slate[0] == 4 and probs[0] > 0.95
    assert pol.position_probabilities(obs, slate)[0] > 0.95


def test_linucb_learns_the_clicked_item_and_state_round_trips():
    rng = np.random.default_rng(0)
    spec = PolicySpec("linucb", m=3, num_candidates=6, slate_size=2, num_rows=7, alpha=0.1)
    pol = make_policy(spec)
    obs = _obs(rng)
    for _ in range(50):
        slate, _, _ = pol.select(obs, 2, rng)
        pol.update(obs, slate, (slate == 4).astype(float))
        pol.update(obs, np.array([4, 0]), np.array([1.0, 0.0]))
    assert pol.select(obs, 2, rng)[0][0] == 4
    state = pol.state()
    assert state["a_inv"].shape == (bandit_dim(3), bandit_dim(3))
    again = policy_from_state(spec, state)
    assert np.allclose(again.scores(obs), pol.scores(obs))


def test_scorer_state_shapes_match_spec():
    spec = PolicySpec("ppo", m=3, num_candidates=6, slate_size=2, num_rows=7, text_dim=12)
    shapes = expected_shapes(spec)
    assert shapes["projection"] == (12, 3) and shapes["id_embedding.weight"] == (7, 8)
    rng = np.random.default_rng(0)
    w = {k: rng.normal(size=v).astype(np.float32) for k, v in SlateScorer.shapes(spec).items()}
    pol = policy_from_state(spec, w)
    s = pol.scores(_obs(rng))
    assert s.shape == (6,) and np.isfinite(s).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "bogus"}, "algorithm must be one of ppo, linucb"),
    ({"slate_size": 9}, r"slate_size must be in \[1, num_candidates=6\], got 9"),
])
def test_policy_spec_bad_values(kwargs, message):
    base = dict(algorithm="ppo", m=3, num_candidates=6, slate_size=2, num_rows=7)
    with pytest.raises(ValueError, match=message):
        PolicySpec(**{**base, **kwargs})


# -- weights and the store ---------------------------------------------------------------------------

def _spec_and_tensors(algorithm="linucb"):
    spec = PolicySpec(algorithm, m=2, num_candidates=4, slate_size=2, num_rows=5, text_dim=6)
    tensors = {k: np.ones(v, np.float32) for k, v in expected_shapes(spec).items()}
    return spec, tensors


def test_weights_round_trip_and_refusals():
    spec, t = _spec_and_tensors()
    blob, sha = pack(t)
    back = unpack(blob, sha256=sha, expect=expected_shapes(spec))
    assert set(back) == set(t)
    bad = [
        (lambda: unpack(blob, sha256="0" * 64), "do not match their sha256"),
        (lambda: unpack(b"not safetensors at all"), "not a safetensors file"),
        (lambda: unpack(b""), "weights are empty"),
        (lambda: pack({"x": np.array([np.nan])}), "tensor 'x' contains NaN or infinity"),
        (lambda: unpack(pack({**t, "b": np.ones(3)})[0], expect=expected_shapes(spec)),
         r"tensor 'b' has shape \(3,\), expected \(15,\)"),
        (lambda: unpack(pack({k: v for k, v in t.items() if k != "b"})[0], expect=expected_shapes(spec)),
         r"missing tensor\(s\): b"),
        (lambda: unpack(pack({**t, "extra": np.ones(1)})[0], expect=expected_shapes(spec)),
         r"unexpected tensor\(s\): extra"),
        (lambda: pack({"x": np.array(["a"])}), "tensor 'x': dtype <U1 is not floating point"),
        (lambda: pack({"x": np.array([1 + 2j])}), "tensor 'x': dtype complex128 is not floating point"),
    ]
    for fn, message in bad:
        with pytest.raises(WeightsError, match=message):
            fn()


@pytest.mark.parametrize("tensor, message", [
    (np.array([np.nan, 1.0], np.complex64), "tensor 'x' has dtype complex64; published weights are float32"),
    (np.array([True, False]), "tensor 'x' has dtype bool; published weights are float32"),
    (np.array([1, 2], np.uint8), "tensor 'x' has dtype uint8; published weights are float32"),
    (np.array([1, 2], np.int64), "tensor 'x' has dtype int64; published weights are float32"),
    (np.array([0.5, 2.0], np.float64), "tensor 'x' has dtype float64; published weights are float32"),
    (np.array([0.5, 2.0], np.float16), "tensor 'x' has dtype float16; published weights are float32"),
])
def test_unpack_refuses_every_dtype_but_float32(tensor, message):
    """Written around pack() (which only writes float32): what a hand-made or tampered blob could hold."""
    from safetensors.numpy import save

    with pytest.raises(WeightsError, match=message):
        unpack(save({"x": tensor}))


def test_nan_weights_hidden_from_pack_are_refused_on_unpack():
    from safetensors.numpy import save

    blob = save({"x": np.array([1.0, np.inf], np.float32)})
    with pytest.raises(WeightsError, match="tensor 'x' contains NaN or infinity"):
        unpack(blob)


def test_policy_directory_publish_keep_rollback(tmp_path):
    spec, t = _spec_and_tensors()
    store = PolicyDirectory(tmp_path, keep=3)
    assert store.latest() is None
    for i in range(5):
        blob, sha = pack({**t, "b": np.full(15, float(i))})
        m = store.publish(blob, {"sha256": sha, "spec": spec.to_dict(), "ope": {"value": i}})
    assert m["version"] == 5 and m["parent"] == 4
    assert store.versions() == [3, 4, 5]
    back = store.rollback()
    assert back["version"] == 6 and back["rollback_of"] == 4
    _, blob = store.get()
    assert unpack(blob)["b"][0] == 3.0  # version 4's weights serve again, under a newer number
    again = PolicyDirectory(tmp_path, keep=3)  # a restarted actor re-reads the directory
    assert again.latest()["version"] == 6
    with pytest.raises(KeyError, match="policy version 1 is not in the store"):
        store.get(1)


def test_policy_directory_refuses_bad_versions_and_keeps_serving(tmp_path):
    spec, t = _spec_and_tensors()
    store = PolicyDirectory(tmp_path)
    blob, sha = pack(t)
    store.publish(blob, {"sha256": sha, "spec": spec.to_dict()})
    bad_shape, sha2 = pack({**t, "a_inv": np.ones((2, 2))})
    with pytest.raises(WeightsError, match="tensor 'a_inv' has shape"):
        store.publish(bad_shape, {"sha256": sha2, "spec": spec.to_dict()})
    with pytest.raises(WeightsError, match="do not match their sha256"):
        store.publish(blob, {"sha256": "f" * 64, "spec": spec.to_dict()})
    with pytest.raises(WeightsError, match="manifest spec is invalid"):
        store.publish(blob, {"sha256": sha, "spec": {"algorithm": "ppo"}})
    assert store.latest()["version"] == 1 and store.refused == 3


def test_policy_directory_canary_lifecycle(tmp_path):
    """A canary is stored and validated like any version but LATEST stays until it is promoted;
    a refused one stays on disk for the record and is never a rollback target."""
    spec, t = _spec_and_tensors()
    store = PolicyDirectory(tmp_path, keep=2)
    blob, sha = pack(t)
    man = {"sha256": sha, "spec": spec.to_dict()}
    with pytest.raises(ValueError, match="a canary needs a live version"):
        store.publish_canary(blob, man, 0.2)
    store.publish(blob, man)
    c = store.publish_canary(blob, man, 0.2)
    assert (c["version"], c["stage"], c["parent"]) == (2, "canary", 1)
    assert store.latest()["version"] == 1 and store.canary()["share"] == 0.2
    assert store.serving()["canary"]["version"] == 2 and store.metrics()["canary"] == 2
    with pytest.raises(ValueError, match="version 2 is already on canary"):
        store.publish_canary(blob, man, 0.2)
    live = store.promote(2, {"ope": {"ctr": 0.5}})
    assert live["stage"] == "live" and live["ope"] == {"ctr": 0.5}
    assert store.latest()["version"] == 2 and store.canary() is None
    store.publish_canary(blob, man, 0.3)
    refused = store.end_canary(3, "lower bound 0.1 < current 0.5 - 0.1")
    assert refused["stage"] == "refused" and store.canary() is None and store.latest()["version"] == 2
    with pytest.raises(ValueError, match="version 3 was never served"):
        store.rollback(3)
    store.publish_canary(blob, man, 0.3)  # a direct publish (or a rollback) supersedes a running canary
    assert store.publish(blob, man)["version"] == 5
    assert store.canary() is None and store.manifest(4)["refused_because"] == "superseded by version 5"
    assert store.versions() == [4, 5]  # keep=2


@pytest.mark.parametrize("call, message", [
    (lambda s, b, m: s.publish_canary(b, m, 0.0), r"canary share must be in \(0, 1\), got 0.0"),
    (lambda s, b, m: s.publish_canary(b, m, 1.0), r"canary share must be in \(0, 1\), got 1.0"),
    (lambda s, b, m: s.promote(1), "version 1 is not on canary"),
    (lambda s, b, m: s.end_canary(7, "why"), "version 7 is not on canary"),
])
def test_policy_directory_canary_refusals(tmp_path, call, message):
    spec, t = _spec_and_tensors()
    store = PolicyDirectory(tmp_path)
    blob, sha = pack(t)
    store.publish(blob, {"sha256": sha, "spec": spec.to_dict()})
    with pytest.raises(ValueError, match=message):
        call(store, blob, {"sha256": sha, "spec": spec.to_dict()})


def test_policy_directory_refuses_bad_canary_weights(tmp_path):
    spec, t = _spec_and_tensors()
    store = PolicyDirectory(tmp_path)
    blob, sha = pack(t)
    store.publish(blob, {"sha256": sha, "spec": spec.to_dict()})
    from safetensors.numpy import save

    bad = save({**t, "b": np.full(15, np.nan, np.float32)})  # pack() itself refuses NaN
    with pytest.raises(WeightsError, match="tensor 'b' contains NaN or infinity"):
        store.publish_canary(bad, {"spec": spec.to_dict()}, 0.2)
    assert store.canary() is None and store.versions() == [1] and store.refused == 1


def test_mixture_position_probs_by_hand():
    """80% a deterministic slate, 20% uniform over 4 candidates (k = 3): the greedy slate's prefixes
    have mixture probability 0.8 + 0.2 / 4, 0.8 + 0.2 / 12, 0.8 + 0.2 / 24."""
    served, other = np.ones(3), np.array([1 / 4, 1 / 3, 1 / 2])
    got = mixture_position_probs(served, other, 0.8)
    prefix = np.array([0.85, 0.8 + 0.2 / 12, 0.8 + 0.2 / 24])
    assert got == pytest.approx([prefix[0], prefix[1] / prefix[0], prefix[2] / prefix[1]])
    assert np.prod(got) == pytest.approx(0.8 + 0.2 / 24)
    # the same slate served by the uniform canary (share 0.2), the greedy policy agreeing: same numbers
    assert mixture_position_probs(other, served, 0.2) == pytest.approx(got)
    # a slate the greedy policy would not show: only the canary's probability, times its share
    assert np.prod(mixture_position_probs(other, np.zeros(3), 0.2)) == pytest.approx(0.2 / 24)
    # the greedy policy agrees at the top only: it still adds there
    p = mixture_position_probs(other, np.array([1.0, 0.0, 0.0]), 0.2)
    assert p[0] == pytest.approx(0.85) and np.prod(p) == pytest.approx(0.2 / 24)
    # B slates at once: each row as on its own
    rows = mixture_position_probs(np.stack([served, other]), np.stack([other, np.array([1.0, 0.0, 0.0])]), 0.2)
    assert rows == pytest.approx(np.stack([mixture_position_probs(served, other, 0.2), p]))


@pytest.mark.parametrize("served, other, share, message", [
    (np.ones(3), np.ones(2), 0.5, r"served and other must be \(K,\) or \(B, K\) alike"),
    (np.ones((2, 2, 2)), np.ones((2, 2, 2)), 0.5, r"served and other must be \(K,\) or \(B, K\) alike"),
    (np.ones(3), np.ones(3), 1.5, r"served_share must be in \[0, 1\], got 1.5"),
])
def test_mixture_position_probs_refuses(served, other, share, message):
    with pytest.raises(ValueError, match=message):
        mixture_position_probs(served, other, share)


# -- logged samples, the gate ------------------------------------------------------------------------

def _logged_world(n_samples=300, algorithm="egreedy", seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    ids = np.array([f"i{i}" for i in range(20)])
    fz = Featurizer(ids, vecs, fit_projection(vecs, 3))
    spec = PolicySpec(algorithm, m=3, num_candidates=6, slate_size=2, num_rows=21, text_dim=8, epsilon=0.5)
    behaviour = make_policy(spec)
    samples = []
    for e in range(n_samples):
        cands = list(rng.choice(ids, 6, replace=False))
        user = fz.user_features(vecs[e % 20], None, context_features({"hour": e % 24}))
        obs = Observation(user, fz.candidate_features(cands), fz.rows(cands))
        slate, probs, scores = behaviour.select(obs, 2, rng)
        clicks = tuple(float(cands[i] in ("i1", "i2")) for i in slate)
        samples.append(TrainingSample(f"e{e}", float(e), "u", tuple(cands[i] for i in slate),
                                      tuple(map(float, probs)), 1, clicks,
                                      features=ImpressionFeatures(tuple(cands), user, scores, algorithm).to_dict()))
    return fz, spec, behaviour, samples


def test_samples_rebuild_the_serving_input():
    fz, spec, behaviour, samples = _logged_world(20)
    logged = samples_to_logged(samples + [samples[0]._replace(features={})], fz, spec, lam=0.0)
    assert logged.skipped == 1 and len(logged.observations) == 20
    s0 = samples[0]
    cands = s0.features["candidates"]
    assert [cands[i] for i in logged.slates[0]] == list(s0.items)
    assert logged.batch.logp[0] == pytest.approx(np.log(s0.propensities).sum())
    assert logged.batch.rewards[0] == pytest.approx(np.array(s0.rewards) @ [1, 1 / np.log2(3)])


@pytest.mark.parametrize("rewards, ctr", [
    ((-1.0, 1.0), 1.0),    # a dislike on top, a click below: clicked, and the dislike costs
    ((-1.0, 0.0), 0.0),    # a dislike alone is not a click
    ((3.0, -0.1), 1.0),    # a purchase, a skip
    ((0.6, 0.0), 1.0),     # dwell
])
def test_typed_rewards_reach_the_training_input_and_ctr_counts_positives(rewards, ctr):
    fz, spec, _, samples = _logged_world(3)
    typed = [samples[0]._replace(rewards=rewards)]
    logged = samples_to_logged(typed, fz, spec, lam=0.0)
    assert logged.ctr.tolist() == [ctr]
    assert logged.batch.rewards[0] == pytest.approx(np.array(rewards) @ [1, 1 / np.log2(3)])


def test_the_simulated_users_give_every_feedback_type():
    from rl.simulators import reactions

    rng = np.random.default_rng(0)
    seen: dict[str, list[float]] = {}
    for _ in range(2000):
        p = rng.random(5)
        for pos, kind, value in reactions(p, (rng.random(5) < p).astype(float), rng):
            assert 0 <= pos < 5
            seen.setdefault(kind, []).append(value)
    assert set(seen) == {"click", "purchase", "like", "dislike", "dwell", "skip"}
    assert min(seen["dwell"]) >= 0 and 20 < np.mean(seen["dwell"]) < 40


def test_gate_estimates_the_behaviour_policy_at_its_own_ctr():
    fz, spec, behaviour, samples = _logged_world(400)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    report = evaluate(behaviour, logged, estimator="snips", rng=np.random.default_rng(0))
    assert report.estimator == "snips"
    assert report.ctr.value == pytest.approx(logged.ctr.mean(), abs=1e-9)  # w == 1 for the logging policy


def test_gate_falls_back_to_dr_for_deterministic_candidates():
    fz, spec, _, samples = _logged_world(300)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    cand = make_policy(PolicySpec("linucb", m=3, num_candidates=6, slate_size=2, num_rows=21, text_dim=8))
    report = evaluate(cand, logged, estimator="snips", rng=np.random.default_rng(0), min_ess=50)
    assert report.estimator == "dr" and np.isfinite(report.estimate.value)


def test_click_model_slate_values_follow_from_item_probabilities():
    fz, spec, _, samples = _logged_world(50)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    o, slate = logged.observations[0], logged.slates[0]
    d = bandit_dim(3) + 1  # one block per position: [bandit features, redundancy]
    model = ClickModel()
    model.theta = np.zeros(2 * d)
    model.theta[0], model.theta[d] = 0.5, 0.1  # each position's intercept (bandit feature 0 is 1)
    p = model.item_probs(o, slate)
    assert p == pytest.approx([0.5, 0.1])
    assert model.ctr(o, slate) == pytest.approx(1 - 0.5 * 0.9)
    assert model.reward(o, slate, lam=0.5) == pytest.approx(0.5 + 0.1 / np.log2(3) + 0.5 * ild(o.items[slate]))
    model.theta[2 * d - 1] = -0.2  # the second item's redundancy: its cosine similarity to the first
    cos = float(cosine_similarity(o.items[slate])[1, 0])
    assert model.item_probs(o, slate) == pytest.approx([0.5, np.clip(0.1 - 0.2 * cos, 0, 1)])
    model.theta[0] = 2.0
    assert model.item_probs(o, slate)[0] == 1.0  # clipped


def test_click_model_grown_in_parts_equals_one_fit():
    fz, spec, _, samples = _logged_world(300)
    lg = samples_to_logged(samples, fz, spec, lam=0.0)
    whole = ClickModel().fit(lg.observations, lg.slates, lg.clicks)
    parts = ClickModel().add(lg.observations[:100], lg.slates[:100], lg.clicks[:100])
    parts.add(lg.observations[100:], lg.slates[100:], lg.clicks[100:])
    assert parts.n == 300 and np.allclose(parts.theta, whole.theta, atol=1e-10)


def test_gate_falls_back_to_dr_when_the_logs_do_not_cover_the_candidate():
    """An epsilon-greedy candidate whose greedy slates differ from the logged ones: the exploration
    slates keep weight ~1, so the ESS looks healthy, but the mean weight (support) shows that half
    of the candidate's probability mass has no logged evidence; SNIPS would renormalise it away."""
    fz, spec, behaviour, samples = _logged_world(400)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    cand = make_policy(spec)
    for o, sl, c in zip(logged.observations, logged.slates, logged.clicks):
        cand.update(o, sl, c)
    report = evaluate(cand, logged, estimator="snips", rng=np.random.default_rng(0), min_ess=20)
    assert report.estimator == "dr" and report.support < 0.7 and report.estimate.ess >= 20
    assert report.to_dict()["support"] == report.support
    lenient = evaluate(cand, logged, estimator="snips", rng=np.random.default_rng(0), min_ess=20, min_support=0.01)
    assert lenient.estimator == "snips"


def test_click_model_learns_a_position_effect():
    fz, spec, _, samples = _logged_world(400)
    samples = [s._replace(rewards=(1.0, 0.0)) for s in samples]  # the first position always clicked
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    model = ClickModel(reg=1e-3).fit(logged.observations, logged.slates, logged.clicks)
    p = np.array([model.item_probs(o, s) for o, s in zip(logged.observations, logged.slates)])
    assert np.abs(p[:, 0] - 1).max() < 1e-3 and np.abs(p[:, 1]).max() < 1e-3


def test_evaluate_refuses_unknown_dr_weights():
    fz, spec, _, samples = _logged_world(20)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    with pytest.raises(ValueError, match="dr_weights must be slate or cascade, got 'position'"):
        evaluate(make_policy(spec), logged, rng=np.random.default_rng(0), dr_weights="position")


@pytest.mark.parametrize("call, error, message", [
    (lambda m, lg: m.item_probs(lg.observations[0], lg.slates[0]), RuntimeError, "fit first"),
    (lambda m, lg: m.fit(lg.observations, lg.slates, lg.clicks[:, :1]), ValueError, "clicks must be"),
])
def test_click_model_refuses(call, error, message):
    fz, spec, _, samples = _logged_world(20)
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    with pytest.raises(error, match=message):
        call(ClickModel(), logged)


class ShowBest:
    """A deterministic candidate (the Policy protocol, no learning): the top k by ``p_click(obs)``."""

    def __init__(self, p_click):
        self.p_click = p_click

    def select(self, obs, k, rng):
        return np.argsort(-self.p_click(obs))[:k], np.ones(k), self.p_click(obs)

    def position_probabilities(self, obs, slate):
        return np.cumprod(np.asarray(slate) == self.select(obs, len(slate), None)[0]).astype(float)

    def slate_probability(self, obs, slate):
        return float(np.prod(self.position_probabilities(obs, slate)))

    def slate_mixture(self, obs, k, rng, draws=4):
        return [(self.select(obs, k, rng)[0], 1.0)]


def test_dr_with_the_click_model_recovers_a_better_candidates_ctr():
    """Click probability is linear in an item feature; a deterministic candidate that shows the two
    best candidates is valued near its true CTR by DR, from logs of a uniform behaviour policy that
    rarely showed that slate (SNIPS alone has almost no matching slates to go on)."""
    fz, spec, _, samples = _logged_world(800, algorithm="random")
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    scale = max(np.abs(o.items[:, 0]).max() for o in logged.observations)

    def p_click(obs):  # (N,) true click probability of each candidate
        return 0.45 + 0.4 * obs.items[:, 0] / scale

    rng = np.random.default_rng(1)
    clicks = [(rng.random(2) < p_click(o)[s]).astype(float) for o, s in zip(logged.observations, logged.slates)]
    samples = [smp._replace(rewards=tuple(c)) for smp, c in zip(samples, clicks)]
    logged = samples_to_logged(samples, fz, spec, lam=0.0)

    best = [ShowBest(p_click).select(o, 2, None)[0] for o in logged.observations]
    truth = np.mean([1 - np.prod(1 - p_click(o)[b]) for o, b in zip(logged.observations, best)])
    report = evaluate(ShowBest(p_click), logged, estimator="dr", rng=rng)
    assert report.estimator == "dr"
    assert abs(report.ctr.value - truth) < 0.1 * truth  # the bound for OPE vs on-policy CTR
    assert report.ctr.value > logged.ctr.mean() + 0.1  # well above what the behaviour policy got


def test_first_click_decomposes_ctr_by_position():
    assert first_click(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])).tolist() == [[1, 0, 0], [0, 1, 0]]
    p = np.array([[0.5, 0.5, 0.2]])
    assert first_click(p) == pytest.approx(np.array([[0.5, 0.25, 0.05]]))
    assert first_click(p).sum() == pytest.approx(1 - np.prod(1 - p))


def test_cascade_dr_values_a_deterministic_candidate_without_a_click_model():
    """With a useless direct method (it predicts 0 everywhere), DR rests on its importance weights.
    Per position they are the ratios down to that position, so the top position keeps the evidence
    of every logged slate that starts like the candidate's: the estimate covers the true CTR with a
    narrower interval than whole-slate weights give on the same logs."""
    fz, spec, _, samples = _logged_world(3000, algorithm="random")
    logged = samples_to_logged(samples, fz, spec, lam=0.0)
    scale = max(np.abs(o.items[:, 0]).max() for o in logged.observations)

    def p_click(obs):
        return 0.45 + 0.4 * obs.items[:, 0] / scale

    rng = np.random.default_rng(3)
    clicks = [(rng.random(2) < p_click(o)[s]).astype(float) for o, s in zip(logged.observations, logged.slates)]
    logged = samples_to_logged([smp._replace(rewards=tuple(c)) for smp, c in zip(samples, clicks)], fz, spec, lam=0.0)

    best = ShowBest(p_click)
    truth = np.mean([1 - np.prod(1 - p_click(o)[best.select(o, 2, None)[0]]) for o in logged.observations])
    useless = ClickModel()
    useless.theta = np.zeros(2 * (bandit_dim(3) + 1))
    kw = dict(estimator="dr", rng=np.random.default_rng(0), click_model=useless)
    report = evaluate(best, logged, dr_weights="cascade", **kw)
    assert report.estimator == "cascade-dr"
    cascade = report.ctr
    whole = evaluate(best, logged, **kw).ctr  # slate weights (the default)
    thin = evaluate(best, logged, dr_weights="cascade", **{**kw, "min_ess": cascade.ess + 1})
    assert thin.estimator == "dr" and thin.ctr.value == pytest.approx(whole.value)  # too little top evidence
    assert cascade.low <= truth <= cascade.high
    assert abs(cascade.value - truth) < 0.1 * truth
    assert cascade.high - cascade.low < 0.8 * (whole.high - whole.low)
    assert cascade.ess > whole.ess


def _report(value, low):
    e = Estimate(value, low, 2 * value - low, 100, 100.0)
    return GateReport("snips", e, e)


def test_promote_rule_is_relative_to_the_live_estimate():
    assert promote(_report(0.5, 0.4), None, 0.05) == (True, "first version")
    ok, why = promote(_report(0.5, 0.44), _report(0.46, 0.4), 0.05)  # bound 0.46 - 0.05 * 0.46 = 0.437
    assert ok and why == "lower bound 0.4400 >= live 0.4600 - 0.05 x 0.4600 = 0.4370"
    ok, why = promote(_report(0.5, 0.43), _report(0.46, 0.4), 0.05)
    assert not ok and why == "lower bound 0.4300 < live 0.4600 - 0.05 x 0.4600 = 0.4370"
    # what an absolute 0.1 let through on a running stack: a lower bound below the live estimate
    assert not promote(_report(0.50, 0.4649), _report(0.5312, 0.5), 0.1)[0]  # bound 0.4781
    assert promote(_report(0.01, 0.0095), _report(0.01, 0.009), 0.05)[0]  # same rule at a low CTR


# -- simulators --------------------------------------------------------------------------------------

def _tiny_sim(fatigue=0.5):
    topics = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    return SyntheticUsers(["a", "b", "c"], topics, np.array([0, 0, 1]), np.zeros(3), ["u"],
                          np.array([[0.5, 0.5]]), np.array([30.0]), fatigue=fatigue)


def test_fatigue_makes_repetitive_slates_lose_clicks():
    sim = _tiny_sim(fatigue=0.5)
    ctx = {"hour": 12}
    rep = sim.click_probs(0, ["a", "b"], ctx)
    div = sim.click_probs(0, ["a", "c"], ctx)
    assert rep[1] == pytest.approx(0.5 * sim.click_probs(0, ["b"], ctx)[0] * position_bias(2)[1])
    assert div.sum() > rep.sum()


def test_position_bias_decreases():
    pb = position_bias(4)
    assert pb[0] == 1.0 and np.all(np.diff(pb) < 0)


# -- the MovieLens semi-synthetic simulator ----------------------------------------------------------

def _ratings_table(rng, users=30, items=40, per_user=15):
    import pyarrow as pa

    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 6))) for u in range(users)
            for i in rng.choice(items, per_user, replace=False)]
    return pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "rating": [r[2] for r in rows], "ts": [0.0] * len(rows)})


def test_movielens_users_use_heldout_ratings_else_the_model():
    from rl.simulators import MovieLensUsers

    rng = np.random.default_rng(0)
    sim = MovieLensUsers.fit(_ratings_table(rng), rank=4, iters=3, heldout_fraction=0.3)
    (u, r), rating = next(iter(sim.heldout.items()))
    assert sim.rating(u, np.array([r]))[0] == rating            # a held-out rating is the truth
    unrated = next(i for i in range(len(sim.item_ids)) if (u, i) not in sim.heldout)
    assert 1.0 <= sim.rating(u, np.array([unrated]))[0] <= 5.0  # else the fitted model, clipped to the scale
    p = sim.click_probs(u, [sim.item_ids[r], sim.item_ids[unrated]], {})
    expect0 = 1.0 / (1.0 + np.exp(-sim.slope * (rating - 3.5)))
    assert p[0] == pytest.approx(expect0)                        # position 0 is always examined


ML100K = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def test_movielens_simulator_prefers_what_users_rated_highly():
    if not ML100K.is_dir():
        pytest.skip(f"MovieLens-100K not at {ML100K}")
    from rl.simulators import MovieLensUsers
    from streamrec.data.movielens import load_movielens

    cat = load_movielens(ML100K)
    sim = MovieLensUsers.fit(cat.interactions, cat.users, iters=4)
    high = [(u, i) for (u, i), r in sim.heldout.items() if r == 5][:300]
    low = [(u, i) for (u, i), r in sim.heldout.items() if r == 1][:300]
    p_high = np.mean([sim.click_probs(u, [sim.item_ids[i]], {})[0] for u, i in high])
    p_low = np.mean([sim.click_probs(u, [sim.item_ids[i]], {})[0] for u, i in low])
    assert p_high > 0.9 and p_low < 0.1
    assert 0 < sim.ages.min() and sim.ages.max() < 100
