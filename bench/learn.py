"""Learning benchmark: the closed loop through the real actors, one JSON line per policy.

    python -m bench.learn [--impressions 50000] [--policies random,popularity,egreedy,linucb,thompson,ppo]
                          [--lambda-check ppo,linucb]

For each policy, on one embedded broker and one local Ray: simulated users (rl.simulators, the
synthetic population) ask the in-process Ranking for slates; the slate's impression and its
clicks go to Kafka through the EventSink; StreamIngest joins them into samples; the Trainer
actor trains, gates and publishes to the PolicyStore; the clients follow the store like Serve
replicas do. Clients make ``--rate`` impressions per second (default 250: what ingest + trainer keep up with
on 2 cores beside the simulator). CTR is measured on-policy from the simulated clicks; each promoted version's OPE
estimate of CTR is set next to the CTR measured while it served: the mean over its impressions of the
simulator's probability that the slate got a click (the sampled clicks' expectation, reported beside it).
Because users' profiles keep improving from their clicks, a version serves later, richer contexts than
the held-out samples the gate scored it on; so each new version's exact on-policy CTR is also computed
on the ``--cf-contexts`` latest contexts before it went live (what the off-policy estimate targets),
and its error is reported separately from the drift. ``--lambda-check ppo,linucb`` reruns
those policies with diversity lambda = 0 (no ILD reward, no sampling penalty) for the diversity figure.
The offline RecBole-protocol figures on ML-100K are bench/offline_ml100k.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import defaultdict, deque

import numpy as np
import ray

from actors.remote import Blocking
from cluster.broker import ensure_topics, loop_topics, start_embedded_broker, stop_broker
from cluster.loop import start_learning, start_stream
from rl.diversity import ild
from rl.metrics import coverage
from rl.simulators import SyntheticUsers
from serve.follower import PolicyFollower
from serve.ranking import Ranking
from streamrec.config import settings_from_args
from streamrec.data.synthetic import synthetic_items, synthetic_users
from streamrec.eventbus import KafkaEventSink
from streamrec.events import Feedback, Impression, encode
from streamrec.index import ItemIndex
from streamrec.profile import blend_profile


def _settings(algorithm: str, lam: float, penalty: float, args, tmp: str):
    tag = uuid.uuid4().hex[:6]
    return settings_from_args({
        "kafka": {"partitions": 2, "topics": {"impressions": f"l.imp.{tag}", "feedback": f"l.fb.{tag}",
                                              "dlq": f"l.dlq.{tag}", "samples": f"l.samples.{tag}"}},
        "ingest": {"group_id": f"learn-{tag}", "reward_window_s": args.window_s, "parallelism": 1},
        "profile": {"history_length": 50, "half_life_s": 3600.0},
        "policy": {"algorithm": algorithm, "slate_size": args.k, "num_candidates": args.candidates,
                   "diversity_lambda": lam, "diversity_penalty": penalty, "feature_dim": 16},
        "trainer": {"train_every_s": args.train_every_s, "min_samples": 500, "max_batch": 2048, "group_id": f"learn-trainer-{tag}",
                    "store_dir": f"{tmp}/{tag}/policies", "checkpoint_dir": f"{tmp}/{tag}/trainer",
                    "ope_estimator": args.estimator, "dr_weights": args.dr_weights, "gate_tolerance": args.tolerance,
                    "publish_every_s": args.publish_every_s, "min_holdout": args.min_holdout,
                    "min_support": args.min_support,
                    "holdout_window": args.holdout_window, "canary_share": args.canary_share,
                    "canary_samples": args.canary_samples, "keep_versions": 50},
        "catalog": {"num_items": max(1, args.items), "num_users": max(1, args.users)},
    }, env={})


def _embed(items, users):
    from streamrec.encoder import TextEncoder

    enc = TextEncoder()
    return enc.encode(items.column("text").to_pylist()), enc.encode(users.column("text").to_pylist())


def _expected_ctr(core: Ranking, sim, contexts, k: int, rng: np.random.Generator) -> float:
    """The serving policy's exact on-policy CTR on given (user, context, profile) triples: the mean of
    the simulator's slate click probability over slates the policy draws for them (nothing logged)."""
    if not contexts:
        return float("nan")
    return float(np.mean([_slate_ctr(sim.click_probs(u, core.rank(p, None, ctx, k, rng).items, ctx))
                          for u, ctx, p in contexts]))


