"""The replay audit's pure parts: the rounds log's record runs, the weights comparison, which
version served at a time, and the replayed source's handling of repeats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster.replay import _Rounds, _served_at, compare_weights
from rl.trainer_loop import record_runs, run_records
from streamrec.events import TrainingSample


def test_record_runs_compress_consecutive_offsets_in_order_and_invert():
    records = [(0, 5), (0, 6), (0, 7), (1, 3), (0, 8), (1, 4), (1, 5), (2, 0)]
    runs = record_runs(records)
    assert runs == [[0, 5, 7], [1, 3, 3], [0, 8, 8], [1, 4, 5], [2, 0, 0]]
    assert run_records(runs) == records and record_runs([]) == []


def test_compare_weights_relative_l2_per_tensor():
    a = {"w": np.array([3.0, 4.0]), "b": np.zeros(2)}
    out = compare_weights(a, {"w": np.array([3.0, 4.5]), "b": np.zeros(2)})
    assert out["tensors"]["w"] == pytest.approx(0.1) and out["tensors"]["b"] == 0.0 and out["max"] == pytest.approx(0.1)
    assert math.isinf(compare_weights(a, {"w": np.zeros(3), "b": np.zeros(2)})["max"])  # another shape
    assert math.isinf(compare_weights(a, {"w": np.array([3.0, 4.0])})["max"])  # a tensor missing


def test_served_at_reads_publishes_promotions_and_rollbacks_up_to_the_time():
    history = [{"ts": 1, "action": "publish", "version": 1}, {"ts": 2, "action": "canary", "version": 2},
               {"ts": 3, "action": "promote", "version": 2}, {"ts": 4, "action": "refuse", "version": 3},
               {"ts": 5, "action": "rollback", "version": 4}, {"ts": 6, "action": "experiment_start", "version": 4}]
    assert [_served_at(history, t) for t in (0, 1, 2.5, 3, 4.5, 9)] == [None, 1, 1, 2, 2, 4]


def _sample(eid):
    return TrainingSample(eid, 0.0, "u", ("a",), (1.0,), 1, (0.0,), {}, {})


def test_the_replayed_source_hands_each_round_out_once_and_drops_repeats():
    src = _Rounds()
    src.next = [_sample("a"), _sample("b"), _sample("a")]
    assert [s.event_id for s in src.take(100)] == ["a", "b"] and src.take(100) == []
    src.next = [_sample("b"), _sample("c")]
    assert [s.event_id for s in src.take(100)] == ["c"] and src.taken == 5


class _RecordLog:
    """A samples log of records of ``per`` samples each, handed out whole as SampleLog does (with
    ``last_records``), resuming at a checkpoint's position."""

    def __init__(self, samples, per: int = 50):
        self.records = {(0, i): samples[j:j + per] for i, j in enumerate(range(0, len(samples), per))}
        self.next, self.last_records = 0, []

    def take(self, max_n: int, min_n: int = 1) -> list:
        out, taken, at = [], [], self.next
        while (0, at) in self.records and (not out or len(out) + len(self.records[(0, at)]) <= max_n):
            out += self.records[(0, at)]
            taken.append((0, at))
            at += 1
        if len(out) < min_n:
            return []
        self.next, self.last_records = at, taken
        return out

    def position(self) -> dict:
        return {"0": self.next}

    def seek(self, position, written_at=None) -> None:
        self.next = 0 if position is None else int(position["0"])

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_recorded_run_with_a_restart_is_rebuilt_round_by_round_to_the_same_weights(tmp_path):
    from actors.policy_store import PolicyDirectory
    from cluster.replay import read_rounds, rebuild
    from rl.trainer_loop import TrainerLoop
    from serve.ranking import Ranking
    from streamrec.index import ItemIndex
    from streamrec.vectors import Catalog
    from tests.learning_world import served_samples, trainer_settings, world

    ids, vecs, user_vecs, sim = world()
    s = trainer_settings(tmp_path / "run", algorithm="linucb", min_samples=100, max_batch=300)
    store = PolicyDirectory(s.trainer.store_dir, 10)
    first = TrainerLoop(s, ids, vecs, _RecordLog([]), store)
    first.publish_initial()
    core = Ranking(first.featurizer, ItemIndex.build(ids, vecs), first.serving, 1, 20)
    log = _RecordLog(served_samples(core, sim, user_vecs, 900, np.random.default_rng(0)))
    loop = TrainerLoop(s, ids, vecs, log, store)
    loop.round(), loop.round()
    again = TrainerLoop(s, ids, vecs, _RecordLog([]), store)  # the trainer restarts: resumes at its checkpoint
    again.source.records = log.records
    assert again.source.next == 12  # its checkpoint's position: two rounds of six 50-sample records
    again.round()
    entries = read_rounds(s.trainer.checkpoint_dir)
    assert [e["kind"] for e in entries] == ["start", "start", "round", "round", "start", "round"]
    catalog = Catalog(np.asarray(ids), vecs, np.arange(1, len(ids) + 1), len(ids) + 1, "v")
    report = rebuild(s, entries, log.records, catalog, tmp_path / "replay", {"differences": [], "decisions_equal": 0,
                                                                                "samples_equal": 0})
    assert report["match"], report["differences"]
    assert report["samples_equal"] == report["decisions_equal"] == 3
    assert report["served_at_until"] == store.latest()["version"] == report["replayed_version"]
    assert report["weights"]["max_relative_l2"] < 1e-6

    lossy = dict(log.records)
    lossy[(0, 7)] = lossy[(0, 7)][1:]  # a record whose samples differ from what the trainer took
    del lossy[(0, 12)]  # and one the topic no longer holds
    report = rebuild(s, entries, lossy, catalog, tmp_path / "replay2", {"differences": [], "decisions_equal": 0,
                                                                       "samples_equal": 0})
    whys = [(d.get("round"), d["what"]) for d in report["differences"]]
    assert not report["match"] and (2, "samples") in whys and (3, "samples") in whys
    assert any("no longer in the samples topic" in d["why"] for d in report["differences"])


def test_the_rounds_log_keeps_its_last_hours_and_removes_older_files(tmp_path):
    import time

    from actors.policy_store import PolicyDirectory
    from rl.trainer_loop import ROUNDS, TrainerLoop
    from streamrec.storage import Location
    from tests.learning_world import trainer_settings, world

    ids, vecs, _, _ = world()
    s = trainer_settings(tmp_path, algorithm="linucb", min_samples=100)
    s = s.model_copy(update={"trainer": s.trainer.model_copy(update={"rounds_log_hours": 2})})
    loc = Location(s.trainer.checkpoint_dir)
    now = time.time()
    for hours_ago in (30, 3, 1):
        loc.append_line(f"{ROUNDS}/{time.strftime('%Y%m%d%H', time.gmtime(now - hours_ago * 3600))}.jsonl", "{}")
    TrainerLoop(s, ids, vecs, _RecordLog([]), PolicyDirectory(tmp_path / "store", 10))  # its start is a line
    kept = sorted(f.rsplit("/", 1)[-1] for f in loc.files(ROUNDS, ".jsonl"))
    assert kept == sorted({time.strftime('%Y%m%d%H', time.gmtime(now - h * 3600)) + ".jsonl" for h in (1, 0)})
