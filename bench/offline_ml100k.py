"""Offline ML-100K with RecBole's protocol: the policy's ranker next to BPR and popularity on the same split.

    python -m bench.offline_ml100k [--data ../shared/data/ml-100k] [--seeds 0 1 2]

Protocol (RecBole's published setting): every rating is a positive; each user's interactions are
split at random 8:1:1 (train / valid / test); every item is ranked for every user (full ranking),
items seen in train (and valid) masked out; Recall@10 and NDCG@10 over test.

"The policy's ranker" is the network PPO trains online (rl.learners.module.SlateScorerModule): a user's
profile is the pooled text vectors of their training items (streamrec.profile.pool_profile,
as serving does), scored against every item's text vector, learnable item-id embedding and
bias. Offline it is warm-started with a softmax loss over all items (each user's training
items are the positives), which is how the online policy would be pre-trained from a log; each
step pools the profile from 30% of the user's training items (``--input-dropout 0.7``), so the
network learns to find held-out items from part of a history, as it must when serving. Adam at
3e-3 decays to 0 over the 100 epochs (half a cosine, ``--lr-schedule``); the epoch is picked on
the valid split's NDCG@10 (checked every 5).

The peer, "BPR", is matrix factorisation with the BPR loss in RecBole's default setting (64-dim
embeddings, Xavier init, one uniform negative per positive from the user's unseen items, Adam
lr 1e-3, batch 2048, early stop after 10 epochs without a better valid NDCG@10), trained on
the same split in the same run. Prints one JSON line per model and split, RecBole's published
BPR figure, and the means over splits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

BPR_REFERENCE = {"model": "BPR (RecBole, published)", "recall@10": 0.2523, "ndcg@10": 0.292}


def split_8_1_1(users: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n,) 0 train / 1 valid / 2 test, drawn per user at random in proportion 8:1:1 (RecBole's RS)."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(users), np.int8)
    for u in np.unique(users):
        idx = np.flatnonzero(users == u)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_train = int(round(n * 0.8))
        n_valid = int(round(n * 0.1))
        part[idx[n_train:n_train + n_valid]] = 1
        part[idx[n_train + n_valid:]] = 2
    return part


def evaluate(scores: np.ndarray, masked: list[set], relevant: list[set], k: int = 10) -> dict:
    """Full-ranking Recall@k and NDCG@k (scores: (U, I); masked items never ranked)."""
    from rl.metrics import ndcg_at_k, recall_at_k

    rec, ndcg = [], []
    for u in range(len(scores)):
        if not relevant[u]:
            continue
        s = scores[u].copy()
        if masked[u]:
            s[list(masked[u])] = -np.inf
        top = np.argpartition(-s, k)[:k]
        top = top[np.argsort(-s[top])]
        rec.append(recall_at_k(top.tolist(), relevant[u], k))
        ndcg.append(ndcg_at_k(top.tolist(), relevant[u], k))
    return {"recall@10": round(float(np.mean(rec)), 4), "ndcg@10": round(float(np.mean(ndcg)), 4), "users": len(rec)}


def train_ranker(item_vecs, train_items_by_user, epochs: int, m: int = 32, lr: float = 3e-3, seed: int = 0,
                 progress: bool = True, validate=None, every: int = 5, hidden: int = 128, embed: int = 64,
                 id_dim: int = 32, weight_decay: float = 0.0, input_dropout: float = 0.0, cosine: bool = False):
    """Warm-start the policy's network (SlateScorerModule) with a full softmax over all items.

    ``input_dropout``: each training step pools a user's profile from a random share ``1 -
    input_dropout`` of their training items (at least one), as a denoising autoencoder drops
    inputs: the network learns to rank every held item from part of the history, which is what it
    faces at serving time (the items it should find are never in the profile). Scoring pools all.

    ``validate(scores) -> float`` (the valid split's NDCG@10) picks the epoch whose scores are
    returned, as RecBole's early stopping does. ``cosine``: the learning rate decays from ``lr`` to 0
    over the epochs (half a cosine) instead of staying constant.
    """
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rl.features import CONTEXT_DIM, Featurizer, fit_projection
    from rl.learners.module import SlateScorerModule, module_spaces
    from rl.spec import PolicySpec
    from streamrec.profile import pool_profile

    torch.manual_seed(seed)
    n_items = len(item_vecs)
    fz = Featurizer(np.arange(n_items).astype(str), item_vecs, fit_projection(item_vecs, m, seed=seed))
    spec = PolicySpec("ppo", m=m, num_candidates=n_items, slate_size=10, num_rows=n_items + 1,
                      text_dim=item_vecs.shape[1], hidden=hidden, embed=embed, id_dim=id_dim)
    obs_space, act_space = module_spaces(spec.layout, spec.slate_size)
    module = RLModuleSpec(module_class=SlateScorerModule, observation_space=obs_space, action_space=act_space,
                          model_config={"m": m, "num_candidates": n_items, "slate_size": 10, "num_rows": n_items + 1,
                                        "hidden": hidden, "embed": embed, "id_dim": id_dim}).build()
    users = sorted(train_items_by_user)
    ctx = np.zeros(CONTEXT_DIM, np.float32)
    ctx[7] = 1.0
    user_feats = np.stack([fz.user_features(pool_profile(item_vecs[sorted(train_items_by_user[u])],
                                                         np.zeros(len(train_items_by_user[u])), 1.0), None, ctx)
                           for u in users])
    items = torch.as_tensor(fz.projected)
    rows = torch.arange(1, n_items + 1).float()
    targets = torch.zeros(len(users), n_items)
    for r, u in enumerate(users):
        targets[r, sorted(train_items_by_user[u])] = 1.0
    uf = torch.as_tensor(user_feats)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if cosine else None
    text = torch.as_tensor(np.asarray(item_vecs, np.float32))
    projection = torch.as_tensor(fz.projection)
    gen = torch.Generator().manual_seed(seed)

    def obs_for(b, user=None):
        n = len(b)
        return torch.cat([uf[b] if user is None else user, items.reshape(1, -1).expand(n, -1), rows.expand(n, -1)], 1)

    def dropped_users(b):
        """(len(b), U) user features pooled from a random part of each user's training items."""
        held = targets[b]
        keep = held * (torch.rand(held.shape, generator=gen) >= input_dropout)
        keep = torch.where(keep.sum(1, keepdim=True) > 0, keep, held)
        pooled = keep @ text / keep.sum(1, keepdim=True)
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.cat([pooled @ projection, uf[b, m:]], 1)

    def all_scores():
        with torch.no_grad():
            return torch.cat([module.scores(obs_for(torch.as_tensor(b)))
                              for b in np.array_split(np.arange(len(users)), max(1, len(users) // 64))]).numpy()

    rng = np.random.default_rng(seed)
    best = (-1.0, None, -1)
    for epoch in range(epochs):
        total = 0.0
        for b in np.array_split(rng.permutation(len(users)), max(1, len(users) // 64)):
            b = torch.as_tensor(b)
            logp = torch.log_softmax(module.scores(obs_for(b, dropped_users(b) if input_dropout > 0 else None)), -1)
            loss = -(logp * targets[b]).sum(1).div(targets[b].sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        if schedule is not None:
            schedule.step()
        if validate is not None and (epoch % every == every - 1 or epoch == epochs - 1):
            scores = all_scores()
            v = validate(scores)
            if v > best[0]:
                best = (v, scores, epoch)
            if progress:
                print(f"  epoch {epoch}: loss {total:.3f}, valid ndcg@10 {v:.4f}", file=sys.stderr, flush=True)
    if best[1] is None:
        return users, all_scores(), epochs - 1
    return users, best[1], best[2]


def train_bpr(train_items_by_user, n_items: int, validate=None, epochs: int = 300, dim: int = 64,
              lr: float = 1e-3, batch: int = 2048, patience: int = 10, seed: int = 0):
    """BPR-MF (Rendle et al. 2009) as RecBole trains it; returns (users, (U, I) scores, best epoch).

    Each epoch pairs every training interaction with one item the user has not interacted with
    in training, drawn uniformly; the loss is ``-log sigmoid(s(u, pos) - s(u, neg))`` with
    ``s(u, i) = <p_u, q_i>``. ``validate(scores) -> float`` picks the epoch (checked every epoch).
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users = sorted(train_items_by_user)
    u_idx = np.concatenate([np.full(len(train_items_by_user[u]), r) for r, u in enumerate(users)])
    i_idx = np.concatenate([sorted(train_items_by_user[u]) for u in users])
    seen = np.zeros((len(users), n_items), bool)
    seen[u_idx, i_idx] = True
    p = torch.nn.Embedding(len(users), dim)
    q = torch.nn.Embedding(n_items, dim)
    torch.nn.init.xavier_normal_(p.weight)
    torch.nn.init.xavier_normal_(q.weight)
    opt = torch.optim.Adam([p.weight, q.weight], lr=lr)

    def negatives(u):
        neg = rng.integers(0, n_items, len(u))
        while (redo := seen[u, neg]).any():
            neg[redo] = rng.integers(0, n_items, int(redo.sum()))
        return neg

    def all_scores():
        with torch.no_grad():
            return (p.weight @ q.weight.T).numpy()

    best, since = (-1.0, None, -1), 0
    for epoch in range(epochs):
        order = rng.permutation(len(u_idx))
        for start in range(0, len(order), batch):
            b = order[start:start + batch]
            u = torch.as_tensor(u_idx[b])
            pu = p(u)
            pos = (pu * q(torch.as_tensor(i_idx[b]))).sum(1)
            neg = (pu * q(torch.as_tensor(negatives(u_idx[b])))).sum(1)
            loss = -torch.nn.functional.logsigmoid(pos - neg).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if validate is None:
            continue
        scores = all_scores()
        v = validate(scores)
        if v > best[0]:
            best, since = (v, scores, epoch), 0
        else:
            since += 1
            if since >= patience:
                break
    if best[1] is None:
        return users, all_scores(), epochs - 1
    return users, best[1], best[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/ml-100k")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="one random 8:1:1 split (and training seed) each; with several, the mean is printed last")
    ap.add_argument("--m", type=int, default=128, help="projected text dimension (policy.feature_dim)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--id-dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                    help="cosine: the learning rate decays to 0 over the epochs (the valid NDCG@10 settles)")
    ap.add_argument("--input-dropout", type=float, default=0.7,
                    help="share of a user's training items left out of each training step's profile")
    args = ap.parse_args(argv)
    from streamrec.data.movielens import load_movielens
    from streamrec.encoder import TextEncoder

    t0 = time.monotonic()
    cat = load_movielens(args.data)
    item_ids = cat.items.column("item_id").to_pylist()
    row = {i: r for r, i in enumerate(item_ids)}
    inter = cat.interactions
    users = np.asarray(inter.column("user_id").to_pylist())
    items = np.asarray([row[i] for i in inter.column("item_id").to_pylist()])
    uids = sorted(set(users.tolist()))
    vecs = TextEncoder().encode(cat.items.column("text").to_pylist())
    recipe = {"m": args.m, "hidden": args.hidden, "embed": args.embed, "id_dim": args.id_dim, "lr": args.lr,
              "weight_decay": args.weight_decay, "input_dropout": args.input_dropout,
              "cosine": args.lr_schedule == "cosine"}
    protocol = {"protocol": "RecBole RS 8:1:1, full ranking, all ratings positive"}
    print(json.dumps({**BPR_REFERENCE, **protocol}), flush=True)
    ours, bprs = [], []
    for seed in args.seeds:
        part = split_8_1_1(users, seed)
        by = {p: {u: set() for u in uids} for p in (0, 1, 2)}
        for u, i, p in zip(users, items, part):
            by[int(p)][u].add(int(i))
        masked = [by[0][u] | by[1][u] for u in uids]
        relevant = [by[2][u] for u in uids]
        pop = np.bincount(items[part == 0], minlength=len(item_ids)).astype(float)
        print(json.dumps({"model": "popularity", "seed": seed, **evaluate(np.tile(pop, (len(uids), 1)), masked, relevant),
                          **protocol}), flush=True)
        train_only = [by[0][u] for u in uids]
        valid = [by[1][u] for u in uids]
        pick = lambda s: evaluate(s, train_only, valid)["ndcg@10"]  # noqa: E731
        bpr_users, bpr_scores, bpr_epoch = train_bpr(by[0], len(item_ids), validate=pick, seed=seed)
        assert bpr_users == uids
        bprs.append(evaluate(bpr_scores, masked, relevant))
        print(json.dumps({"model": "BPR (same split)", "seed": seed, **bprs[-1], "best_valid_epoch": bpr_epoch,
                          **protocol}), flush=True)
        ranked_users, scores, best_epoch = train_ranker(
            vecs, by[0], args.epochs, seed=seed, validate=pick, **recipe)
        assert ranked_users == uids
        ours.append(evaluate(scores, masked, relevant))
        print(json.dumps({"model": "streamrec policy ranker (SlateScorerModule, softmax warm start)", "seed": seed,
                          **ours[-1], "epochs": args.epochs, "best_valid_epoch": best_epoch, **recipe, **protocol}), flush=True)
    if len(ours) > 1:
        for name, runs in (("streamrec policy ranker", ours), ("BPR (same split)", bprs)):
            print(json.dumps({"model": f"{name}, mean over splits", "seeds": args.seeds,
                              **{k: round(float(np.mean([o[k] for o in runs])), 4) for k in ("recall@10", "ndcg@10")},
                              **protocol}), flush=True)
    print(json.dumps({"seconds": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
