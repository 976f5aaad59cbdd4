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


class Reference:
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.recent: dict[int, list[int]] = {}

    def apply(self, rows: list[tuple[int, int, int]]) -> list[bool]:
        dup = []
        seen_in_batch: set[tuple[int, int, int]] = set()
        for sid, metric, ts in rows:
            d = ts in self.recent.get(sid, []) or (sid, metric, ts) in seen_in_batch
            dup.append(d)
            seen_in_batch.add((sid, metric, ts))
        for (sid, _m, ts), d in zip(rows, dup, strict=True):
            if not d:
                ring = set(self.recent.get(sid, [])) | {ts}
                self.recent[sid] = sorted(ring, reverse=True)[: self.depth]
        return dup


rows_st = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 30)), max_size=60)


@given(batches=st.lists(rows_st, max_size=8), depth=st.integers(1, 5))
@settings(max_examples=200, deadline=None)
def test_matches_the_reference(batches: list[list[tuple[int, int, int]]], depth: int) -> None:
    f, ref = DuplicateFilter(depth), Reference(depth)
    for rows in batches:
        want = ref.apply(rows)
        kept, n_dup = f.apply(_batch(rows))
        assert n_dup == sum(want)
        expected = [r for r, d in zip(rows, want, strict=True) if not d]
        got = list(zip(kept.sid.tolist(), kept.metric.tolist(), kept.ts_ns.tolist(), strict=True))
        assert got == expected


def test_a_redelivered_message_is_dropped_but_a_new_late_one_is_not() -> None:
    f = DuplicateFilter(4)
    f.apply(_batch([(0, 0, 100), (0, 1, 100), (0, 0, 160)]))
    kept, n = f.apply(_batch([(0, 0, 100), (0, 1, 100), (0, 0, 130)]))
    assert n == 2
    assert kept.ts_ns.tolist() == [130]


def test_snapshot_restore_keeps_the_memory() -> None:
    f = DuplicateFilter(2)
    f.apply(_batch([(1, 0, 5), (1, 0, 6)]))
    g = DuplicateFilter.restore(f.snapshot())
    _, n = g.apply(_batch([(1, 0, 6), (1, 0, 5), (1, 0, 7)]))
    assert n == 2
