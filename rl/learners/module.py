"""The neural slate policy for RLlib's new API stack: the network (RLModule) and its slate distribution.

:class:`SlateScorerModule` is the network only. It scores each of N candidates from the
observation laid out by :class:`rl.features.ObsLayout`::

    user (B, U) --MLP--> u (B, h)           items (B, N, m) ++ id-embedding (B, N, e) --Linear--> v (B, N, h)
    score (B, N) = <u, v> + a * <profile, item> + b * <context text, item> + item bias[row]
    value (B,)   = MLP(user)                (PPO's critic: the expected slate reward)

The action distribution is :class:`DiversePlackettLuce`: a slate of K drawn without
replacement, the logit of item i at position j being ``(score_i - penalty * max sim(i, placed)) / T``
(cosine similarity of the candidates' projected text vectors, carried in the distribution inputs).
Its ``logp`` is exact and equals :func:`rl.slate.plackett_luce_logp` (tested), which is what the
serving side logs, so PPO's ratios compare like with like. ``entropy``/``kl`` are those of the
first position (exact ones over slates are intractable); PPO here runs with ``use_kl_loss=False``.

The serving model is a different object (:class:`rl.neural.SlateScorer`, numpy), converted from
this module's state dict; the conversion is tested for equal scores.
"""

from __future__ import annotations

from typing import Any, Dict

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.distribution import Distribution
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from rl.features import ObsLayout

__all__ = ["DiversePlackettLuce", "SlateScorerModule", "module_spaces", "MODEL_DEFAULTS"]

#: model_config keys and defaults (m, num_candidates, slate_size and num_rows come from the featurizer)
MODEL_DEFAULTS: dict[str, Any] = {"hidden": 64, "embed": 32, "id_dim": 8, "temperature": 1.0, "penalty": 0.0}


def module_spaces(layout: ObsLayout, slate_size: int) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of one impression: a flat Box and K candidate indices."""
    obs = gym.spaces.Box(-np.inf, np.inf, (layout.size,), np.float32)
    act = gym.spaces.MultiDiscrete([layout.num_candidates] * slate_size)
    return obs, act


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class DiversePlackettLuce(Distribution):
    """Plackett-Luce over N candidates with a diversity penalty; inputs are [logits (N) | features (N*m)]."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor | None, slate_size: int, penalty: float):
        super().__init__()
        self.logits = logits                      # (B, N), already divided by the temperature
        self.sim = None
        if penalty > 0 and features is not None:
            u = _unit(features)
            self.sim = u @ u.transpose(-1, -2)    # (B, N, N)
        self.k = slate_size
        self.penalty = penalty

    @classmethod
    def from_logits(cls, logits: torch.Tensor, num_candidates: int = 0, slate_size: int = 1, penalty: float = 0.0,
                    **kwargs) -> "DiversePlackettLuce":
        n = num_candidates or logits.shape[-1]
        feats = None
        if logits.shape[-1] > n:
            feats = logits[..., n:].reshape(*logits.shape[:-1], n, -1)
        return cls(logits[..., :n], feats, slate_size, penalty)

    def _step_logits(self, max_sim: torch.Tensor, placed: torch.Tensor) -> torch.Tensor:
        z = self.logits - self.penalty * max_sim if self.sim is not None else self.logits
        return z.masked_fill(placed, float("-inf"))

    def _walk(self, actions: torch.Tensor | None):
        b, n = self.logits.shape
        placed = torch.zeros(b, n, dtype=torch.bool, device=self.logits.device)
        max_sim = torch.zeros(b, n, device=self.logits.device)
        logps, picks = [], []
        rows = torch.arange(b, device=self.logits.device)
        for j in range(self.k):
            z = self._step_logits(max_sim, placed)
            logp_all = torch.log_softmax(z, -1)
            if actions is None:
                a = torch.multinomial(logp_all.exp(), 1).squeeze(-1)
            else:
                a = actions[:, j].long()
            picks.append(a)
            logps.append(logp_all[rows, a])
            placed = placed.clone()
            placed[rows, a] = True
            if self.sim is not None:
                s = self.sim[rows, a]                               # (B, N)
                max_sim = s if j == 0 else torch.maximum(max_sim, s)
        return torch.stack(picks, -1), torch.stack(logps, -1)

    def logp(self, value: torch.Tensor, **kwargs) -> torch.Tensor:
        """(B,) log-probability of (B, K) slates."""
        return self._walk(value)[1].sum(-1)

    def position_logp(self, value: torch.Tensor) -> torch.Tensor:
        """(B, K) log-probability of each slate item at its position."""
        return self._walk(value)[1]

    @torch.no_grad()
    def sample(self, *, sample_shape=None, **kwargs) -> torch.Tensor:
        return self._walk(None)[0]

    def rsample(self, *, sample_shape=None, **kwargs):
        raise NotImplementedError("slates are discrete: no reparameterised sample")

    def entropy(self, **kwargs) -> torch.Tensor:
        p = torch.log_softmax(self.logits, -1)
        return -(p.exp() * p).sum(-1)

    def kl(self, other: "DiversePlackettLuce", **kwargs) -> torch.Tensor:
        p = torch.log_softmax(self.logits, -1)
        q = torch.log_softmax(other.logits, -1)
        return (p.exp() * (p - q)).sum(-1)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        return int(space.nvec[0])

    def to_deterministic(self):
        raise NotImplementedError("serving takes the greedy slate with rl.slate.greedy_slate")


