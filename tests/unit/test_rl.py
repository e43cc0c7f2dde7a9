"""Pure learning math: exact values on small cases computed by hand, and tables of bad inputs."""

import math

import numpy as np
import pytest

from rl.bandits import bandit_features, egreedy_position_probs
from rl.features import ObsLayout
from rl.linear import LinearModel, sherman_morrison
from rl.diversity import ild, mmr_rerank, position_weights, slate_reward
from rl.metrics import coverage, ctr, gini, hit_at_k, ndcg_at_k, novelty, recall_at_k
from rl.ope import cascade_dr, dr, ips, snips
from rl.policies import POLICIES, make_policy
from rl.slate import greedy_slate, plackett_luce_logp, plackett_luce_position_probs, plackett_luce_sample
from rl.spec import Observation, PolicySpec


def test_plackett_luce_probabilities_by_hand():
    s = np.log(np.array([1.0, 2.0, 3.0, 4.0]))  # weights 1,2,3,4 (sum 10)
    p = plackett_luce_position_probs(s, np.array([3, 2]))
    assert np.allclose(p, [4 / 10, 3 / 6])
    assert math.isclose(plackett_luce_logp(s, np.array([3, 2])), math.log(0.4 * 0.5))


def test_plackett_luce_slate_probabilities_sum_to_one_and_match_sampling():
    s = np.array([0.3, -1.0, 2.0, 0.5])
    from itertools import permutations

    total = sum(math.exp(plackett_luce_logp(s, np.array(p))) for p in permutations(range(4), 2))
    assert math.isclose(total, 1.0, rel_tol=1e-12)
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(20_000):
        slate, probs = plackett_luce_sample(s, 2, rng)
        counts[tuple(slate)] = counts.get(tuple(slate), 0) + 1
    for slate, c in counts.items():
        assert abs(c / 20_000 - math.exp(plackett_luce_logp(s, np.array(slate)))) < 0.015


@pytest.mark.parametrize("scores, k, t, msg", [
    (np.array([]), 1, 1.0, r"scores must be a non-empty \(N,\) vector"),
    (np.array([1.0, np.nan]), 1, 1.0, "scores contain NaN or infinity"),
    (np.array([1.0, 2.0]), 3, 1.0, r"slate size k must be in \[1, 2\], got 3"),
    (np.array([1.0, 2.0]), 1, 0.0, "temperature must be > 0, got 0.0"),
])
def test_plackett_luce_bad_inputs(scores, k, t, msg):
    with pytest.raises(ValueError, match=msg):
        plackett_luce_sample(scores, k, np.random.default_rng(0), t)


def _spec(algorithm, n=3, k=2, **kw):
    return PolicySpec(algorithm, m=1, num_candidates=n, slate_size=k, num_rows=n + 1, **kw)


def _obs(items, m=1):
    """An observation of len(items) candidates with 1-d vectors ``items``, no profile, no context."""
    items = np.asarray(items, np.float32).reshape(-1, m)
    return Observation(np.zeros(ObsLayout(m, len(items)).user_dim, np.float32), items, np.arange(1, len(items) + 1))


def test_sherman_morrison_is_exact():
    rng = np.random.default_rng(0)
    a = np.eye(3) * 2 + 0.1
    x = rng.normal(size=3)
    assert np.allclose(sherman_morrison(np.linalg.inv(a), x), np.linalg.inv(a + np.outer(x, x)))


@pytest.mark.parametrize("m", [3, 12])  # fewer rows than dimensions (Woodbury), more (one inversion)
def test_update_many_equals_one_sherman_morrison_step_per_row(m):
    rng = np.random.default_rng(m)
    x, r = rng.normal(size=(m, 5)), rng.integers(0, 2, size=m).astype(float)
    one, many = LinearModel(dim=5, reg=0.5), LinearModel(dim=5, reg=0.5)
    for xi, ri in zip(x, r):
        one.update(xi, ri)
    many.update_many(x, r)
    assert np.allclose(many.a_inv, one.a_inv) and np.allclose(many.b, one.b) and many.n == one.n == m
    assert np.allclose(many.a_inv, np.linalg.inv(0.5 * np.eye(5) + x.T @ x))


