"""Simulated users: they drive traffic and measure policies, and never sit in the training path.

Both simulators answer one question — given a user, a context and a shown slate, which items
get clicked — through the same interface::

    sim.sample_user(rng) -> (user index, user id, context dict)
    sim.click_probs(user, slate_item_ids, context) -> (K,) probabilities
    sim.clicks(user, slate_item_ids, context, rng) -> (K,) 0/1

:class:`SyntheticUsers` (the synthetic population): taste over topics shifted by time of day and
age, position bias, and within-slate fatigue — every earlier item sharing an item's main topic
multiplies its click probability by ``fatigue`` — so repetitive slates lose clicks and
diversity pays. :class:`MovieLensUsers` (semi-synthetic ML-100K): a user's click probability
on an item comes from their held-out rating when they rated it, else from a matrix
factorisation fitted to the training ratings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SyntheticUsers", "MovieLensUsers", "position_bias", "reactions"]


def reactions(click_p: np.ndarray, clicked: np.ndarray, rng: np.random.Generator) -> list[tuple[int, str, float]]:
    """Every feedback type a simulated user gives a slate, as (position, type, value) events.

    A clicked item gets its click, then sometimes more: a dwell (exponential seconds, mean 30) with
    probability 0.5, a like 0.2, a purchase 0.1 (each more likely the more the user wanted it). An
    item seen but not clicked is skipped with probability 0.1, and disliked with probability
    0.05 * (1 - its click probability): users dislike what they did not want."""
    out: list[tuple[int, str, float]] = []
    for pos, (p, c) in enumerate(zip(np.asarray(click_p, float), np.asarray(clicked))):
        if c > 0:
            out.append((pos, "click", 1.0))
            if rng.random() < 0.5:
                out.append((pos, "dwell", float(rng.exponential(30.0))))
            if rng.random() < 0.2 * (0.5 + p):
                out.append((pos, "like", 1.0))
            if rng.random() < 0.1 * (0.5 + p):
                out.append((pos, "purchase", 1.0))
        elif rng.random() < 0.1:
            out.append((pos, "skip", 1.0))
        elif rng.random() < 0.05 * (1.0 - p):
            out.append((pos, "dislike", 1.0))
    return out


def position_bias(k: int, power: float = 0.7) -> np.ndarray:
    """(K,) examination probability by position: 1 / (1 + j)^power."""
    return 1.0 / (1.0 + np.arange(k)) ** power


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class SyntheticUsers:
    """The synthetic population over a synthetic catalog (tables from streamrec.data.synthetic).

    item_topics: (n_items, T) topic weights (main topic 1, others 0.5); item_main: (n_items,);
    item_pop: (n_items,); taste: (n_users, T); ages: (n_users,).
    """

    item_ids: list[str]
    item_topics: np.ndarray
    item_main: np.ndarray
    item_pop: np.ndarray
    user_ids: list[str]
    taste: np.ndarray
    ages: np.ndarray
    fatigue: float = 0.4
    sharpness: float = 10.0
    """How strongly taste separates items (logit slope on affinity)."""
    base: float = -4.0
    seed: int = 0
    daypart_boost: np.ndarray = field(init=False)

    def __post_init__(self):
        r = np.random.default_rng([self.seed, 7])
        t = self.item_topics.shape[1]
        self.daypart_boost = np.ones((4, t))
        for d in range(4):
            self.daypart_boost[d, r.choice(t, min(3, t), replace=False)] = 3.0
        self.row_of = {i: r_ for r_, i in enumerate(self.item_ids)}

    @classmethod
    def from_tables(cls, items, users, **kw) -> "SyntheticUsers":
        """From ``synthetic_items``/``synthetic_users`` pyarrow tables."""
        from streamrec.data.synthetic import TOPIC_NAMES

        col = {t: i for i, t in enumerate(TOPIC_NAMES)}
        topics = items.column("topics").to_pylist()
        w = np.zeros((len(topics), len(TOPIC_NAMES)))
        main = np.zeros(len(topics), np.int64)
        for r, ts in enumerate(topics):
            names = ts.split()
            main[r] = col[names[0]]
            for j, name in enumerate(names):
                w[r, col[name]] = 1.0 if j == 0 else 0.5
        taste = np.stack([np.asarray(t, np.float64) for t in users.column("taste").to_pylist()])
        return cls(items.column("item_id").to_pylist(), w, main, items.column("popularity").to_numpy(),
                   users.column("user_id").to_pylist(), taste, np.asarray(users.column("age").to_pylist(), float), **kw)

    def sample_user(self, rng: np.random.Generator) -> tuple[int, str, dict]:
        u = int(rng.integers(len(self.user_ids)))
        return u, self.user_ids[u], {"hour": int(rng.integers(24)), "age": int(self.ages[u])}

    def taste_now(self, user: int, context: dict) -> np.ndarray:
        """(T,) the user's taste in this context (time of day, age), normalised to sum 1."""
        t = self.taste[user] * self.daypart_boost[int(context.get("hour", 0)) % 24 // 6]
        age = context.get("age", self.ages[user])
        if age < 25:
            t = t * np.where(np.isin(np.arange(len(t)), [3, 6, 8]), 2.0, 1.0)   # comedy, animation, sports
        elif age > 50:
            t = t * np.where(np.isin(np.arange(len(t)), [2, 5, 7]), 2.0, 1.0)   # romance, documentary, war
        return t / t.sum()

    def click_probs(self, user: int, items, context: dict) -> np.ndarray:
        rows = np.asarray([self.row_of[i] for i in items])
        aff = self.item_topics[rows] @ self.taste_now(user, context)
        p = _sigmoid(self.sharpness * aff + 0.3 * np.log1p(self.item_pop[rows]) + self.base)
        mains = self.item_main[rows]
        repeats = np.array([(mains[:j] == mains[j]).sum() for j in range(len(rows))])
        return p * position_bias(len(rows)) * self.fatigue ** repeats

    def clicks(self, user: int, items, context: dict, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(items)) < self.click_probs(user, items, context)).astype(np.float64)


