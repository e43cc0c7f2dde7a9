"""SampleLog's logic over a log in memory: whole records, positions, seeking, dedup by event_id."""

from __future__ import annotations

from actors.sample_log import SampleLog, SeenIds
from streamrec.events import TrainingSample, encode_samples


def sample(i: int) -> TrainingSample:
    return TrainingSample(event_id=f"e{i}", ts=float(i), user_id="u", items=("a", "b"), propensities=(0.5, 0.5),
                          policy_version=1, rewards=(0.0, 1.0 * (i % 2)), source=("t", 0, i))


class MemoryLog:
    """KafkaLogReader's calls over lists of records (partition -> [bytes]); committed offsets kept."""

    def __init__(self, partitions: dict[int, list[bytes]] | None = None, exists: bool = True):
        self.parts = partitions if partitions is not None else {0: []}
        self.times: dict[int, list[float]] = {p: [float(i) for i in range(len(r))] for p, r in self.parts.items()}
        self.exists = exists
        self.committed: dict[int, int] = {}
        self._at: dict[int, int] | None = None

    def assign(self, start):
        if not self.exists:
            return None
        self._at = {p: (start or {}).get(p, self.committed.get(p, 0)) for p in self.parts}
        return dict(self._at)

    def unassign(self):
        self._at = None

    def offsets_for_time(self, ts_ms):
        """Record i of a partition was written at i seconds (``times``)."""
        return {p: next((i for i, t in enumerate(self.times[p]) if t * 1000 >= ts_ms), len(self.parts[p]))
                for p in self.parts}

    def read(self, max_records=500, timeout_s=0.2):
        out = []
        for p, recs in self.parts.items():
            while self._at[p] < len(recs) and len(out) < max_records:
                out.append((p, self._at[p], recs[self._at[p]]))
                self._at[p] += 1
        return out

    def commit(self, position):
        self.committed.update(position)

    def high_watermarks(self, parts):
        return {p: len(self.parts[p]) for p in parts}

    def close(self):
        pass


def record(*ids: int) -> bytes:
    return encode_samples([sample(i) for i in ids])


def test_whole_records_oldest_first_and_the_position_after_the_last_one_taken():
    log = MemoryLog({0: [record(0, 1, 2), record(3, 4), record(5, 6, 7)]})
    reader = SampleLog(log)
    assert [s.event_id for s in reader.take(4)] == ["e0", "e1", "e2"]  # the next record would pass 4
    assert reader.position() == {"0": 1}
    assert reader.last_records == [(0, 0)]  # what the rounds log names (streamrec replay)
    assert [s.event_id for s in reader.take(1)] == ["e3", "e4"]  # at least one record, however large
    assert reader.position() == {"0": 2} and reader.lag() == 1 and reader.last_records == [(0, 1)]
    reader.commit()
    assert log.committed == {0: 2}


def test_fewer_than_min_n_stay_for_the_next_take():
    log = MemoryLog({0: [record(0, 1)]})
    reader = SampleLog(log)
    assert reader.take(100, min_n=3) == [] and reader.position() == {"0": 0}
    log.parts[0].append(record(2))
    assert [s.event_id for s in reader.take(100, min_n=3)] == ["e0", "e1", "e2"]
    assert reader.position() == {"0": 2}


def test_seek_reads_again_from_a_position_and_none_means_the_committed_one():
    log = MemoryLog({0: [record(0), record(1), record(2)], 1: [record(10)]})
    reader = SampleLog(log)
    assert sorted(s.event_id for s in reader.take(100)) == ["e0", "e1", "e10", "e2"]
    again = SampleLog(log)  # a restarted trainer at its checkpoint's position
    again.seek({"0": 1, "1": 1})
    assert [s.event_id for s in again.take(100)] == ["e1", "e2"]
    log.committed = {0: 2}
    third = SampleLog(log)
    third.seek(None)
    assert sorted(s.event_id for s in third.take(100)) == ["e10", "e2"]


def test_a_resumed_reader_remembers_the_ids_taken_shortly_before_its_position():
    """Records 0-3 were taken before the checkpoint (position 4, written at t=4); an ingest that
    crashed rewrote e2 and e3 after it. The resumed reader re-reads the ids written in its
    lookback (records 1-3: t >= 4 - 3), so it drops those copies; e0 is outside the lookback."""
    log = MemoryLog({0: [record(0), record(1), record(2), record(3), record(2, 3, 0, 4)]})
    reader = SampleLog(log, lookback_s=3.0)
    reader.seek({"0": 4}, written_at=4.0)
    assert [s.event_id for s in reader.take(100)] == ["e0", "e4"]
    assert reader.metrics()["reread"] == 3 and reader.metrics()["duplicates"] == 2
    assert reader.position() == {"0": 5}


def test_redelivered_samples_are_dropped_and_counted():
    log = MemoryLog({0: [record(0, 1), record(1, 2), record(2, 2, 3)]})  # an ingest replayed e1 and e2
    reader = SampleLog(log)
    assert [s.event_id for s in reader.take(100)] == ["e0", "e1", "e2", "e3"]
    assert reader.metrics()["duplicates"] == 3 and reader.metrics()["taken"] == 4


def test_a_record_that_is_not_samples_is_counted_and_passed_over():
    log = MemoryLog({0: [b"\x00garbage", record(0)]})
    reader = SampleLog(log)
    assert [s.event_id for s in reader.take(100)] == ["e0"]
    assert reader.metrics()["bad_records"] == 1 and reader.position() == {"0": 2}


def test_no_topic_yet_gives_nothing_until_it_exists():
    log = MemoryLog({0: [record(0)]}, exists=False)
    reader = SampleLog(log)
    assert reader.take(100) == [] and reader.position() == {}
    log.exists = True
    assert [s.event_id for s in reader.take(100)] == ["e0"]


def test_seen_ids_forget_after_their_retention():
    seen = SeenIds(retention_s=10)
    assert len(seen.fresh([sample(0), sample(1)], now=0.0)) == 2
    assert seen.fresh([sample(1), sample(2)], now=5.0) == [sample(2)]
    assert seen.fresh([sample(0)], now=10.5) == [sample(0)]  # e0 (seen at 0) was forgotten
    assert seen.fresh([sample(2)], now=10.5) == []  # e2 (seen at 5) was not


def test_ingest_writes_records_of_at_most_per_record_samples_halved_while_too_large():
    from actors.ingest import sample_records
    from streamrec.events import decode_samples

    samples = [sample(i) for i in range(7)]
    assert [len(decode_samples(b)) for b in sample_records(samples, per_record=3)] == [3, 3, 1]
    big = [s._replace(context={"text": "x" * 1_000}) for s in samples[:4]]
    records = sample_records(big, per_record=4, max_bytes=2_500)  # ~1 KB a sample: two per record
    assert [len(decode_samples(b)) for b in records] == [2, 2]
    assert [x.event_id for b in records for x in decode_samples(b)] == ["e0", "e1", "e2", "e3"]
    one = sample_records(big[:1], per_record=4, max_bytes=10)  # a single sample is never split
    assert len(one) == 1 and decode_samples(one[0]) == big[:1]