@pytest.mark.parametrize("x, r, message", [
    (np.ones((2, 5)), np.ones(3), r"rewards must be 2 finite values, one per feature row, got shape \(3,\)"),
    (np.ones((2, 5)), np.array([1.0, np.nan]), "rewards must be 2 finite values"),
    (np.ones((2, 4)), np.ones(2), r"features must be \(N, 5\), got shape \(2, 4\)"),
])
def test_update_many_refuses(x, r, message):
    with pytest.raises(ValueError, match=message):
        LinearModel(dim=5).update_many(x, r)


def test_ucb_scores_and_updates_by_hand():
    model = LinearModel(dim=2, reg=1.0)
    model.update(np.array([1.0, 0.0]), reward=1.0)
    # A = diag(2, 1), b = (1, 0): theta = (0.5, 0); widths sqrt(1/2), sqrt(1)
    assert np.allclose(model.theta, [0.5, 0.0])
    assert np.allclose(model.ucb_scores(np.array([[1.0, 0.0], [0.0, 1.0]]), 2.0), [0.5 + 2 * math.sqrt(0.5), 2.0])


def test_linucb_serves_the_top_k_of_its_upper_bounds():
    pol = make_policy(_spec("linucb", n=4, alpha=2.0))
    obs = _obs([1.0, -0.5, 0.2, 0.0])
    pol.update_batch([obs] * 20, [[0, 1]] * 20, [[1.0, 0.0]] * 20)
    ucb = pol.model.ucb_scores(bandit_features(obs), 2.0)
    slate, probs, scores = pol.select(obs, 2, np.random.default_rng(0))
    assert slate.tolist() == np.argsort(-ucb)[:2].tolist() and np.allclose(scores, ucb)
    assert probs.tolist() == [1.0, 1.0]  # deterministic given the state


def test_epsilon_greedy_propensities_are_exact():
    pol = make_policy(_spec("egreedy", epsilon=0.2))
    obs = _obs([3.0, 2.0, 1.0])
    pol.update(obs, np.array([0, 1]), np.array([1.0, 0.0]))
    greedy = np.argsort(-pol.model.mean_scores(bandit_features(obs)), kind="stable")[:2]
    rng = np.random.default_rng(1)
    for _ in range(20):
        slate, probs, _ = pol.select(obs, 2, rng)
        # P(slate) = eps * 1/(3*2) + (1 - eps) * [slate == greedy]: the per-position factors multiply to it
        assert np.prod(probs) == pytest.approx(0.2 / 6 + 0.8 * float(np.array_equal(slate, greedy)))
        assert np.allclose(probs, pol.position_probabilities(obs, slate))
    assert egreedy_position_probs(greedy, greedy, 3, 0.2)[0] == pytest.approx(0.2 / 3 + 0.8)
    total = sum(pol.slate_probability(obs, np.array(s)) for s in [(a, b) for a in range(3) for b in range(3) if a != b])
    assert total == pytest.approx(1.0)


@pytest.mark.parametrize("make, call, msg", [
    (lambda: LinearModel(dim=0), None, "dim must be >= 1, got 0"),
    (lambda: LinearModel(dim=2, reg=0), None, "reg must be > 0, got 0"),
    (lambda: LinearModel(dim=2), lambda p: p.ucb_scores(np.ones((3, 3)), 1.0), r"features must be \(N, 2\), got shape \(3, 3\)"),
    (lambda: LinearModel(dim=2), lambda p: p.update(np.ones(2), float("nan")), "reward must be finite, got nan"),
    (lambda: LinearModel(dim=2), lambda p: p.mean_scores(np.array([[np.inf, 0.0]])), "features contain NaN or infinity"),
    (lambda: make_policy(_spec("random", n=2, k=1)), lambda p: p.select(_obs([0.0, 1.0]), 3, np.random.default_rng(0)),
     r"slate size k must be in \[1, 2\], got 3"),
    (lambda: POLICIES["linucb"](_spec("random")), None, "LinUCBPolicy serves 'linucb', not 'random'"),
])
def test_bandit_bad_inputs(make, call, msg):
    with pytest.raises(ValueError, match=msg):
        p = make()
        call(p)


