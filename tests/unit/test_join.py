"""Reward join: event-time windows, late and orphan feedback, duplicates, offsets safe to commit."""

import math

import pytest

from streamrec.events import Feedback, Impression
from streamrec.join import RewardJoiner, Watermark


def imp(eid, ts=0.0, items=("a", "b", "c")):
    return Impression(event_id=eid, ts=ts, user_id="u", items=items, propensities=(0.5,) * len(items),
                      policy_version=1)


def fb(eid, item="b", value=1.0, t="click", ts=0.0):
    return Feedback(event_id=eid, ts=ts, user_id="u", item_id=item, type=t, value=value)


IMP, FB = "imp", "fb"


def test_feedback_in_window_is_joined_at_its_position():
    j = RewardJoiner(10)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "b"), (FB, 0, 0))
    j.add_feedback(fb("e1", "b", 2.0, "purchase"), (FB, 0, 1))
    assert j.due(9.99) == (None, [])  # window still open
    token, samples = j.due(10)
    assert [s.rewards for s in samples] == [(0.0, 4.0, 0.0)]  # a click (1) and a purchase (3, whatever its value)
    assert samples[0].feedback_types == ("click", "purchase")
    assert j.stats.joined == 2 and j.stats.join_hit_rate == 1.0


@pytest.mark.parametrize("kind, value, reward, clicked", [
    ("click", 1.0, 1.0, True),
    ("purchase", 1.0, 3.0, True),
    ("like", 1.0, 1.5, True),
    ("dwell", 30.0, 0.6, True),     # 0.02 a second
    ("dwell", 500.0, 1.0, True),    # capped
    ("dislike", 1.0, -1.0, False),  # the default value 1.0 does not make it a click
    ("skip", 1.0, -0.1, False),
])
def test_each_feedback_type_becomes_its_reward_in_the_training_sample(kind, value, reward, clicked):
    j = RewardJoiner(5)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "c", value, kind), (FB, 0, 0))
    _, [s] = j.due(5)
    assert s.rewards == pytest.approx((0.0, 0.0, reward)) and s.feedback_types == (kind,)
    assert s.clicked is clicked


def test_the_reward_table_comes_from_the_settings():
    from streamrec.config import ConfigError, settings_from_args
    from streamrec.rewards import RewardTable

    table = RewardTable.from_settings(settings_from_args({"rewards": {"purchase": 5.0, "skip": 0.0}}, env={}).rewards)
    j = RewardJoiner(5, rewards=table)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "a", 1.0, "purchase"), (FB, 0, 0))
    j.add_feedback(fb("e1", "b", 1.0, "skip"), (FB, 0, 1))
    assert j.due(5)[1][0].rewards == (5.0, 0.0, 0.0)
    for bad, message in [({"dislike": 0.5}, "args.rewards.dislike: Input should be less than or equal to 0"),
                         ({"skip": 1.0}, "args.rewards.skip: Input should be less than or equal to 0")]:
        with pytest.raises(ConfigError, match=message):
            settings_from_args({"rewards": bad}, env={})


def test_no_feedback_gives_reward_zero():
    j = RewardJoiner(5)
    j.add_impression(imp("e1", ts=100), (IMP, 0, 0))
    assert j.due(104)[1] == []
    _, [s] = j.due(105)
    assert s.rewards == (0.0, 0.0, 0.0) and not s.clicked


def test_late_feedback_is_counted_not_trained():
    j = RewardJoiner(5)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    token, [s] = j.due(6)
    j.ack(token)
    j.add_feedback(fb("e1", ts=7), (FB, 0, 0))
    assert j.stats.late == 1
    assert j.due(8) == (None, [])
    assert j.commit_offsets() == {(IMP, 0): 1, (FB, 0): 1}


def test_feedback_before_its_impression_is_joined_and_orphans_expire():
    j = RewardJoiner(5)
    j.add_feedback(fb("e1", "c", ts=1), (FB, 0, 0))
    j.add_feedback(fb("ghost", ts=1), (FB, 0, 1))
    j.add_impression(imp("e1", ts=0.5), (IMP, 0, 0))
    token, [s] = j.due(7)
    assert s.rewards == (0.0, 0.0, 1.0)
    assert j.stats.orphans == 1 and j.stats.joined == 1
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 1, (FB, 0): 2}


def test_offsets_are_committed_only_after_ack_and_never_past_a_pending_record():
    j = RewardJoiner(5)
    j.add_impression(imp("e1", ts=0), (IMP, 0, 10))
    j.add_feedback(fb("e1"), (FB, 0, 20))
    j.add_impression(imp("e2", ts=3), (IMP, 0, 11))
    assert j.commit_offsets() == {(IMP, 0): 10, (FB, 0): 20}
    token, [s] = j.due(5)
    assert s.event_id == "e1"
    assert j.commit_offsets() == {(IMP, 0): 10, (FB, 0): 20}  # handed off but not acknowledged
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 11, (FB, 0): 21}  # e2 still pending at 11


