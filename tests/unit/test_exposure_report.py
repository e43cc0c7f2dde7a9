"""The exposure report's figures, exactly, on a hand-made log."""

from __future__ import annotations

import pytest

from rl.exposure import age_band, exposure_report
from streamrec.events import TrainingSample


def _s(ts, user, items, rewards, version=1, **ctx):
    return TrainingSample(f"e{ts}", float(ts), user, tuple(items), (0.5,) * len(items), version, tuple(rewards), ctx, {})


LOG = [
    _s(3, "u1", ["a", "b"], [1, 0], age=30, gender="female", device="mobile"),
    _s(1, "u1", ["a", "c"], [0, 0], age=30, gender="female", device="mobile"),
    _s(2, "u2", ["a", "b"], [0, -1], version=2, age=70, device="tv"),  # a dislike is not a click
    _s(4, "u3", ["d", "a"], [0, 2.5], version=2),
]


def test_overall_and_per_version_figures():
    r = exposure_report(LOG, catalog_size=5)
    o = r["overall"]
    assert (o["impressions"], o["users"], o["items_exposed"], o["ctr"], o["coverage"]) == (4, 3, 4, 0.5, 0.8)
    # exposure a4 b2 c1 d1 e0 over the catalog of five: Gini of [0,1,1,2,4]
    assert o["gini"] == pytest.approx((2 * (1 * 0 + 2 * 1 + 3 * 1 + 4 * 2 + 5 * 4) - 6 * 8) / (5 * 8))
    assert r["versions"]["1"]["impressions"] == 2 and r["versions"]["1"]["ctr"] == 0.5
    assert r["versions"]["2"]["ctr"] == 0.5 and r["versions"]["2"]["items_exposed"] == 3


def test_popularity_deciles_and_long_tail():
    r = exposure_report(LOG, catalog_size=5, head_share=0.25)
    # ranked by positives then exposure: a (2 positives, 4 slots), b (0, 2), c (0, 1), d (0, 1): four groups of one
    assert [(d["items"], d["exposure_share"], d["click_rate"]) for d in r["deciles"]] == [
        (1, 0.5, 0.5), (1, 0.25, 0.0), (1, 0.125, 0.0), (1, 0.125, 0.0)]
    assert r["long_tail_share"] == 0.5  # the head is a alone


def test_segments_from_context_and_first_impressions():
    seg = exposure_report(LOG)["segments"]
    assert seg["user"] == {"new": {"impressions": 3, "exposure_share": 0.75, "ctr": 1 / 3},
                           "returning": {"impressions": 1, "exposure_share": 0.25, "ctr": 1.0}}
    assert seg["age"]["25-34"]["impressions"] == 2 and seg["age"]["55+"]["ctr"] == 0.0
    assert seg["age"]["unknown"]["impressions"] == 1 and seg["gender"]["unknown"]["impressions"] == 2
    assert set(seg["device"]) == {"mobile", "tv", "unknown"}


@pytest.mark.parametrize("age, band", [(17, "<18"), (18, "18-24"), (54.9, "45-54"), (55, "55+"), (None, "unknown"),
                                       (True, "unknown"), ("30", "unknown"), (-1, "unknown")])
def test_age_bands(age, band):
    assert age_band(age) == band


@pytest.mark.parametrize("kw, message", [({"head_share": 0}, "head_share must be in"),
                                         ({"head_share": 1.5}, "head_share must be in"),
                                         ({"catalog_size": 0}, "catalog_size must be >= 1")])
def test_bad_arguments_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        exposure_report(LOG, **kw)


def test_an_empty_log_reports_zero_impressions():
    r = exposure_report([])
    assert r["overall"]["impressions"] == 0 and r["deciles"] == [] and r["segments"] == {}