def test_random_policy_propensities():
    pol = make_policy(_spec("random", n=5, k=3))
    obs = _obs(np.zeros(5))
    slate, probs, _ = pol.select(obs, 3, np.random.default_rng(0))
    assert np.allclose(probs, [1 / 5, 1 / 4, 1 / 3]) and np.allclose(pol.position_probabilities(obs, slate), probs)


def test_popularity_ranks_by_smoothed_ctr():
    pol = make_policy(_spec("popularity"))
    obs = _obs([0.0, 0.0, 0.0])  # rows 1, 2, 3
    pol.update_batch([obs] * 10, [[1, 0]] * 10, [[1.0, 0.0]] * 10)  # row 2 always clicked, row 1 never
    slate, _, scores = pol.select(obs, 2, np.random.default_rng(0))
    assert np.allclose(scores, [0.1 / 11, 10.1 / 11, 0.1])
    assert slate.tolist() == [1, 2]  # row 2 (ctr ~0.92), then unseen row 3 (0.1) before row 1 (~0.01)


def test_ild_and_reward_by_hand():
    assert ild(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    assert ild(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert ild(np.array([[1.0, 0.0]])) == 0.0
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (1,2)=1, (1,3)=1-1/sqrt2, (2,3)=1-1/sqrt2 -> mean
    assert ild(v) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert np.allclose(position_weights(3), [1, 1 / math.log2(3), 0.5])
    assert slate_reward(np.array([0, 1, 0]), v, lam=0.5) == pytest.approx(1 / math.log2(3) + 0.5 * ild(v))


def test_mmr_trades_relevance_for_novelty():
    scores = np.array([1.0, 0.99, 0.5])
    vecs = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    assert mmr_rerank(scores, vecs, 2, lam=0.0).tolist() == [0, 1]
    assert mmr_rerank(scores, vecs, 2, lam=0.5).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 2"):
        mmr_rerank(scores, vecs, 2, lam=2)


def test_ranking_metrics_by_hand():
    ranked = ["a", "b", "c", "d"]
    rel = {"b", "d", "z"}
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert hit_at_k(ranked, rel, 1) == 0.0 and hit_at_k(ranked, rel, 2) == 1.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(dcg / idcg)
    assert ctr([0, 1, 0, 2]) == 0.5
    assert coverage([["a", "b"], ["b", "c"]], 6) == 0.5
    assert novelty([["a"]], {"a": 1}, 4) == pytest.approx(2.0)
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        ndcg_at_k(ranked, rel, 0)


def test_off_policy_estimators_by_hand():
    r = np.array([1.0, 0.0, 1.0, 0.0])
    mu = np.array([0.5, 0.5, 0.25, 0.25])
    pi = np.array([1.0, 0.5, 0.5, 0.0])
    w = pi / mu  # 2, 1, 2, 0
    assert ips(r, pi, mu).value == pytest.approx((2 + 0 + 2 + 0) / 4)
    assert snips(r, pi, mu).value == pytest.approx(4 / 5)
    q_t, q_l = np.full(4, 0.5), np.full(4, 0.5)
    assert dr(r, pi, mu, q_t, q_l).value == pytest.approx(np.mean(0.5 + w * (r - 0.5)))
    e = snips(r, pi, mu)
    assert e.low < e.value < e.high and e.ess == pytest.approx(25 / 9)


def test_on_policy_ips_is_the_plain_mean():
    r = np.array([1.0, 0.0, 1.0])
    p = np.array([0.3, 0.3, 0.3])
    assert ips(r, p, p).value == pytest.approx(2 / 3) == snips(r, p, p).value


@pytest.mark.parametrize("args, msg", [
    ((np.ones(2), np.ones(2), np.array([0.5, 0.0])), r"logged probabilities must be in \(0, 1\]"),
    ((np.ones(2), np.array([1.5, 0.1]), np.ones(2)), r"target probabilities must be in \[0, 1\]"),
    ((np.ones(3), np.ones(2), np.ones(2)), r"rewards must be \(2,\), got shape \(3,\)"),
    ((np.array([np.nan, 1.0]), np.ones(2), np.ones(2)), "rewards contain NaN or infinity"),
    ((np.ones(0), np.ones(0), np.ones(0)), "no samples"),
])
def test_ope_bad_inputs(args, msg):
    with pytest.raises(ValueError, match=msg):
        ips(*args)


_ONE = (np.ones(2), np.full(2, 0.5), np.full(2, 0.5))


@pytest.mark.parametrize("call, msg", [
    (lambda: ips(*_ONE, clip=float("nan")), "clip must be None or a finite number >= 1, got nan"),
    (lambda: snips(*_ONE, clip=-5.0), "clip must be None or a finite number >= 1, got -5.0"),
    (lambda: snips(*_ONE, clip=0.5), "clip must be None or a finite number >= 1, got 0.5"),
    (lambda: ips(*_ONE, clip=True), "clip must be None or a finite number >= 1, got True"),
    (lambda: dr(*_ONE, np.ones(3), np.ones(2)), r"q_target must be \(2,\), got shape \(3,\)"),
    (lambda: dr(*_ONE, np.ones(2), np.array([1.0, np.inf])), "q_logged contain NaN or infinity"),
    (lambda: cascade_dr(np.ones(3), np.ones((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5), np.full((2, 2), 0.5)),
     r"q_target must be \(2,\), got shape \(3,\)"),
    (lambda: cascade_dr(np.ones(2), np.ones((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5), np.full((2, 2), 0.5),
                        clip=float("inf")), "clip must be None or a finite number >= 1, got inf"),
])
def test_estimator_inputs_name_the_argument_that_is_wrong(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_greedy_slate_breaks_ties_by_index():
    assert greedy_slate(np.array([1.0, 3.0, 3.0, 0.0]), 3).tolist() == [1, 2, 0]


# -- cascade DR ---------------------------------------------------------------------------------------

def _cascade_case():
    q_t = np.array([0.5, 0.4])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    yhat = np.array([[0.5, 0.2], [0.3, 0.4]])
    pi = np.array([[1.0, 1.0], [1.0, 0.0]])
    mu = np.array([[0.5, 0.5], [0.5, 1.0]])
    return q_t, y, yhat, pi, mu


def test_cascade_dr_weights_each_position_by_the_ratios_down_to_it():
    q_t, y, yhat, pi, mu = _cascade_case()
    # W = cumprod(pi / mu) = [[2, 4], [2, 0]]; v = (1, 0.5)
    # sample 1: 0.5 + 1 * 2 * (1 - 0.5) + 0.5 * 4 * (0 - 0.2) = 1.1; sample 2: 0.4 + 2 * (0 - 0.3) + 0 = -0.2
    est = cascade_dr(q_t, y, yhat, pi, mu, weights=[1.0, 0.5])
    assert est.value == pytest.approx(0.45) and est.n == 2 and est.ess == pytest.approx(2.0)
    se = np.std([1.1, -0.2], ddof=1) / np.sqrt(2)
    assert est.low == pytest.approx(0.45 - 1.96 * se) and est.high == pytest.approx(0.45 + 1.96 * se)
    # clipping applies to the cumulative weight: W[0, 1] = 4 -> 3
    assert cascade_dr(q_t, y, yhat, pi, mu, weights=[1.0, 0.5], clip=3.0).value == pytest.approx(0.5)


def test_cascade_dr_with_one_position_is_dr():
    rng = np.random.default_rng(0)
    r, q_t, q_l = rng.random(50), rng.random(50), rng.random(50)
    pi, mu = rng.uniform(0.1, 1, 50), rng.uniform(0.1, 1, 50)
    a = cascade_dr(q_t, r[:, None], q_l[:, None], pi[:, None], mu[:, None])
    b = dr(r, pi, mu, q_t, q_l)
    assert a.value == pytest.approx(b.value) and a.low == pytest.approx(b.low)


@pytest.mark.parametrize("change, message", [
    (lambda c: (c[0], c[1][:, :1], *c[2:]), "predictions must be a finite"),
    (lambda c: (c[0], c[1], c[2] * np.nan, *c[3:]), "predictions must be a finite"),
    (lambda c: (c[0], c[1][0], *c[2:]), "outcomes must be a finite"),
    (lambda c: (*c[:3], c[3][:1], c[4]), "target and logged probabilities must be"),
    (lambda c: (*c[:4], c[4] * 0), "logged probabilities must be in"),
    (lambda c: (c[0][:1], *c[1:]), r"q_target must be \(\d+,\)"),
])
def test_cascade_dr_refuses(change, message):
    with pytest.raises(ValueError, match=message):
        cascade_dr(*change(_cascade_case()))


def test_ctr_sprt_by_hand():
    from rl.sequential import ctr_sprt

    r = ctr_sprt(40, 100, 0.5, drop=0.2, alpha=0.05, beta=0.1)  # p1 = 0.4
    assert r.p1 == pytest.approx(0.4)
    assert r.llr == pytest.approx(40 * math.log(0.4 / 0.5) + 60 * math.log(0.6 / 0.5))
    assert r.upper == pytest.approx(math.log(0.9 / 0.05)) and r.lower == pytest.approx(math.log(0.1 / 0.95))
    assert r.decision == "continue"  # 40 ln 0.8 + 60 ln 1.2 = 2.01, below ln 18 = 2.89
    assert ctr_sprt(35, 100, 0.5, drop=0.2, alpha=0.05, beta=0.1).decision == "worse"  # 4.04 >= 2.89
    assert ctr_sprt(0, 0, 0.5).decision == "continue"
    assert ctr_sprt(500, 1000, 0.5, drop=0.1).decision == "fine"
    assert ctr_sprt(400, 1000, 0.5, drop=0.1).decision == "worse"


@pytest.mark.parametrize("kwargs, message", [
    (dict(clicks=5, n=3, p0=0.5), "clicks and n must be ints with 0 <= clicks <= n, got 5 of 3"),
    (dict(clicks=1, n=3, p0=0.0), r"p0 must be in \(0, 1\), got 0.0"),
    (dict(clicks=1, n=3, p0=0.5, drop=1.0), r"drop must be in \(0, 1\), got 1.0"),
    (dict(clicks=1, n=3, p0=0.5, alpha=0.7), r"alpha must be in \(0, 0.5\), got 0.7"),
    (dict(clicks=1, n=3, p0=0.5, beta=0.0), r"beta must be in \(0, 0.5\), got 0.0"),
])
def test_ctr_sprt_refuses(kwargs, message):
    from rl.sequential import ctr_sprt

    with pytest.raises(ValueError, match=message):
        ctr_sprt(**kwargs)


def test_live_watch_waits_for_a_baseline_and_settles():
    from rl.sequential import LiveWatch

    w = LiveWatch(drop=0.1, min_impressions=100)
    w.add([1] * 99, [1, 0] * 49 + [1])
    w.went_live(2, 1)
    assert w.check() is None  # the predecessor served 99 < 100
    w.add([1, 2], [0, 1])
    assert w.check().decision == "continue"
    w.add([2] * 1000, [1, 0] * 500)
    assert w.check().decision == "fine" and w.settled and w.check() is None
    w.went_live(3, None)  # a rollback: nothing to compare with
    assert w.check() is None