@dataclass
class MovieLensUsers:
    """Semi-synthetic MovieLens: P(click) = position bias * sigmoid(slope * (rating - 3.5)).

    rating = the user's held-out rating of the item when there is one, else the fitted model's.
    """

    item_ids: list[str]
    user_ids: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    bias: float
    heldout: dict
    """(user index, item row) -> rating from the held-out split."""
    ages: np.ndarray
    slope: float = 1.5

    @classmethod
    def fit(cls, interactions, users=None, *, rank: int = 16, reg: float = 5.0, iters: int = 8,
            heldout_fraction: float = 0.2, seed: int = 0) -> "MovieLensUsers":
        """Fit a rank-``rank`` matrix factorisation by alternating least squares on 1-holdout of ratings."""
        u_ids = sorted(set(interactions.column("user_id").to_pylist()))
        i_ids = sorted(set(interactions.column("item_id").to_pylist()))
        ur = {u: r for r, u in enumerate(u_ids)}
        ir = {i: r for r, i in enumerate(i_ids)}
        uu = np.asarray([ur[u] for u in interactions.column("user_id").to_pylist()])
        ii = np.asarray([ir[i] for i in interactions.column("item_id").to_pylist()])
        rr = np.asarray(interactions.column("rating").to_pylist(), float)
        rng = np.random.default_rng(seed)
        hold = rng.random(len(rr)) < heldout_fraction
        mu = float(rr[~hold].mean())
        p = rng.normal(0, 0.1, (len(u_ids), rank))
        q = rng.normal(0, 0.1, (len(i_ids), rank))
        tu, ti, tr = uu[~hold], ii[~hold], rr[~hold] - mu
        by_u = [np.flatnonzero(tu == u) for u in range(len(u_ids))]
        by_i = [np.flatnonzero(ti == i) for i in range(len(i_ids))]
        eye = reg * np.eye(rank)
        for _ in range(iters):
            for u, idx in enumerate(by_u):
                qi = q[ti[idx]]
                p[u] = np.linalg.solve(qi.T @ qi + eye, qi.T @ tr[idx])
            for i, idx in enumerate(by_i):
                pu = p[tu[idx]]
                q[i] = np.linalg.solve(pu.T @ pu + eye, pu.T @ tr[idx])
        held = {(int(u), int(i)): float(r) for u, i, r in zip(uu[hold], ii[hold], rr[hold])}
        ages = np.full(len(u_ids), 30.0)
        if users is not None and "age" in users.column_names:
            age_of = dict(zip(users.column("user_id").to_pylist(), users.column("age").to_pylist()))
            ages = np.asarray([float(age_of.get(u, 30) or 30) for u in u_ids])
        return cls(i_ids, u_ids, p, q, mu, held, ages)

    def rating(self, user: int, rows: np.ndarray) -> np.ndarray:
        pred = self.bias + self.item_factors[rows] @ self.user_factors[user]
        return np.asarray([self.heldout.get((user, int(r)), float(np.clip(x, 1, 5))) for r, x in zip(rows, pred)])

    def sample_user(self, rng: np.random.Generator) -> tuple[int, str, dict]:
        u = int(rng.integers(len(self.user_ids)))
        return u, self.user_ids[u], {"hour": int(rng.integers(24)), "age": int(self.ages[u])}

    def click_probs(self, user: int, items, context: dict) -> np.ndarray:
        row_of = getattr(self, "_row_of", None) or {i: r for r, i in enumerate(self.item_ids)}
        self._row_of = row_of
        rows = np.asarray([row_of[i] for i in items])
        return position_bias(len(rows)) * _sigmoid(self.slope * (self.rating(user, rows) - 3.5))

    def clicks(self, user: int, items, context: dict, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(items)) < self.click_probs(user, items, context)).astype(np.float64)