class SlateScorerModule(TorchRLModule, ValueFunctionAPI):
    """Scores candidates and gives a DiversePlackettLuce over slates; model_config: see MODEL_DEFAULTS."""

    def setup(self):
        c = {**MODEL_DEFAULTS, **(self.model_config or {})}
        self.layout = ObsLayout(int(c["m"]), int(c["num_candidates"]))
        self.slate_size = int(c["slate_size"])
        self.temperature = float(c["temperature"])
        self.penalty = float(c["penalty"])
        m, h, e = self.layout.m, int(c["hidden"]), int(c["embed"])
        self.user_tower = nn.Sequential(nn.Linear(self.layout.user_dim, h), nn.ReLU(), nn.Linear(h, e))
        self.id_embedding = nn.Embedding(int(c["num_rows"]), int(c["id_dim"]))
        self.item_bias = nn.Embedding(int(c["num_rows"]), 1)
        self.item_tower = nn.Linear(m + int(c["id_dim"]), e)
        self.content_weights = nn.Parameter(torch.tensor([1.0, 0.5]))   # a * <profile, item>, b * <text, item>
        self.value_head = nn.Sequential(nn.Linear(self.layout.user_dim, h), nn.ReLU(), nn.Linear(h, 1))
        nn.init.zeros_(self.item_bias.weight)
        nn.init.normal_(self.id_embedding.weight, std=0.01)

    # -- the network ---------------------------------------------------------------------------
    def scores(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, N) candidate scores of (B, size) observations."""
        user, items, rows = self.layout.split(obs)
        rows = rows.long()
        m = self.layout.m
        u = self.user_tower(user)                                                   # (B, e)
        v = self.item_tower(torch.cat([items, self.id_embedding(rows)], -1))        # (B, N, e)
        content = (self.content_weights[0] * (user[:, None, :m] * items).sum(-1)
                   + self.content_weights[1] * (user[:, None, m:2 * m] * items).sum(-1))
        return (v * u[:, None, :]).sum(-1) + content + self.item_bias(rows).squeeze(-1)

    def dist_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, N + N*m): logits / T, then the candidates' features for the diversity penalty."""
        logits = self.scores(obs) / self.temperature
        if self.penalty <= 0:
            return logits
        _, items, _ = self.layout.split(obs)
        return torch.cat([logits, items.reshape(obs.shape[0], -1)], -1)

    def _forward(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.dist_inputs(batch[Columns.OBS])}

    def compute_values(self, batch: Dict[str, Any], embeddings=None) -> torch.Tensor:
        user, _, _ = self.layout.split(batch[Columns.OBS])
        return self.value_head(user).squeeze(-1)

    def _dist_cls(self):
        # the inputs are already logits / T, so the penalty is divided by T here
        return DiversePlackettLuce.get_partial_dist_cls(
            num_candidates=self.layout.num_candidates, slate_size=self.slate_size,
            penalty=self.penalty / self.temperature)

    def get_train_action_dist_cls(self):
        return self._dist_cls()

    def get_exploration_action_dist_cls(self):
        return self._dist_cls()

    def get_inference_action_dist_cls(self):
        return self._dist_cls()
