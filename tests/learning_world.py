"""A small learning world shared by the trainer-loop and learning tests: items, a simulated
population, trainer settings, and samples served by the real ranking code."""

from __future__ import annotations

import uuid

import numpy as np

from rl.simulators import SyntheticUsers
from streamrec.config import settings_from_args
from streamrec.events import TrainingSample

__all__ = ["world", "trainer_settings", "served_samples"]


def world(n_items=300, n_users=100, topics=6, dim=24, seed=0):
    """Items as noisy topic centroids (unit vectors) and a simulator whose users like topics."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(topics, dim))
    main = rng.integers(topics, size=n_items)
    vecs = centroids[main] + 0.3 * rng.normal(size=(n_items, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    item_topics = np.eye(topics)[main]
    taste = rng.dirichlet(np.full(topics, 0.3), size=n_users)
    ids = [f"item{i}" for i in range(n_items)]
    sim = SyntheticUsers(ids, item_topics, main, np.zeros(n_items), [f"user{u}" for u in range(n_users)], taste,
                         rng.integers(15, 70, size=n_users).astype(float), sharpness=6.0, base=-2.5)
    user_vecs = (taste @ centroids).astype(np.float32)
    user_vecs /= np.linalg.norm(user_vecs, axis=1, keepdims=True)
    return ids, vecs, user_vecs, sim


def trainer_settings(tmp_path, algorithm="ppo", **trainer):
    tag = uuid.uuid4().hex[:6]
    return settings_from_args({
        "kafka": {"partitions": 2, "topics": {"impressions": f"lt.imp.{tag}", "feedback": f"lt.fb.{tag}",
                                              "dlq": f"lt.dlq.{tag}", "samples": f"lt.samples.{tag}"}},
        "ingest": {"group_id": f"lt-{tag}", "reward_window_s": 1.0},
        "embedding": {"output_dir": str(tmp_path / f"emb-{tag}")},
        "policy": {"algorithm": algorithm, "slate_size": 3, "num_candidates": 20, "feature_dim": 6,
                   "diversity_lambda": 0.1, "diversity_penalty": 1.0},
        "trainer": {"train_every_s": 0.5, "min_samples": 200, "min_holdout": 1, "store_dir": str(tmp_path / f"store-{tag}"),
                    "group_id": f"lt-trainer-{tag}",
                    "checkpoint_dir": str(tmp_path / f"ckpt-{tag}"), "gate_tolerance": 10.0, **trainer},
    }, env={})


def served_samples(core, sim, user_vecs, n, rng, t0=0):
    out = []
    for e in range(t0, t0 + n):
        u, uid, ctx = sim.sample_user(rng)
        r = core.rank(user_vecs[u], None, ctx, 3, rng, ts=float(e), user_id=uid)
        c = sim.clicks(u, r.items, ctx, rng)
        out.append(TrainingSample(uuid.uuid4().hex, float(e), uid, tuple(r.items), tuple(map(float, r.propensities)),
                                  r.version, tuple(map(float, c)), ctx, r.features.to_dict(), source=("imp", 0, e)))
    return out
