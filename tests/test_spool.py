"""The disk spool: records round-trip, torn tails, corruption, caps, commit marks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors._windows import WindowAggregates
from urbanpulse._batch import ReadingBatch, SeriesKey
from urbanpulse._schema import Kind
from urbanpulse._spool import Spool, SpoolFullError, SpoolOptions, decode_record, encode_record


def _batch(n: int, seed: int = 0) -> ReadingBatch:
    rng = np.random.default_rng(seed)
    return ReadingBatch(
        sid=rng.integers(0, 50, n).astype(np.int32),
        metric=rng.integers(0, 11, n).astype(np.uint8),
        ts_ns=rng.integers(0, 2**62, n).astype(np.int64),
        value=rng.normal(30, 10, n),
        flags=rng.integers(0, 8, n).astype(np.uint8),
    )


def _aggs(m: int, window_ms: int = 60_000) -> WindowAggregates:
    rng = np.random.default_rng(m)
    f = rng.normal(size=(6, m))
    return WindowAggregates(
        window_ms,
        rng.integers(0, 50, m).astype(np.int32),
        rng.integers(0, 11, m).astype(np.uint8),
        rng.integers(0, 2**60, m).astype(np.int64),
        rng.integers(1, 100, m).astype(np.int64),
        *f,
    )


KEYS = [
    SeriesKey("bandung", "coblong", Kind.AIR, "aq-1"),
    SeriesKey("b", "d", Kind.TRAFFIC, "t", 2),
]


def _same_batch(a: ReadingBatch, b: ReadingBatch) -> None:
    for name in ("sid", "metric", "ts_ns", "value", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@given(n=st.integers(0, 300), m=st.integers(0, 50), seq=st.integers(1, 2**40))
@settings(max_examples=50, deadline=None)
def test_record_codec_round_trips(n: int, m: int, seq: int) -> None:
    batch, aggs = _batch(n, n), [_aggs(m), _aggs(m + 1, 900_000)]
    data = encode_record(seq, KEYS, batch, aggs)
    rec = decode_record(seq, data[20:])
    assert rec.seq == seq
    assert rec.new_keys == KEYS
    _same_batch(rec.batch, batch)
    for got, want in zip(rec.closed, aggs, strict=True):
        assert got.window_ms == want.window_ms
        for name in ("sid", "metric", "start_ns", "count", "mean", "std", "first", "last"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def _spool(tmp_path: Path, **kw: object) -> Spool:
    return Spool(SpoolOptions(directory=tmp_path / "spool", **kw))  # type: ignore[arg-type]


def test_append_reopen_and_read_in_order(tmp_path: Path) -> None:
    sp = _spool(tmp_path, segment_bytes=64 * 1024)
    batches = [_batch(200, i) for i in range(30)]
    seqs = [sp.append(KEYS if i == 0 else [], b, [_aggs(3)]) for i, b in enumerate(batches)]
    sp.sync()
    assert seqs == list(range(1, 31))
    assert sp.status().segments > 1  # rotated
    sp.close()
    again = _spool(tmp_path, segment_bytes=64 * 1024)
    recs = list(again.records(1))
    assert [r.seq for r in recs] == seqs
    for rec, b in zip(recs, batches, strict=True):
        _same_batch(rec.batch, b)
    assert again.next_seq == 31
    assert [r.seq for r in again.records(17)][:2] == [17, 18]


def test_a_torn_tail_is_truncated_and_appending_goes_on(tmp_path: Path) -> None:
    sp = _spool(tmp_path)
    for i in range(5):
        sp.append([], _batch(100, i), [])
    sp.close()
    seg = sorted((tmp_path / "spool").glob("seg-*.log"))[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of writing record 5
        f.truncate(size - 37)
    again = _spool(tmp_path)
    assert [r.seq for r in again.records(1)] == [1, 2, 3, 4]
    assert again.status().truncated_tail_bytes > 0
    assert again.status().quarantined == []
    assert again.append([], _batch(10), []) == 5
    again.sync()
    assert [r.seq for r in again.records(1)] == [1, 2, 3, 4, 5]


def test_a_corrupt_segment_is_quarantined_and_reported(tmp_path: Path) -> None:
    sp = _spool(tmp_path, segment_bytes=16 * 1024)
    for i in range(12):
        sp.append([], _batch(150, i), [])
    sp.close()
    segs = sorted((tmp_path / "spool").glob("seg-*.log"))
    assert len(segs) >= 3
    with open(segs[0], "r+b") as f:  # flip a byte inside the first record's body
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    again = _spool(tmp_path, segment_bytes=16 * 1024)
    status = again.status()
    assert status.quarantined == [segs[0].name]
    assert (tmp_path / "spool" / "quarantine" / segs[0].name).exists()
    assert status.first_seq is not None
    assert status.first_seq > 1  # the rest is still readable


def test_commit_mark_persists_and_committed_segments_are_deleted(tmp_path: Path) -> None:
    sp = _spool(tmp_path, segment_bytes=16 * 1024)
    for i in range(20):
        sp.append([], _batch(150, i), [])
    sp.sync()
    before = sp.status().segments
    sp.set_committed(15)
    sp.truncate_committed()
    after = sp.status()
    assert after.segments < before
    assert after.first_seq is not None
    assert after.first_seq <= 16  # nothing uncommitted is deleted
    assert after.pending_records == 5
    sp.close()
    assert _spool(tmp_path).committed_seq == 15


def test_cap_blocks_under_the_block_policy(tmp_path: Path) -> None:
    sp = _spool(tmp_path, segment_bytes=64 * 1024, max_bytes=1024 * 1024)

    def fill() -> None:
        for i in range(10_000):
            sp.append([], _batch(500, i), [])

    with pytest.raises(SpoolFullError):
        fill()
    assert sp.status().bytes <= 1024 * 1024
    assert sp.would_block()
    sp.set_committed(sp.last_seq)
    assert not sp.would_block()


def test_cap_drops_the_oldest_and_counts_it_under_drop_oldest(tmp_path: Path) -> None:
    sp = _spool(tmp_path, segment_bytes=64 * 1024, max_bytes=1024 * 1024, full_policy="drop_oldest")
    for i in range(300):
        sp.append([], _batch(500, i), [])
    status = sp.status()
    assert status.bytes <= 1024 * 1024
    assert status.dropped_records > 0
    assert status.committed_seq >= status.dropped_records  # dropped count as done, not pending


def test_fsync_never_still_survives_a_process_crash(tmp_path: Path) -> None:
    sp = _spool(tmp_path, fsync="never")
    sp.append([], _batch(10), [])
    sp.sync()  # a no-op for the disk, but the OS has the bytes
    fd_count_before = len(os.listdir("/proc/self/fd"))
    again = _spool(tmp_path, fsync="never")
    assert [r.seq for r in again.records(1)] == [1]
    again.close()
    assert len(os.listdir("/proc/self/fd")) <= fd_count_before
