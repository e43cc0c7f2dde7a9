"""`streamrec status`'s table from a status snapshot (pure rendering, no stack)."""

from rich.console import Console

from cluster.cli import STUCK_ROUND_S, _status_table


def _render(snapshot: dict) -> str:
    info = {"run_dir": "/tmp/x", "running": True, "phase": "running", "pid": 1, "config": "ray_config.yaml",
            "snapshot": snapshot}
    console = Console(record=True, width=200)
    console.print(_status_table(info))
    return console.export_text()


def _ingest(**kw) -> dict:
    return {"actors": 1, "events_per_s": 10.0, "samples": 5, "join_hit_rate": 0.5, "dlq": 0, "late": 0,
            "errors": [], "lag": {}, **kw}


def _trainer(**kw) -> dict:
    return {"algorithm": "ppo", "serving_version": 3, "published": 2, "rejected": 0, "samples": 100,
            "error": None, **kw}


def test_partitions_read_behind_are_named_with_the_watermark_lag():
    text = _render({"ingest": _ingest(behind=["imp/1", "fb/0"], watermark_lag_s=12.5)})
    assert "reading behind" in text and "2 partition(s)" in text
    assert "imp/1, fb/0" in text and "12.5 s behind the clock" in text


def test_nothing_behind_shows_no_row():
    assert "reading behind" not in _render({"ingest": _ingest(behind=[])})


def test_a_long_round_is_shown_instead_of_training():
    text = _render({"trainer": _trainer(in_round_s=STUCK_ROUND_S + 15)})
    assert f"one round running for {STUCK_ROUND_S + 15:.0f} s" in text
    assert "training" not in text.split("policy", 1)[1].splitlines()[0]


def test_a_short_round_is_just_training_and_an_error_wins_over_a_long_round():
    assert "training" in _render({"trainer": _trainer(in_round_s=2.0)})
    text = _render({"trainer": _trainer(in_round_s=STUCK_ROUND_S * 2, error="RuntimeError: boom")})
    assert "RuntimeError: boom" in text and "one round running" not in text
