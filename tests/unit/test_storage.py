"""LineLog: an append-only log in segments, read from its newest end (a local directory here;
tests/integration/test_object_storage.py runs the policy store's history on an S3 server)."""

import pytest

from streamrec.storage import LineLog, Location


def test_lines_roll_into_segments_and_the_tail_reads_across_them(tmp_path):
    log = LineLog(Location(tmp_path), "history", segment_lines=3)
    assert log.tail(5) == [] and log.segments() == []
    for i in range(8):
        log.append(f'{{"n": {i}}}')
    assert log.segments() == [0, 1, 2]
    assert (tmp_path / "history" / "000000001.jsonl").read_text().splitlines() == ['{"n": 3}', '{"n": 4}', '{"n": 5}']
    assert log.tail(4) == [f'{{"n": {i}}}' for i in range(4, 8)]
    assert log.tail(100) == [f'{{"n": {i}}}' for i in range(8)]
    assert log.tail(0) == []


def test_a_later_writer_continues_the_newest_segment(tmp_path):
    first = LineLog(Location(tmp_path), "h", segment_lines=3)
    for i in range(4):
        first.append(str(i))
    again = LineLog(Location(tmp_path), "h", segment_lines=3)  # a restarted store
    for i in range(4, 7):
        again.append(str(i))
    assert again.segments() == [0, 1, 2]
    assert [len(again._lines(s)) for s in again.segments()] == [3, 3, 1]
    assert first.tail(10) == [str(i) for i in range(7)]


@pytest.mark.parametrize("kwargs, line, message", [
    ({"segment_lines": 0}, None, "segment_lines must be >= 1, got 0"),
    ({}, "one\ntwo", "a log line must not contain a newline"),
])
def test_bad_input(tmp_path, kwargs, line, message):
    with pytest.raises(ValueError, match=message):
        LineLog(Location(tmp_path), "h", **kwargs).append(line)
