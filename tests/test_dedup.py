"""The duplicate filter against a plain reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors._dedup import DuplicateFilter
from urbanpulse._batch import ReadingBatch


def _batch(rows: list[tuple[int, int, int]]) -> ReadingBatch:
    return ReadingBatch(
        sid=np.array([r[0] for r in rows], np.int32),
        metric=np.array([r[1] for r in rows], np.uint8),
        ts_ns=np.array([r[2] for r in rows], np.int64),
        value=np.arange(len(rows), dtype=np.float64),
    )


US = 1000  # timestamps in the tests are whole microseconds


class Reference:
    """Every (sid, metric, ts) seen before, and repeats within a batch."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int, int]] = set()

    def apply(self, rows: list[tuple[int, int, int]]) -> list[bool]:
        dup = []
        batch: set[tuple[int, int, int]] = set()
        for row in rows:
            dup.append(row in self.seen or row in batch)
            batch.add(row)
        self.seen |= batch
        return dup


T0 = 1_763_892_000 * 10**9
ts_st = st.integers(0, 30).map(lambda t: T0 + t * US)
rows_st = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), ts_st), max_size=60)


@given(batches=st.lists(rows_st, max_size=12))
@settings(max_examples=200, deadline=None)
def test_matches_the_reference_while_everything_is_retained(
    batches: list[list[tuple[int, int, int]]],
) -> None:
    f, ref = DuplicateFilter(10**12), Reference()
    for rows in batches:
        want = ref.apply(rows)
        kept, n_dup = f.apply(_batch(rows))
        assert n_dup == sum(want)
        expected = [r for r, d in zip(rows, want, strict=True) if not d]
        got = list(zip(kept.sid.tolist(), kept.metric.tolist(), kept.ts_ns.tolist(), strict=True))
        assert got == expected


def test_a_redelivered_message_is_dropped_but_a_new_late_one_is_not() -> None:
    f = DuplicateFilter()
    f.apply(_batch([(0, 0, T0 + 100 * US), (0, 1, T0 + 100 * US), (0, 0, T0 + 160 * US)]))
    kept, n = f.apply(_batch([(0, 0, T0 + 100 * US), (0, 1, T0 + 100 * US), (0, 0, T0 + 130 * US)]))
    assert n == 2
    assert kept.ts_ns.tolist() == [T0 + 130 * US]


def test_a_long_redelivered_backlog_is_caught_whole() -> None:
    """Regression: a fixed ring of 4 timestamps let older redeliveries through."""
    f = DuplicateFilter()
    backlog = [(s, 0, T0 + i * 30 * 10**9) for i in range(40) for s in range(3)]
    f.apply(_batch(backlog))
    _, n = f.apply(_batch(backlog[: len(backlog) // 2]))
    assert n == len(backlog) // 2


def test_readings_older_than_the_retention_are_forgotten() -> None:
    f = DuplicateFilter(retention_ns=60 * 10**9)
    f.apply(_batch([(0, 0, T0)]))
    for i in range(1, 12):  # time moves on by 11 minutes, with compactions
        f.apply(_batch([(0, 0, T0 + i * 60 * 10**9)]))
    _, n = f.apply(_batch([(0, 0, T0)]))
    assert n == 0
    assert f.tracked_readings < 12  # compaction pruned what is past the retention


def test_snapshot_restore_keeps_the_memory() -> None:
    f = DuplicateFilter()
    f.apply(_batch([(1, 0, T0 + 5 * US), (1, 0, T0 + 6 * US)]))
    g = DuplicateFilter.restore(f.snapshot())
    _, n = g.apply(_batch([(1, 0, T0 + 6 * US), (1, 0, T0 + 5 * US), (1, 0, T0 + 7 * US)]))
    assert n == 2


def test_rebasing_far_ahead_keeps_recent_keys() -> None:
    f = DuplicateFilter(retention_ns=3600 * 10**9)
    day = 86_400 * 10**9
    for d in range(10):  # ten days: forces rebases of the 12-day key span
        f.apply(_batch([(2, 1, T0 + d * day)]))
    _, n = f.apply(_batch([(2, 1, T0 + 9 * day)]))
    assert n == 1
