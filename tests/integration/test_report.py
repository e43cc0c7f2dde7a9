"""`streamrec report` over a real samples topic: JSON, PNG charts and an HTML page, for a time range."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from cluster.broker import ensure_topics, loop_topics
from rl.exposure import exposure_report
from streamrec.events import TrainingSample, encode_samples
from tests.integration.stream_helpers import produce, stream_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_report_reads_the_range_asked_for_and_writes_json_charts_and_html(broker, tmp_path):
    s = stream_settings()
    ensure_topics(broker.bootstrap, loop_topics(s.kafka))
    t0 = time.time() - 3600

    def sample(k: int, ts: float) -> TrainingSample:
        return TrainingSample(f"r{k}", ts, f"u{k % 7}", tuple(f"i{(k + j) % 30}" for j in range(5)), (0.2,) * 5,
                              1 + k // 40, tuple(1.0 if j == k % 6 else 0.0 for j in range(5)),
                              {"age": 18 + k % 50, "gender": ("female", "male")[k % 2], "device": "mobile"}, {})

    before = [sample(k, t0 - 600 + k) for k in range(20)]  # outside the range asked for
    inside = [sample(k, t0 + k) for k in range(20, 140)]
    blobs = [encode_samples(before[:10]), encode_samples(before[10:] + inside[:50]), encode_samples(inside[50:]),
             encode_samples(inside[:5])]  # a replayed copy: counted once
    produce(broker.bootstrap, s.kafka.topics.samples, [(None, b) for b in blobs], raw=True)
    cfg = tmp_path / "config.yaml"
    args = {"kafka": {"bootstrap_servers": broker.bootstrap, "topics": s.kafka.topics.model_dump()},
            "embedding": {"output_dir": str(tmp_path / "no-embeddings")}}
    cfg.write_text(yaml.safe_dump({"applications": [{"name": "streamrec", "import_path": "serve.app:build_app",
                                                      "args": args}]}))
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "report", "--config", str(cfg), "--since", str(t0),
                        "--until", str(t0 + 10_000), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "120 impressions" in r.stdout
    got = json.loads((out / "report.json").read_text())
    want = exposure_report(inside)
    assert got["overall"] == want["overall"] and got["deciles"] == want["deciles"]
    assert got["segments"] == want["segments"] and set(got["versions"]) == {"1", "2", "3", "4"}
    for png in ("deciles.png", "segments.png", "versions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png}"' in (out / "report.html").read_text()

    # on a running loop the topic keeps growing: the report reads to where it ended when it began
    stop = threading.Event()

    def writer() -> None:
        k = 1000
        while not stop.is_set():
            produce(broker.bootstrap, s.kafka.topics.samples, [(None, encode_samples([sample(k, t0 + 200)]))], raw=True)
            k += 1

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    try:
        live = subprocess.run([sys.executable, "-m", "cluster.cli", "report", "--config", str(cfg), "--out",
                               str(tmp_path / "live")], cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        stop.set()
        w.join(30)
    assert live.returncode == 0, live.stderr[-3000:]
    assert json.loads((tmp_path / "live" / "report.json").read_text())["overall"]["impressions"] >= 140

    bad = subprocess.run([sys.executable, "-m", "cluster.cli", "report", "--config", str(cfg), "--since", "yesterday"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a time: 'yesterday'" in bad.stderr
