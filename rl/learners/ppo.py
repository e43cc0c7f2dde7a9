"""PPO on logged slates with RLlib's new API stack: the route from TrainingSamples to an RLlib Learner.

Each logged impression is a one-step episode: observation = the serving-time policy input,
action = the slate (K candidate indices), reward = position-weighted typed rewards + lambda * ILD,
and the behaviour policy's log-probability of that slate in ``extra_model_outputs``.
We build only RLlib's LearnerGroup (``PPOConfig.build_learner_group``) and feed it those
episodes with ``learner_group.update(episodes=...)``: RLlib's own learner connectors add the
value estimates and one-step GAE advantages (r - V(s)), and PPO's clipped loss uses
``exp(logp_new - logp_behaviour)``. There are no EnvRunners and no simulator on this path:
the serving fleet is the rollout worker, Kafka the queue.

    learner = SlateLearner(spec, PPOHyper(lr=1e-3))
    metrics = learner.update(batch)                 # a LoggedBatch
    policy = learner.serving_policy()               # rl.neural.NeuralPolicy (numpy)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rl.learners.module import SlateScorerModule, module_spaces
from rl.logged_batch import LoggedBatch
from rl.neural import NeuralPolicy, SlateScorer
from rl.spec import PolicySpec
from rl.weights import WeightsError, pack, unpack
from streamrec.storage import Location

__all__ = ["PPOHyper", "SlateLearner", "CHECKPOINT_WEIGHTS", "CHECKPOINT_RECORD"]

CHECKPOINT_WEIGHTS = "module.safetensors"
CHECKPOINT_RECORD = "learner.json"


@dataclass(frozen=True)
class PPOHyper:
    """PPO's knobs for logged one-step slates."""

    lr: float = 1e-3
    """Adam learning rate."""
    num_epochs: int = 4
    """Passes over each logged batch."""
    minibatch_size: int = 256
    clip_param: float = 0.2
    """Ratio clip: the update stays near the behaviour policy, which keeps the logged propensities useful."""
    entropy_coeff: float = 0.0
    """Bonus on the first position's entropy (exploration is the serving temperature's job)."""
    vf_loss_coeff: float = 0.5
    seed: int = 0
    num_learners: int = 0
    """0: the learner runs in this process; n >= 1: n remote RLlib Learner actors."""
    gpus_per_learner: float = 0.0