def _slate_ctr(click_p: np.ndarray) -> float:
    """P(at least one click) on a slate from its (K,) per-item click probabilities."""
    return 1.0 - float(np.prod(1.0 - click_p))


def run_policy(algorithm, lam, penalty, args, world, bootstrap, tmp) -> dict:
    items, users, item_vecs, user_vecs, sim = world
    s = _settings(algorithm, lam, penalty, args, tmp)
    t = s.kafka.topics
    ensure_topics(bootstrap, loop_topics(s.kafka))
    item_ids = items.column("item_id").to_pylist()
    stream = start_stream(s, bootstrap, item_ids, item_vecs, named=False)
    profiles, ingest = stream.profiles, stream.ingest
    learning = start_learning(s, bootstrap, item_ids, item_vecs, named=False, seed=args.seed)
    store, trainer = learning.store, learning.trainer
    follower = PolicyFollower(Blocking(store), item_ids, item_vecs)
    follower.poll()
    index = ItemIndex.build(item_ids, item_vecs)
    cur = follower.current

    def live_core(cur) -> Ranking:  # the live version alone (no canary share)
        return Ranking(cur.featurizer, index, cur.policy, cur.version, s.policy.num_candidates,
                           retrieval_share=args.retrieval_share)

    core = live_core(cur)
    sink = KafkaEventSink(bootstrap, buffer_events=200_000)
    rng = np.random.default_rng(args.seed)
    user_row = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    item_row = {i: r for r, i in enumerate(item_ids)}
    clicks_all, ilds, shown = [], [], []
    by_version = defaultdict(lambda: [0, 0, 0.0])  # impressions as the live version, sampled clicks, expected clicks
    on_canary = defaultdict(int)  # impressions served as a canary (the gate's evidence, not its measurement)
    recent = deque(maxlen=args.cf_contexts)  # (user row, context, profile) of the latest impressions
    on_gate_contexts: dict[str, float] = {}  # version -> its on-policy CTR on the contexts before it
    cf_rng = np.random.default_rng(args.seed + 1)
    started = time.monotonic()
    last_poll = 0.0
    done = 0
    try:
        while done < args.impressions:
            if time.monotonic() - last_poll > 1.0:
                if follower.poll():
                    if follower.current is not cur:
                        cur = follower.current
                        on_gate_contexts[cur.version] = _expected_ctr(live_core(cur), sim, recent,
                                                                           s.policy.slate_size, cf_rng)
                    core.swap(cur.featurizer, cur.policy, cur.version, follower.canary)
                last_poll = time.monotonic()
            tick = [sim.sample_user(rng) for _ in range(min(args.tick, args.impressions - done))]
            uids = [u[1] for u in tick]
            hist = ray.get(profiles.profiles.remote(uids))
            prof = blend_profile(hist, user_vecs[[user_row[u] for u in uids]])
            for (u, uid, ctx), p in zip(tick, prof):
                now = time.time()
                r = core.rank(p, None, ctx, s.policy.slate_size, rng, ts=now, user_id=uid)
                click_p = sim.click_probs(u, r.items, ctx)
                recent.append((u, ctx, p))
                c = (rng.random(len(click_p)) < click_p).astype(np.float64)  # = sim.clicks, probabilities kept
                eid = uuid.uuid4().hex
                sink.send(t.impressions, uid, encode(Impression(
                    eid, now, uid, tuple(r.items), tuple(float(x) for x in r.propensities), r.version, ctx,
                    r.features.to_dict())))
                for item, ci in zip(r.items, c):
                    if ci > 0:
                        sink.send(t.feedback, uid, encode(Feedback(eid, now, uid, item)))
                clicked = float(c.max() > 0)
                clicks_all.append(clicked)
                if r.version == core.version:
                    by_version[r.version][0] += 1
                    by_version[r.version][1] += clicked
                    by_version[r.version][2] += _slate_ctr(click_p)
                else:
                    on_canary[r.version] += 1
                ilds.append(ild(item_vecs[[item_row[i] for i in r.items]]))
                shown.extend(r.items)
            done += len(tick)
            behind = started + done / args.rate - time.monotonic()
            if behind > 0:
                time.sleep(behind)
            if args.progress and done % 5000 < args.tick:
                print(f"  {algorithm} lam={lam}: {done} impressions, CTR {np.mean(clicks_all):.3f}, "
                      f"version {core.version}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        sink.flush(60)
        time.sleep(args.window_s + 2 * args.train_every_s)
        tm = ray.get(trainer.metrics.remote())
        joins = [{k: m[k] for k in ("samples", "joined", "late", "orphans")} for m in ingest.metrics()]
        versions = ray.get(store.versions.remote())
        manifests = [ray.get(store.manifest.remote(v)) for v in versions]
    finally:
        sink.close()
        ingest.stop()
        try:
            ray.get(trainer.stop.remote(), timeout=60)
        except Exception:
            pass
        for a in (trainer, store, profiles):
            ray.kill(a)
    ope_vs_measured = []
    for m in manifests:
        if m.get("stage", "live") != "live":
            continue
        n, c, e = by_version.get(m["version"], (0, 0, 0.0))
        if m.get("ope") and n >= args.min_version_impressions:
            # on-policy CTR of the version: the mean over its impressions of the simulator's probability
            # that the slate got a click (the expectation of the sampled clicks, without their coin-flip
            # noise: +-2% instead of +-4-7% at a few hundred impressions); the sampled CTR sits beside it
            measured = e / n
            row = {"version": m["version"], "ope_ctr": round(m["ope"]["ctr"], 4),
                   "estimator": m["ope"]["estimator"], "measured_ctr": round(measured, 4),
                   "sampled_ctr": round(c / n, 4), "impressions": n,
                   "rel_error": round(abs(m["ope"]["ctr"] - measured) / max(measured, 1e-9), 4),
                   "rel_error_sampled": round(abs(m["ope"]["ctr"] - c / n) / max(c / n, 1e-9), 4)}
            if m.get("ope_canary_samples") is not None:
                row.update({"ope_samples": m["ope_samples"], "ope_canary_samples": m["ope_canary_samples"],
                            "canary_impressions": on_canary.get(m["version"], 0)})
            gate_ctx = on_gate_contexts.get(m["version"])
            if gate_ctx is not None:
                row["on_gate_contexts_ctr"] = round(gate_ctx, 4)
                row["rel_error_on_gate_contexts"] = round(abs(m["ope"]["ctr"] - gate_ctx) / max(gate_ctx, 1e-9), 4)
            ope_vs_measured.append(row)
    tail = clicks_all[-args.tail:]
    errs = np.array([o["rel_error"] for o in ope_vs_measured])
    weights = np.array([o["impressions"] for o in ope_vs_measured], float)
    errs_sampled = np.array([o["rel_error_sampled"] for o in ope_vs_measured])
    errs_ctx = np.array([o["rel_error_on_gate_contexts"] for o in ope_vs_measured if "rel_error_on_gate_contexts" in o])
    ope_summary = ({"versions": len(errs), "within_10pct": round(float((errs <= 0.10).mean()), 3),
                    "within_10pct_on_gate_contexts": round(float((errs_ctx <= 0.10).mean()), 3) if len(errs_ctx) else None,
                    "median_rel_error_on_gate_contexts": round(float(np.median(errs_ctx)), 4) if len(errs_ctx) else None,
                    "within_10pct_of_sampled_ctr": round(float((errs_sampled <= 0.10).mean()), 3),
                    "median_rel_error": round(float(np.median(errs)), 4),
                    "impression_weighted_rel_error": round(float((errs * weights).sum() / weights.sum()), 4)}
                   if len(errs) else None)
    return {"policy": algorithm, "diversity_lambda": lam, "diversity_penalty": penalty,
            "impressions": len(clicks_all), "ctr": round(float(np.mean(clicks_all)), 4),
            f"ctr_last_{args.tail}": round(float(np.mean(tail)), 4),
            "ild": round(float(np.mean(ilds[-args.tail:])), 4),
            "coverage": round(coverage([shown[-args.tail * args.k:]], len(item_ids)), 4),
            "versions_published": tm["published"], "versions_rejected": tm["rejected"],
            "versions_deferred": tm.get("deferred", 0), "canaries": tm.get("canaries", 0),
            "canary_share": args.canary_share,
            "trainer_rounds": tm["rounds"], "samples_trained": tm["samples"], "trainer_error": tm["error"],
            "ingest_join": joins,
            "ope_summary": ope_summary, "ope_vs_measured": ope_vs_measured, "seconds": round(elapsed, 1),
            "impressions_per_s": round(len(clicks_all) / elapsed, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impressions", type=int, default=50_000)
    ap.add_argument("--policies", default="random,popularity,egreedy,linucb,thompson,ppo")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.1)
    ap.add_argument("--penalty", type=float, default=1.0)
    ap.add_argument("--lambda-check", default="", help="policies to rerun with lambda = penalty = 0, e.g. ppo,linucb")
    ap.add_argument("--world", choices=["synthetic", "movielens"], default="synthetic")
    ap.add_argument("--data", default="../shared/data/ml-100k", help="MovieLens-100K directory (--world movielens)")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--tick", type=int, default=200)
    ap.add_argument("--rate", type=float, default=250.0,
                    help="impressions per second the simulated users make (the trainer must keep up on 2 cores)")
    ap.add_argument("--retrieval-share", type=float, default=0.0,
                    help="share of candidates retrieved by the user vector (0: uniform from the catalog, so the policy alone personalises)")
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--train-every-s", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--estimator", choices=["ips", "snips", "dr"], default="snips", help="the gate's OPE estimator")
    ap.add_argument("--dr-weights", choices=["slate", "cascade"], default="cascade",
                    help="DR's importance weights: whole-slate, or per position down to it (cascade DR)")
    ap.add_argument("--min-holdout", type=int, default=1, help="held-out samples before the gate may publish")
    ap.add_argument("--min-support", type=float, default=0.7,
                    help="the gate's support check (mean clipped weight below it: DR); 0.001 all but turns it off")
    ap.add_argument("--holdout-window", type=int, default=2000, help="held-out samples the gate scores on (rolling)")
    ap.add_argument("--publish-every-s", type=float, default=0.0,
                    help="least seconds between publications (longer-lived versions: more impressions to measure each on)")
    ap.add_argument("--canary-share", type=float, default=0.2,
                    help="share of users each candidate serves before the gate judges it (0: gate on held-out logs only)")
    ap.add_argument("--canary-samples", type=int, default=2000,
                    help="samples logged during a canary before the gate judges it")
    ap.add_argument("--tail", type=int, default=10_000)
    ap.add_argument("--min-version-impressions", type=int, default=300,
                    help="versions served fewer times are left out of the OPE-vs-measured comparison")
    ap.add_argument("--cf-contexts", type=int, default=500,
                    help="latest impressions on which each new version's on-policy CTR is also computed (the contexts "
                         "the gate's held-out samples came from), beside the CTR measured while it served")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tmp", default=".streamrec/bench-learn")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.world == "movielens":  # semi-synthetic: held-out ratings, else a fitted MF (rl.simulators)
        from rl.simulators import MovieLensUsers
        from streamrec.data.movielens import load_movielens
        from streamrec.encoder import TextEncoder

        cat = load_movielens(args.data)
        items, users = cat.items, cat.users
        item_vecs = TextEncoder().encode(items.column("text").to_pylist())
        user_vecs = np.zeros((len(users), item_vecs.shape[1]), np.float32)  # no user text: history only
        sim = MovieLensUsers.fit(cat.interactions, users, seed=args.seed)
        args.items, args.users = len(items), len(users)
    else:
        items, users = synthetic_items(0, args.items, args.seed), synthetic_users(args.users, args.seed)
        item_vecs, user_vecs = _embed(items, users)
        sim = SyntheticUsers.from_tables(items, users, seed=args.seed)
    world = (items, users, item_vecs, user_vecs, sim)
    print(json.dumps({"setup": "embedded", "world": args.world, "items": args.items, "users": args.users,
                      "embed_s": round(time.monotonic() - t0, 1)}), flush=True)
    broker = start_embedded_broker()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = [(p, args.lam, args.penalty) for p in args.policies.split(",") if p]
        runs += [(p, 0.0, 0.0) for p in args.lambda_check.split(",") if p]
        for algorithm, lam, pen in runs:
            out = run_policy(algorithm, lam, pen, args, world, broker.bootstrap, args.tmp)
            print(json.dumps(out), flush=True)
    finally:
        ray.shutdown()
        stop_broker(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
