"""Serving policies: one interface over the neural scorer and the bandits, built from published tensors.

Every policy ranks one impression's :class:`Observation` and says exactly how likely its slate was::

    pol = make_policy(spec)                         # or policy_from_state(spec, tensors)
    slate, probs, scores = pol.select(obs, k, rng)  # (K,) candidate indices, (K,) per-position probs, (N,)
    pol.slate_probability(obs, slate)               # target probability for off-policy estimates
    tensors = pol.state()                           # what the PolicyStore publishes (safetensors)

The neural policy's serving model is :class:`SlateScorer` (numpy, no torch on the request path),
converted from the RLlib module's state dict by :meth:`SlateScorer.from_module_state`.
Bandits learn here too (``update``): their state is small and their math is in :mod:`rl.bandits`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from rl.bandits import EpsilonGreedy, LinearThompson, LinUCB, _Linear, egreedy_position_probs
from rl.features import CONTEXT_DIM, ObsLayout
from rl.slate import (_check_k, cosine_similarity, plackett_luce_position_probs, plackett_luce_sample,
                      prefix_frequencies)
from rl.weights import WeightsError

__all__ = ["ALGORITHMS", "PolicySpec", "Observation", "SlateScorer", "NeuralPolicy", "BanditPolicy",
           "make_policy", "policy_from_state", "bandit_features", "bandit_dim", "diverse_greedy", "diverse_greedy_batch",
           "expected_shapes"]

ALGORITHMS = ("ppo", "linucb", "thompson", "egreedy", "popularity", "random")


@dataclass(frozen=True)
class PolicySpec:
    """What a version is: algorithm and sizes. Travels as JSON in the manifest next to the weights."""

    algorithm: str
    m: int
    """Projected text-vector size."""
    num_candidates: int
    slate_size: int
    num_rows: int
    """Item-id rows (catalog + 1 unknown)."""
    text_dim: int = 384
    """D: size of the text vectors the published projection maps from."""
    temperature: float = 1.0
    penalty: float = 0.0
    """Diversity penalty of the slate distribution (0 = plain Plackett-Luce / top-k)."""
    epsilon: float = 0.1
    alpha: float = 1.0
    draws: int = 64
    """Thompson: posterior draws per impression behind its logged propensities (Monte Carlo)."""
    hidden: int = 64
    embed: int = 32
    id_dim: int = 8

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if not 1 <= self.slate_size <= self.num_candidates:
            raise ValueError(f"slate_size must be in [1, num_candidates={self.num_candidates}], got {self.slate_size}")

    @property
    def layout(self) -> ObsLayout:
        return ObsLayout(self.m, self.num_candidates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicySpec":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Observation:
    """One impression's policy input. user: (U,), items: (N, m), rows: (N,) int."""

    user: np.ndarray
    items: np.ndarray
    rows: np.ndarray

    @classmethod
    def from_flat(cls, obs: np.ndarray, layout: ObsLayout) -> "Observation":
        u, i, r = layout.split(np.asarray(obs, np.float32))
        return cls(u, i, r.astype(np.int64))

    def similarity(self) -> np.ndarray:
        return cosine_similarity(self.items)


def diverse_greedy(scores: np.ndarray, sim: np.ndarray | None, k: int, penalty: float) -> np.ndarray:
    """(K,) the zero-temperature limit of the diverse Plackett-Luce: argmax of score - penalty * max sim."""
    return diverse_greedy_batch(np.asarray(scores)[None, :], sim, k, penalty)[0]


def diverse_greedy_batch(scores: np.ndarray, sim: np.ndarray | None, k: int, penalty: float) -> np.ndarray:
    """(M, K) :func:`diverse_greedy` of each row of (M, N) ``scores`` (same ties: lowest index first)."""
    s = np.asarray(scores, np.float64)
    m, n = s.shape
    _check_k(k, n)
    if penalty <= 0 or sim is None:
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
    rows = np.arange(m)
    avail = np.ones((m, n), bool)
    max_sim = np.zeros((m, n))
    out = np.empty((m, k), np.int64)
    for j in range(k):
        out[:, j] = np.argmax(np.where(avail, s - penalty * max_sim, -np.inf), axis=1)
        avail[rows, out[:, j]] = False
        max_sim = sim[out[:, j]] if j == 0 else np.maximum(max_sim, sim[out[:, j]])
    return out


# -- the neural policy's serving model ------------------------------------------------------------

def _relu(x):
    return np.maximum(x, 0.0)