class SlateLearner:
    """An RLlib PPO LearnerGroup holding one :class:`rl.learners.module.SlateScorerModule`: local, or
    ``hyper.num_learners`` remote Learner actors (the weights are read from and set on the group)."""

    def __init__(self, spec: PolicySpec, hyper: PPOHyper = PPOHyper()):
        if spec.algorithm != "ppo":
            raise ValueError(f"SlateLearner trains the ppo policy, not {spec.algorithm!r}")
        torch.manual_seed(hyper.seed)
        self.spec, self.hyper = spec, hyper
        self.obs_space, self.act_space = module_spaces(spec.layout, spec.slate_size)
        model_config = {"m": spec.m, "num_candidates": spec.num_candidates, "slate_size": spec.slate_size,
                        "num_rows": spec.num_rows, "hidden": spec.hidden, "embed": spec.embed,
                        "id_dim": spec.id_dim, "temperature": spec.temperature, "penalty": spec.penalty}
        self.model_config = model_config
        config = (
            PPOConfig()
            .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
            .environment(observation_space=self.obs_space, action_space=self.act_space)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=SlateScorerModule, model_config=model_config))
            .training(lr=hyper.lr, num_epochs=hyper.num_epochs, minibatch_size=hyper.minibatch_size,
                      clip_param=hyper.clip_param, entropy_coeff=hyper.entropy_coeff,
                      vf_loss_coeff=hyper.vf_loss_coeff, use_kl_loss=False, gamma=1.0, lambda_=1.0,
                      train_batch_size_per_learner=hyper.minibatch_size)
            .learners(num_learners=hyper.num_learners, num_gpus_per_learner=hyper.gpus_per_learner)
            .debugging(seed=hyper.seed)
        )
        self.group = config.build_learner_group()
        self.updates = 0

    def _episodes(self, batch: LoggedBatch) -> list:
        n = self.spec.num_candidates
        di = batch.dist_inputs if batch.dist_inputs is not None else np.zeros((len(batch), n), np.float32)
        if self.spec.penalty > 0 and di.shape[1] == n:  # the distribution also reads the candidates' features
            _, items, _ = self.spec.layout.split(batch.obs)
            di = np.concatenate([di, items.reshape(len(batch), -1)], 1)
        eps = []
        for i in range(len(batch)):
            eps.append(SingleAgentEpisode(
                observations=[batch.obs[i], batch.obs[i]], actions=[batch.actions[i].astype(np.int64)],
                rewards=[float(batch.rewards[i])], terminated=True,
                extra_model_outputs={Columns.ACTION_LOGP: [np.float32(batch.logp[i])],
                                     Columns.ACTION_DIST_INPUTS: [di[i].astype(np.float32)]},
                observation_space=self.obs_space, action_space=self.act_space, len_lookback_buffer=0))
        return eps

    def update(self, batch: LoggedBatch) -> dict[str, float]:
        """One PPO update (num_epochs over the batch in minibatches); returns the learner's figures."""
        if len(batch) == 0:
            return {}
        results = self.group.update(episodes=self._episodes(batch), num_epochs=self.hyper.num_epochs,
                                    minibatch_size=min(self.hyper.minibatch_size, len(batch)))
        self.updates += 1
        return _flatten_results(results)

    def module_state(self) -> dict[str, np.ndarray]:
        """The module's tensors as float32 arrays (what ``rl.policies.SlateScorer`` converts)."""
        w = self.group.get_weights()
        state = w.get("default_policy", w)
        return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
                for k, v in state.items()}

    def set_module_state(self, state: dict[str, np.ndarray]) -> None:
        self.group.set_weights({"default_policy": {k: torch.as_tensor(v) for k, v in state.items()}})

    def module(self) -> SlateScorerModule:
        """A torch copy of the learner's network with its current weights (for checks beside the serving model)."""
        m = SlateScorerModule(observation_space=self.obs_space, action_space=self.act_space,
                              model_config=self.model_config)
        m.load_state_dict({k: torch.as_tensor(v) for k, v in self.module_state().items()})
        return m.eval()

    def serving_policy(self, explore: bool = True) -> NeuralPolicy:
        return NeuralPolicy(self.spec, SlateScorer.from_module_state(self.spec.layout, self.module_state()), explore)

    def save(self, where: str) -> None:
        """Checkpoint for crash recovery at ``where`` (a path or a URI: streamrec.storage): the whole
        module (value head included) as safetensors, and a JSON record with its sha256, written
        last. No pickle: a restore reads tensors and JSON only. The optimizer's moments are not
        kept (Adam starts fresh after a restore)."""
        out = Location(where)
        blob, sha = pack(self.module_state())
        out.write_bytes(CHECKPOINT_WEIGHTS, blob)
        out.write_json(CHECKPOINT_RECORD, {"sha256": sha, "updates": self.updates, "spec": self.spec.to_dict()})

    def restore(self, where: str) -> None:
        """Load a checkpoint :meth:`save` wrote; raises WeightsError (naming what is wrong) for a
        missing, tampered or foreign one. Nothing in it is unpickled."""
        d = Location(where)
        try:
            record = d.read_json(CHECKPOINT_RECORD)
            blob = d.read_bytes(CHECKPOINT_WEIGHTS)
        except (OSError, ValueError) as e:
            raise WeightsError(f"learner checkpoint at {d.uri} is unreadable: {e}") from None
        if not isinstance(record, dict) or record.get("spec") != self.spec.to_dict():
            raise WeightsError(f"learner checkpoint at {d.uri} was written for another policy spec")
        state = self.module_state()
        tensors = unpack(blob, sha256=record.get("sha256"), expect={k: v.shape for k, v in state.items()})
        self.set_module_state(tensors)
        self.updates = int(record.get("updates", 0))

    def shutdown(self) -> None:
        self.group.shutdown()


def _flatten_results(results: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(results, list):
        results = results[-1] if results else {}

    def walk(prefix: str, d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            try:
                v = d.peek() if hasattr(d, "peek") else d
                out[prefix] = float(v)
            except (TypeError, ValueError):
                pass

    walk("", results.get("default_policy", results) if isinstance(results, dict) else {})
    return out