def test_windows_close_in_event_time_order_whatever_the_arrival_order():
    j = RewardJoiner(1)
    j.add_impression(imp("late-ts", ts=50), (IMP, 0, 0))
    j.add_impression(imp("early-ts", ts=10), (IMP, 0, 1))
    _, samples = j.due(11)
    assert [s.event_id for s in samples] == ["early-ts"]
    assert j.commit_offsets() == {(IMP, 0): 0}


def test_redelivered_impression_is_a_duplicate():
    j = RewardJoiner(5)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_impression(imp("e1"), (IMP, 0, 0))
    _, samples = j.due(5)
    assert len(samples) == 1 and j.stats.duplicates == 1


def test_off_slate_feedback_is_counted():
    j = RewardJoiner(5)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "zzz"), (FB, 0, 0))
    _, [s] = j.due(5)
    assert s.rewards == (0.0, 0.0, 0.0) and j.stats.off_slate == 1


def test_state_is_bounded_by_the_window():
    j = RewardJoiner(1, retention_s=2)
    for i in range(1000):
        t = i * 0.01
        j.add_impression(imp(f"e{i}", ts=t), (IMP, 0, i))
        tok, _ = j.due(t)
        if tok is not None:
            j.ack(tok)
    assert j.state_size < 400  # about (window + retention) / 0.01 entries, not 1000


def test_dropping_revoked_partitions_forgets_their_state():
    j = RewardJoiner(5)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_impression(imp("e2"), (IMP, 1, 0))
    j.drop_partitions({(IMP, 0)})
    _, samples = j.due(5)
    assert [s.event_id for s in samples] == ["e2"]
    assert (IMP, 0) not in j.commit_offsets()


def test_flush_emits_everything_pending():
    j = RewardJoiner(100)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    _, samples = j.due(0, flush=True)
    assert len(samples) == 1


def test_bad_window():
    with pytest.raises(ValueError, match="window_s must be > 0, got 0"):
        RewardJoiner(0)


def test_watermark_is_the_clock_when_caught_up_and_the_laggard_otherwise():
    w = Watermark()
    owned = [(IMP, 0), (FB, 0)]
    assert w.value(100.0, owned, caught_up=owned) == 100.0
    assert w.value(100.0, owned, caught_up=[(FB, 0)]) == -math.inf  # IMP/0 never read yet
    w.observe((IMP, 0), 40.0)
    w.observe((IMP, 0), 30.0)
    assert w.value(100.0, owned, caught_up=[(FB, 0)]) == 40.0
    w.observe((FB, 0), 20.0)
    assert w.value(100.0, owned, caught_up=[]) == 20.0


def test_a_polled_batch_joins_like_the_same_records_one_by_one():
    """add_impressions/add_feedbacks (one call a partition batch): duplicates inside the batch,
    feedback that came first, late feedback, and the offsets safe to commit."""
    j = RewardJoiner(5)
    j.add_feedbacks(FB, 0, [40, 41], [fb("e2", "c", ts=0.5), fb("ghost", ts=0.5)])  # before their impressions
    j.add_impressions(IMP, 0, [10, 11, 12, 13], [imp("e1", ts=0), imp("e2", ts=1), imp("e1", ts=0), imp("e3", ts=2)])
    assert j.stats.impressions == 4 and j.stats.duplicates == 1 and j.pending == 3
    j.add_feedbacks(FB, 0, [42], [fb("e1", "a")])
    assert j.commit_offsets() == {(IMP, 0): 10, (FB, 0): 40}
    token, samples = j.due(6.5)  # e1 and e2 close; ghost is an orphan
    assert {s.event_id: s.rewards for s in samples} == {"e1": (1.0, 0.0, 0.0), "e2": (0.0, 0.0, 1.0)}
    assert j.stats.orphans == 1 and j.stats.joined == 2
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 13, (FB, 0): 43}  # e3 (offset 13) still pending
    j.add_feedbacks(FB, 0, [43], [fb("e1", "b")])
    assert j.stats.late == 1
    assert j.commit_offsets() == {(IMP, 0): 13, (FB, 0): 44}  # late feedback: nothing to wait for


def test_in_flight_offsets_added_out_of_order_keep_the_oldest_first():
    j = RewardJoiner(5)
    j.add_impressions(IMP, 0, [20, 21], [imp("a", ts=0), imp("b", ts=9)])
    j.add_impressions(IMP, 0, [5, 6], [imp("c", ts=0), imp("d", ts=0)])  # an older run (not seen in one assignment)
    assert j.commit_offsets() == {(IMP, 0): 5}
    token, samples = j.due(5)
    assert sorted(s.event_id for s in samples) == ["a", "c", "d"]
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 21}