@dataclass
class SlateScorer:
    """numpy twin of :class:`rl.module.SlateScorerModule.scores` (the serving model)."""

    layout: ObsLayout
    w: dict[str, np.ndarray]

    #: module state-dict names the scorer needs (the value head stays with the trainer)
    NAMES = ("user_tower.0.weight", "user_tower.0.bias", "user_tower.2.weight", "user_tower.2.bias",
             "id_embedding.weight", "item_bias.weight", "item_tower.weight", "item_tower.bias", "content_weights")

    @classmethod
    def from_module_state(cls, layout: ObsLayout, state: Mapping[str, Any]) -> "SlateScorer":
        """Convert an RLlib module state dict (torch tensors or arrays) into the serving model."""
        w = {}
        for n in cls.NAMES:
            if n not in state:
                raise WeightsError(f"missing tensor {n!r}")
            t = state[n]
            w[n] = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, np.float32)
        return cls(layout, w)

    @staticmethod
    def shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        u, h, e, m, r = spec.layout.user_dim, spec.hidden, spec.embed, spec.m, spec.num_rows
        return {"user_tower.0.weight": (h, u), "user_tower.0.bias": (h,), "user_tower.2.weight": (e, h),
                "user_tower.2.bias": (e,), "id_embedding.weight": (r, spec.id_dim), "item_bias.weight": (r, 1),
                "item_tower.weight": (e, m + spec.id_dim), "item_tower.bias": (e,), "content_weights": (2,)}

    def scores(self, obs: Observation) -> np.ndarray:
        """(N,) scores; rows beyond the table (items newer than the version) use row 0."""
        w, m = self.w, self.layout.m
        rows = np.where(obs.rows < len(w["id_embedding.weight"]), obs.rows, 0)
        u = _relu(obs.user @ w["user_tower.0.weight"].T + w["user_tower.0.bias"])
        u = u @ w["user_tower.2.weight"].T + w["user_tower.2.bias"]
        x = np.concatenate([obs.items, w["id_embedding.weight"][rows]], 1)
        v = x @ w["item_tower.weight"].T + w["item_tower.bias"]
        cw = w["content_weights"]
        content = cw[0] * (obs.items @ obs.user[:m]) + cw[1] * (obs.items @ obs.user[m:2 * m])
        return (v @ u + content + w["item_bias.weight"][rows, 0]).astype(np.float64)


@dataclass
class NeuralPolicy:
    """PPO's policy at serving time: diverse Plackett-Luce over the scorer's scores."""

    spec: PolicySpec
    scorer: SlateScorer
    explore: bool = True

    algorithm = "ppo"

    def scores(self, obs: Observation) -> np.ndarray:
        return self.scorer.scores(obs)

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        s = self.scores(obs)
        sim = obs.similarity() if self.spec.penalty > 0 else None
        if not self.explore:
            slate = diverse_greedy(s, sim, k, self.spec.penalty)
            return slate, np.ones(k), s
        slate, probs = plackett_luce_sample(s, k, rng, self.spec.temperature, sim, self.spec.penalty)
        return slate, probs, s

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """(K,) probability of each item of ``slate`` given the items above it."""
        sim = obs.similarity() if self.spec.penalty > 0 else None
        return plackett_luce_position_probs(self.scores(obs), slate, self.spec.temperature, sim, self.spec.penalty)

    def slate_probability(self, obs: Observation, slate: np.ndarray) -> float:
        return float(np.prod(self.position_probabilities(obs, slate)))

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.scorer.w)

    @staticmethod
    def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        return SlateScorer.shapes(spec)


# -- bandits -------------------------------------------------------------------------------------

def bandit_features(obs: Observation) -> np.ndarray:
    """(N, 1 + 7m) per-candidate features of the linear bandits.

    [1, item, profile*item, context-text*item, daypart one-hot (x) item] — the last block lets a
    linear model learn tastes that change with the time of day.
    """
    m = obs.items.shape[1]
    u = obs.user
    items = obs.items.astype(np.float64)
    dayparts = u[2 * m + 2: 2 * m + 6]
    n = len(items)
    return np.concatenate([np.ones((n, 1)), items, items * u[:m], items * u[m:2 * m],
                           (items[:, None, :] * dayparts[None, :, None]).reshape(n, -1)], 1)


def bandit_dim(m: int) -> int:
    return 1 + 3 * m + 4 * m


