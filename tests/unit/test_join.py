"""Reward join: windows, late and orphan feedback, duplicates and the offsets safe to commit."""

import pytest

from streamrec.events import Feedback, Impression
from streamrec.join import RewardJoiner


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def imp(eid, items=("a", "b", "c")):
    return Impression(event_id=eid, ts=0.0, user_id="u", items=items, propensities=(0.5,) * len(items),
                      policy_version="1")


def fb(eid, item="b", value=1.0, t="click"):
    return Feedback(event_id=eid, ts=0.0, user_id="u", item_id=item, type=t, value=value)


IMP, FB = "imp", "fb"


def test_feedback_in_window_is_joined_at_its_position():
    c = Clock()
    j = RewardJoiner(10, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "b"), (FB, 0, 0))
    j.add_feedback(fb("e1", "b", 2.0, "purchase"), (FB, 0, 1))
    assert j.due() == (None, [])  # window still open
    c.t = 10
    token, samples = j.due()
    assert [s.rewards for s in samples] == [(0.0, 3.0, 0.0)]
    assert samples[0].feedback_types == ("click", "purchase")
    assert j.stats.joined == 2 and j.stats.join_hit_rate == 1.0


def test_no_feedback_gives_reward_zero():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    c.t = 5
    _, [s] = j.due()
    assert s.rewards == (0.0, 0.0, 0.0) and not s.clicked


def test_late_feedback_is_counted_not_trained():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    c.t = 6
    token, [s] = j.due()
    j.ack(token)
    j.add_feedback(fb("e1"), (FB, 0, 0))
    assert j.stats.late == 1
    assert j.due() == (None, [])
    assert j.commit_offsets() == {(IMP, 0): 1, (FB, 0): 1}


def test_feedback_before_its_impression_is_joined_and_orphans_expire():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_feedback(fb("e1", "c"), (FB, 0, 0))
    j.add_feedback(fb("ghost"), (FB, 0, 1))
    c.t = 1
    j.add_impression(imp("e1"), (IMP, 0, 0))
    c.t = 7
    token, [s] = j.due()
    assert s.rewards == (0.0, 0.0, 1.0)
    assert j.stats.orphans == 1 and j.stats.joined == 1
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 1, (FB, 0): 2}


def test_offsets_are_committed_only_after_ack_and_never_past_a_pending_record():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 10))
    j.add_feedback(fb("e1"), (FB, 0, 20))
    c.t = 3
    j.add_impression(imp("e2"), (IMP, 0, 11))
    assert j.commit_offsets() == {(IMP, 0): 10, (FB, 0): 20}
    c.t = 5
    token, [s] = j.due()
    assert s.event_id == "e1"
    assert j.commit_offsets() == {(IMP, 0): 10, (FB, 0): 20}  # handed off but not acknowledged
    j.ack(token)
    assert j.commit_offsets() == {(IMP, 0): 11, (FB, 0): 21}  # e2 still pending at 11


def test_redelivered_impression_is_a_duplicate():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_impression(imp("e1"), (IMP, 0, 0))
    c.t = 5
    _, samples = j.due()
    assert len(samples) == 1 and j.stats.duplicates == 1


def test_off_slate_feedback_is_counted():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_feedback(fb("e1", "zzz"), (FB, 0, 0))
    c.t = 5
    _, [s] = j.due()
    assert s.rewards == (0.0, 0.0, 0.0) and j.stats.off_slate == 1


def test_state_is_bounded_by_the_window():
    c = Clock()
    j = RewardJoiner(1, retention_s=2, clock=c)
    for i in range(1000):
        c.t = i * 0.01
        j.add_impression(imp(f"e{i}"), (IMP, 0, i))
        tok, _ = j.due()
        if tok is not None:
            j.ack(tok)
    assert j.state_size < 400  # about (window + retention) / 0.01 entries, not 1000


def test_dropping_revoked_partitions_forgets_their_state():
    c = Clock()
    j = RewardJoiner(5, clock=c)
    j.add_impression(imp("e1"), (IMP, 0, 0))
    j.add_impression(imp("e2"), (IMP, 1, 0))
    j.drop_partitions({(IMP, 0)})
    c.t = 5
    _, samples = j.due()
    assert [s.event_id for s in samples] == ["e2"]
    assert (IMP, 0) not in j.commit_offsets()


def test_flush_emits_everything_pending():
    j = RewardJoiner(100, clock=Clock())
    j.add_impression(imp("e1"), (IMP, 0, 0))
    _, samples = j.due(flush=True)
    assert len(samples) == 1


def test_bad_window():
    with pytest.raises(ValueError, match="window_s must be > 0, got 0"):
        RewardJoiner(0)