@dataclass
class BanditPolicy:
    """LinUCB, linear Thompson, epsilon-greedy, popularity or random, behind the serving interface."""

    spec: PolicySpec
    model: Any = None
    clicks: np.ndarray = field(default=None)
    shows: np.ndarray = field(default=None)

    _MC_SEED = 20221121  # the posterior draws position_probabilities uses

    def __post_init__(self):
        a, d = self.spec.algorithm, bandit_dim(self.spec.m)
        if self.model is None and a in ("linucb", "thompson", "egreedy"):
            self.model = {"linucb": lambda: LinUCB(dim=d, alpha=self.spec.alpha),
                          "thompson": lambda: LinearThompson(dim=d, draws=self.spec.draws),
                          "egreedy": lambda: EpsilonGreedy(dim=d, epsilon=self.spec.epsilon)}[a]()
        if self.clicks is None:
            self.clicks = np.zeros(self.spec.num_rows)
            self.shows = np.zeros(self.spec.num_rows)

    @property
    def algorithm(self) -> str:
        return self.spec.algorithm

    def scores(self, obs: Observation, rng: np.random.Generator | None = None) -> np.ndarray:
        a = self.spec.algorithm
        if a == "popularity":
            rows = np.clip(obs.rows, 0, len(self.clicks) - 1)
            return (self.clicks[rows] + 0.1) / (self.shows[rows] + 1.0)
        if a == "random":
            return np.zeros(len(obs.rows))
        x = bandit_features(obs)
        if a == "linucb":
            return self.model.scores(x)
        if a == "thompson" and rng is not None:
            return self.model.draw_scores(x, rng, 1)[0]
        return x @ self.model.theta

    def _thompson_slates(self, obs: Observation, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """((1 + draws, K) greedy slates under independent posterior draws, (N,) the first draw's scores)."""
        s = self.model.draw_scores(bandit_features(obs), rng, 1 + self.model.draws)
        sim = obs.similarity() if self.spec.penalty > 0 else None
        return diverse_greedy_batch(s, sim, k, self.spec.penalty), s[0]

    def select(self, obs: Observation, k: int, rng: np.random.Generator):
        n, a = len(obs.rows), self.spec.algorithm
        if a == "random":
            slate = rng.permutation(n)[:k]
            return slate, 1.0 / (n - np.arange(k)), np.zeros(n)
        if a == "thompson":  # serve the first draw's slate; the other draws estimate its probabilities
            slates, s = self._thompson_slates(obs, k, rng)
            return slates[0], prefix_frequencies(slates, slates[0]), s
        s = self.scores(obs, rng)
        greedy = self._greedy(obs, s, k)
        if a != "egreedy":
            return greedy, np.ones(k), s  # deterministic given the state
        slate = rng.permutation(n)[:k] if rng.random() < self.spec.epsilon else greedy
        return slate, self._egreedy_probs(slate, greedy, n, k), s

    def slate_mixture(self, obs: Observation, k: int, rng: np.random.Generator, draws: int = 4):
        """The slate distribution as (slate, weight) pairs: exact for LinUCB and popularity (one
        greedy slate) and for epsilon-greedy's greedy part (its uniform part and Thompson: ``draws``
        samples). What the off-policy direct method averages its model over."""
        a = self.spec.algorithm
        if a in ("linucb", "popularity"):
            return [(self._greedy(obs, self.scores(obs), k), 1.0)]
        if a == "egreedy":
            eps, n = self.spec.epsilon, len(obs.rows)
            return ([(self._greedy(obs, self.scores(obs), k), 1.0 - eps)]
                    + [(rng.permutation(n)[:k], eps / draws) for _ in range(draws)])
        if a == "thompson":
            slates, _ = self._thompson_slates(obs, k, rng)
            return [(sl, 1.0 / draws) for sl in slates[:draws]]
        return [(self.select(obs, k, rng)[0], 1.0 / draws) for _ in range(draws)]

    def _greedy(self, obs: Observation, scores: np.ndarray, k: int) -> np.ndarray:
        """(K,) the deterministic slate for these scores (the diversity penalty applied)."""
        sim = obs.similarity() if self.spec.penalty > 0 else None
        return diverse_greedy(scores, sim, k, self.spec.penalty)

    def _egreedy_probs(self, slate, greedy, n, k):
        return egreedy_position_probs(slate, greedy, n, self.spec.epsilon)

    def position_probabilities(self, obs: Observation, slate: np.ndarray) -> np.ndarray:
        """(K,) probability of each item of ``slate`` given the items above it (product: the slate's).

        Deterministic policies (LinUCB, popularity): 1 down to the first position where ``slate``
        leaves the greedy slate, 0 from there. Thompson: estimated from ``draws`` posterior draws
        (a fixed stream, so one version gives one answer)."""
        n, k, a = len(obs.rows), len(slate), self.spec.algorithm
        if a == "random":
            return 1.0 / (n - np.arange(k))
        slate = np.asarray(slate)
        if a == "thompson":
            slates, _ = self._thompson_slates(obs, k, np.random.default_rng(self._MC_SEED))
            return prefix_frequencies(slates, slate, include_target=False)
        greedy = self._greedy(obs, self.scores(obs), k)
        if a == "egreedy":
            return self._egreedy_probs(slate, greedy, n, k)
        return np.cumprod(slate == greedy).astype(np.float64)

    def slate_probability(self, obs: Observation, slate: np.ndarray) -> float:
        return float(np.prod(self.position_probabilities(obs, slate)))

    def update(self, obs: Observation, slate: np.ndarray, clicks: np.ndarray) -> None:
        """Learn from one logged slate: (K,) candidate indices and (K,) click values."""
        self.update_batch([obs], [slate], [clicks])

    def update_batch(self, observations, slates, clicks) -> None:
        """``update`` on every logged slate at once: B observations, (B, K) slates and (B, K) clicks
        (the linear model's update_many: the same state, one inversion instead of B * K rank-one steps)."""
        slates, clicks = np.asarray(slates), np.asarray(clicks, float)
        if len(slates) == 0:
            return
        rows = np.concatenate([o.rows[s] for o, s in zip(observations, slates)])
        np.add.at(self.shows, np.clip(rows, 0, len(self.shows) - 1), 1.0)
        np.add.at(self.clicks, np.clip(rows, 0, len(self.clicks) - 1), clicks.reshape(-1) > 0)
        if isinstance(self.model, _Linear):
            x = np.concatenate([bandit_features(o)[s] for o, s in zip(observations, slates)])
            self.model.update_many(x, (clicks.reshape(-1) > 0).astype(np.float64))

    def state(self) -> dict[str, np.ndarray]:
        out = {"clicks": self.clicks.copy(), "shows": self.shows.copy()}
        if isinstance(self.model, _Linear):
            out.update(self.model.state())
        return out

    @staticmethod
    def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
        out = {"clicks": (spec.num_rows,), "shows": (spec.num_rows,)}
        if spec.algorithm in ("linucb", "thompson", "egreedy"):
            d = bandit_dim(spec.m)
            out.update({"a_inv": (d, d), "b": (d,)})
        return out

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> "BanditPolicy":
        self.clicks = np.asarray(tensors["clicks"], np.float64).copy()
        self.shows = np.asarray(tensors["shows"], np.float64).copy()
        if isinstance(self.model, _Linear):
            self.model.a_inv = np.asarray(tensors["a_inv"], np.float64).copy()
            self.model.b = np.asarray(tensors["b"], np.float64).copy()
        return self


def expected_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a published version of ``spec`` holds: the policy's, plus the (D, m) projection."""
    own = NeuralPolicy.expected_shapes(spec) if spec.algorithm == "ppo" else BanditPolicy.expected_shapes(spec)
    return {**own, "projection": (spec.text_dim, spec.m)}


def make_policy(spec: PolicySpec, module_state: Mapping[str, Any] | None = None):
    """A fresh policy of ``spec`` (the neural one needs its module's initial state)."""
    if spec.algorithm == "ppo":
        if module_state is None:
            raise ValueError("the ppo policy is built from an RLlib module state (rl.ppo.SlateLearner)")
        return NeuralPolicy(spec, SlateScorer.from_module_state(spec.layout, module_state))
    return BanditPolicy(spec)


def policy_from_state(spec: PolicySpec, tensors: Mapping[str, np.ndarray], explore: bool = True):
    """Rebuild a serving policy from published tensors (shapes already checked by rl.weights.unpack)."""
    own = {k: v for k, v in tensors.items() if k != "projection"}
    if spec.algorithm == "ppo":
        return NeuralPolicy(spec, SlateScorer(spec.layout, {k: np.asarray(v, np.float32) for k, v in own.items()}),
                            explore)
    return BanditPolicy(spec).load_state(own)


assert CONTEXT_DIM == 8  # bandit_features reads the dayparts at user[2m+2 : 2m+6]
