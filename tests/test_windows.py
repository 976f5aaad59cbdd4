"""Tumbling windows: numpy kernels against a plain-Python reference."""

from __future__ import annotations

import io
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import (
    MultiWindows,
    TumblingWindows,
    WindowAggregates,
    WindowPartials,
    WindowSpec,
    merge_partials,
    partial_aggregate,
    series_metric,
)
from urbanpulse import ReadingBatch
from urbanpulse._schema import N_METRICS

I64_MAX = int(np.iinfo(np.int64).max)
MS = 1_000_000

Reading = tuple[int, int, int, float]  # sid, metric, ts_ns, value
Row = tuple[int, int, int, int, float, float, float, float, float, float]
# sid, start_ns, metric, count, mean, min, max, std, first, last


# --------------------------------------------------------------------------- reference


@dataclass
class RefWindows:
    """Reading-by-reading dict loop with the documented semantics."""

    spec: WindowSpec
    open: dict[tuple[int, int, int], list[tuple[int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    max_ts: dict[int, int] = field(default_factory=dict)
    global_max: int = -1

    def horizon_ns(self, sid: int) -> int:
        """Windows of sid ending at or before this time are closed (Python ints)."""
        grace, idle = self.spec.grace_ns, self.spec.idle_ns
        return max(self.max_ts.get(sid, -1) - grace, self.global_max - grace - idle)

    def closed(self, sid: int, win: int) -> bool:
        return (win + 1) * self.spec.window_ns <= self.horizon_ns(sid)

    def update(self, readings: list[Reading]) -> tuple[list[Row], list[bool]]:
        late = []
        for sid, metric, ts, value in readings:  # horizons as before the batch
            win = ts // self.spec.window_ns
            is_late = self.closed(sid, win)
            late.append(is_late)
            if not is_late:
                self.open[(sid, metric, win)].append((ts, value))
        for sid, _, ts, _ in readings:
            self.max_ts[sid] = max(self.max_ts.get(sid, -1), ts)
            self.global_max = max(self.global_max, ts)
        closed = [k for k in self.open if self.closed(k[0], k[2])]
        return self._emit(closed), late

    def flush(self) -> list[Row]:
        return self._emit(list(self.open))

    def _emit(self, keys: list[tuple[int, int, int]]) -> list[Row]:
        rows = []
        for key in keys:
            sid, metric, win = key
            vals = self.open.pop(key)
            values = [v for _, v in vals]
            n = len(values)
            mean = math.fsum(values) / n
            std = (
                math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
                if n > 1
                else math.nan
            )
            first_ts, first = vals[0]
            last_ts, last = vals[0]
            for ts, v in vals[1:]:
                if ts < first_ts:
                    first_ts, first = ts, v
                if ts >= last_ts:
                    last_ts, last = ts, v
            start = win * self.spec.window_ns
            rows.append((sid, start, metric, n, mean, min(values), max(values), std, first, last))
        return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def rows_of(agg: WindowAggregates) -> list[Row]:
    return [
        (
            int(agg.sid[i]),
            int(agg.start_ns[i]),
            int(agg.metric[i]),
            int(agg.count[i]),
            float(agg.mean[i]),
            float(agg.min[i]),
            float(agg.max[i]),
            float(agg.std[i]),
            float(agg.first[i]),
            float(agg.last[i]),
        )
        for i in range(len(agg))
    ]


def assert_rows_match(got: list[Row], want: list[Row]) -> None:
    assert [r[:4] for r in got] == [r[:4] for r in want]
    for g, w in zip(got, want, strict=True):
        scale = max(abs(w[5]), abs(w[6]), 1e-300)
        assert (g[5], g[6], g[8], g[9]) == (w[5], w[6], w[8], w[9]), (g, w)
        assert math.isclose(g[4], w[4], rel_tol=1e-9, abs_tol=1e-12 * scale), (g, w)
        if math.isnan(w[7]):
            assert math.isnan(g[7]), (g, w)
        else:
            # std near 0 is relative to nothing: floor the tolerance at the data scale.
            assert math.isclose(g[7], w[7], rel_tol=1e-9, abs_tol=1e-12 * scale), (g, w)


def same_rows(a: list[Row], b: list[Row]) -> bool:
    """Bit-for-bit equal (NaN std included)."""
    return repr(a) == repr(b)


def batch_of(readings: list[Reading]) -> ReadingBatch:
    if not readings:
        return ReadingBatch.empty()
    sid, metric, ts, value = zip(*readings, strict=True)
    return ReadingBatch(
        sid=np.array(sid, np.int32),
        metric=np.array(metric, np.uint8),
        ts_ns=np.array(ts, np.int64),
        value=np.array(value, np.float64),
    )


def split(readings: list[Reading], cuts: list[int]) -> list[list[Reading]]:
    bounds = sorted({min(c, len(readings)) for c in cuts} | {0, len(readings)})
    return [readings[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------- strategies

SPECS = st.builds(
    WindowSpec,
    window_ms=st.sampled_from([1, 3, 1000]),
    grace_ms=st.sampled_from([0, 1, 2, 3, 1000, 1500]),
    idle_ms=st.sampled_from([0, 2, 5000, 10**9]),
)
VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(lambda i: i / 64),
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)
BASES = st.sampled_from([0, 1_700_000_000_000_000_000, I64_MAX - 10**12])


@st.composite
def streams(draw: st.DrawFn) -> tuple[WindowSpec, list[Reading], list[int]]:
    spec = draw(SPECS)
    base = draw(BASES)
    # Steps of a quarter window hit boundaries exactly and make equal timestamps.
    step = max(spec.window_ns // 4, 1)
    reading = st.tuples(
        st.integers(0, 3),
        st.sampled_from([0, 1, N_METRICS - 1]),
        st.builds(
            lambda k, j: base + k * step + j,
            st.integers(0, 40),
            st.sampled_from([0, 0, 1, step - 1]),
        ),
        VALUES,
    )
    readings = draw(st.lists(reading, max_size=120))
    cuts = draw(st.lists(st.integers(0, len(readings)), max_size=8))
    return spec, readings, cuts


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(streams())
def test_windows_match_reference_over_micro_batches(
    case: tuple[WindowSpec, list[Reading], list[int]],
) -> None:
    spec, readings, cuts = case
    kernel, ref = TumblingWindows(spec), RefWindows(spec)
    for part in split(readings, cuts):
        update = kernel.update(batch_of(part))
        want_rows, want_late = ref.update(part)
        assert update.late_mask.tolist() == want_late
        assert_rows_match(rows_of(update.closed), want_rows)
        assert update.closed.window_ms == spec.window_ms
    assert_rows_match(rows_of(kernel.flush_all()), ref.flush())
    assert kernel.open_windows == 0


def partials_equal(a: WindowPartials, b: WindowPartials, *, exact: bool) -> None:
    assert len(a) == len(b)
    for name in ("sm", "win", "count", "min", "max", "first_ts", "first", "last_ts", "last"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("mean", "m2"):
        if exact:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        else:
            scale = np.maximum(np.abs(a.min), np.abs(a.max)) + 1e-300
            tol = scale * (scale if name == "m2" else 1) * a.count * 1e-12
            assert np.all(np.abs(getattr(a, name) - getattr(b, name)) <= tol), name


@settings(max_examples=120, deadline=None)
@given(streams(), st.integers(0, 120))
def test_dense_and_sort_paths_agree_and_merge_is_split_invariant(
    case: tuple[WindowSpec, list[Reading], list[int]], cut: int
) -> None:
    spec, readings, _ = case
    if not readings:
        return
    b = batch_of(readings)
    sm = series_metric(b.sid, b.metric)
    whole_sort = partial_aggregate(sm, b.ts_ns, b.value, spec.window_ns, path="sort")
    win = b.ts_ns // spec.window_ns
    if (int(sm.max()) - int(sm.min()) + 1) * (int(win.max()) - int(win.min()) + 1) < 1 << 24:
        whole_dense = partial_aggregate(sm, b.ts_ns, b.value, spec.window_ns, path="dense")
        partials_equal(whole_dense, whole_sort, exact=True)
    c = min(cut, len(readings))
    left = partial_aggregate(sm[:c], b.ts_ns[:c], b.value[:c], spec.window_ns)
    right = partial_aggregate(sm[c:], b.ts_ns[c:], b.value[c:], spec.window_ns)
    partials_equal(merge_partials(left, right), whole_sort, exact=False)


@settings(max_examples=60, deadline=None)
@given(streams(), st.sets(st.integers(0, 3)))
def test_merged_states_of_a_series_partition_equal_one_state(
    case: tuple[WindowSpec, list[Reading], list[int]], part_a: set[int]
) -> None:
    spec, readings, cuts = case
    spec = WindowSpec(spec.window_ms, spec.grace_ms, idle_ms=10**12)  # idle bound is per process
    one, a, b = TumblingWindows(spec), TumblingWindows(spec), TumblingWindows(spec)
    closed_one: list[Row] = []
    closed_ab: list[Row] = []
    for part in split(readings, cuts):
        closed_one += rows_of(one.update(batch_of(part)).closed)
        closed_ab += rows_of(a.update(batch_of([r for r in part if r[0] in part_a])).closed)
        closed_ab += rows_of(b.update(batch_of([r for r in part if r[0] not in part_a])).closed)
    assert_rows_match(sorted(closed_ab), sorted(closed_one))
    merged = a.state.merge(b.state).snapshot()
    single = one.state.snapshot()
    n_sid = max(len(merged["sid_max_ts_ns"]), len(single["sid_max_ts_ns"]))
    for snap in (merged, single):  # watermark arrays may differ in spare capacity
        pad = np.full(n_sid - len(snap["sid_max_ts_ns"]), -1, np.int64)
        snap["sid_max_ts_ns"] = np.concatenate([snap["sid_max_ts_ns"], pad])
    assert merged.keys() == single.keys()
    for key in single:
        np.testing.assert_array_equal(merged[key], single[key], err_msg=key)


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(0, 8))
def test_snapshot_restore_round_trip(
    case: tuple[WindowSpec, list[Reading], list[int]], at: int
) -> None:
    spec, readings, cuts = case
    parts = split(readings, cuts)
    at = min(at, len(parts))
    live = TumblingWindows(spec)
    for part in parts[:at]:
        live.update(batch_of(part))
    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], live.snapshot()))
    buf.seek(0)
    with np.load(buf) as saved:
        restored = TumblingWindows.restore(dict(saved))
    assert restored.spec == spec
    assert restored.open_windows == live.open_windows
    for part in parts[at:]:
        u_live, u_rest = live.update(batch_of(part)), restored.update(batch_of(part))
        assert same_rows(rows_of(u_rest.closed), rows_of(u_live.closed))
        np.testing.assert_array_equal(u_rest.late_mask, u_live.late_mask)
    assert same_rows(rows_of(restored.flush_all()), rows_of(live.flush_all()))


# --------------------------------------------------------------------------- examples

W = 60_000 * MS  # 1 min
T0 = 1_700_000_100_000_000_000  # a window boundary (multiple of 15 min)


def test_late_readings_are_flagged_and_not_aggregated() -> None:
    tw = TumblingWindows(WindowSpec(60_000, grace_ms=5_000))
    u1 = tw.update(batch_of([(0, 0, T0 + 1, 1.0), (0, 0, T0 + W + 6_000 * MS, 2.0)]))
    # the second reading moved sid 0's watermark to T0 + W + 1 s: window 0 closed
    assert rows_of(u1.closed)[0][:4] == (0, T0, 0, 1)
    assert not u1.late_mask.any()
    u2 = tw.update(batch_of([(0, 1, T0 + 5, 3.0), (1, 0, T0 + 5, 4.0), (0, 0, T0 + W + 1, 5.0)]))
    # sid 0's first window is closed (any metric); sid 1 has its own watermark
    assert u2.late_mask.tolist() == [True, False, False]
    assert len(u2.closed) == 0
    rows = rows_of(tw.flush_all())
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(0, T0 + W, 0, 2), (1, T0, 0, 1)]


def test_reading_at_exact_boundary_starts_the_next_window() -> None:
    tw = TumblingWindows(WindowSpec(60_000, grace_ms=0))
    u = tw.update(batch_of([(3, 2, T0 + W - 1, 1.0), (3, 2, T0 + W, 2.0)]))
    # watermark T0 + W == end of the first window: it closes, the second stays open
    assert same_rows(rows_of(u.closed), [(3, T0, 2, 1, 1.0, 1.0, 1.0, math.nan, 1.0, 1.0)])
    assert tw.open_windows == 1
    assert tw.update(batch_of([(3, 2, T0 + W - 1, 9.0)])).late_mask.tolist() == [True]


def test_idle_bound_closes_a_silent_sensors_window() -> None:
    tw = TumblingWindows(WindowSpec(60_000, grace_ms=0, idle_ms=120_000))
    tw.update(batch_of([(0, 0, T0 + 1, 1.0), (1, 0, T0 + 2, 2.0)]))
    u = tw.update(batch_of([(1, 0, T0 + 3 * W - 1, 3.0)]))
    assert [r[:2] for r in rows_of(u.closed)] == [(1, T0)]  # sid 0 still within idle
    u = tw.update(batch_of([(1, 0, T0 + 3 * W, 4.0)]))
    # global max - idle == T0 + W >= end of sid 0's window
    assert [r[:2] for r in rows_of(u.closed)] == [(0, T0), (1, T0 + 2 * W)]
    assert tw.update(batch_of([(0, 0, T0 + 5, 1.0)])).late_mask.tolist() == [True]


def test_statistics_ties_and_negative_values() -> None:
    tw = TumblingWindows(WindowSpec(60_000, grace_ms=0))
    b1 = [(0, 0, T0 + 10, -1.0), (0, 0, T0 + 5, -2.0), (0, 0, T0 + 5, -3.0)]
    b2 = [(0, 0, T0 + 10, -4.0), (0, 0, T0 + 5, -5.0), (0, 0, T0 + 7, -6.5)]
    tw.update(batch_of(b1))
    tw.update(batch_of(b2))
    (row,) = rows_of(tw.flush_all())
    values = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.5]
    assert row[:4] == (0, T0, 0, 6)
    assert row[5:7] == (-6.5, -1.0)
    assert row[8:] == (-2.0, -4.0)  # first: earliest arrival at ts 5; last: latest at ts 10
    assert row[4] == pytest.approx(sum(values) / 6, rel=1e-12)
    assert row[7] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-12)


def test_empty_batch_and_single_reading() -> None:
    tw = TumblingWindows(WindowSpec(1000, grace_ms=0))
    u = tw.update(ReadingBatch.empty())
    assert len(u.closed) == 0
    assert u.late_mask.shape == (0,)
    assert len(partial_aggregate(*(np.empty(0, np.int64),) * 2, np.empty(0), 10)) == 0
    tw.update(batch_of([(7, 3, 0, 2.5)]))
    agg = tw.flush_all()
    assert rows_of(agg)[0][:7] == (7, 0, 3, 1, 2.5, 2.5, 2.5)
    assert math.isnan(agg.std[0])
    assert agg.sid.dtype == np.int32
    assert agg.metric.dtype == np.uint8
    assert len(tw.flush_all()) == 0
    assert len(WindowAggregates.empty(1000)) == 0


def test_huge_time_span_in_one_batch() -> None:
    spec = WindowSpec(1, grace_ms=0)
    readings = [
        (2, 1, I64_MAX, 1.0),
        (1, 0, 0, 2.0),
        (2, 1, 0, 3.0),
        (1, 0, I64_MAX - 1, 4.0),
        (2, 0, 123_456_789, 5.0),
    ]
    tw, ref = TumblingWindows(spec), RefWindows(spec)
    u = tw.update(batch_of(readings))
    want, _ = ref.update(readings)
    assert_rows_match(rows_of(u.closed), want)
    assert_rows_match(rows_of(tw.flush_all()), ref.flush())
    b = batch_of(readings)
    sm = series_metric(b.sid, b.metric)
    with pytest.raises(ValueError, match="dense"):
        partial_aggregate(sm, b.ts_ns, b.value, spec.window_ns, path="dense")
    # the packed (offset, arrival) key does not fit for a 1-day window: fallback path
    day = 86_400_000 * MS
    p = partial_aggregate(sm, b.ts_ns, b.value, day)
    q = partial_aggregate(
        np.zeros(200_000, np.int64), np.arange(200_000) * 3, np.ones(200_000), day
    )
    assert len(p) == 5
    assert (int(q.first_ts[0]), int(q.last_ts[0]), int(q.count[0])) == (0, 599_997, 200_000)


def test_first_last_ties_when_packed_key_does_not_fit() -> None:
    n = 110_000  # n * (1 day in ns) > int64 max: the two-pass tie-break is used
    ts = np.arange(n, dtype=np.int64) % 7
    value = np.arange(n, dtype=np.float64)
    sm = np.zeros(n, np.int64)
    for window_ns in (86_400_000 * MS, MS):  # fallback, packed
        p = partial_aggregate(sm, ts, value, window_ns)
        last = n - 1 - (n - 1 - 6) % 7
        assert (p.first_ts[0], p.first[0], p.last_ts[0], p.last[0]) == (0, 0.0, 6, last)


def test_output_sorted_by_sid_start_metric() -> None:
    tw = TumblingWindows(WindowSpec(60_000, grace_ms=120_000))
    readings = [(s, m, T0 + k * W, 1.0) for s in (2, 0) for m in (4, 1) for k in (1, 0)]
    tw.update(batch_of(readings))
    rows = rows_of(tw.flush_all())
    keys = [r[:3] for r in rows]
    assert keys == sorted(keys)
    assert len(keys) == 8


def test_multi_windows() -> None:
    mw = MultiWindows([WindowSpec(900_000, 0), WindowSpec(60_000, 0)])
    assert mw.finest_ms == 60_000
    ups = mw.update(batch_of([(0, 0, T0 + 1, 1.0), (0, 0, T0 + W, 2.0)]))
    assert list(ups) == [60_000, 900_000]
    assert len(ups[60_000].closed) == 1
    assert len(ups[900_000].closed) == 0
    ups = mw.update(batch_of([(0, 0, T0 + 2, 3.0)]))
    assert ups[60_000].late_mask.tolist() == [True]
    assert ups[900_000].late_mask.tolist() == [False]
    restored = MultiWindows.restore(mw.snapshot())
    assert restored.open_windows == mw.open_windows == 2
    assert restored.state_nbytes == mw.state_nbytes > 0
    flushed = restored.flush_all()
    assert rows_of(flushed[900_000])[0][3] == 3
    with pytest.raises(ValueError, match="duplicate"):
        MultiWindows([WindowSpec(1000, 0), WindowSpec(1000, 5)])


def test_state_merge_combines_overlapping_windows() -> None:
    spec = WindowSpec(60_000, grace_ms=0)
    a, b = TumblingWindows(spec), TumblingWindows(spec)
    a.update(batch_of([(0, 0, T0 + 5, 1.0), (1, 0, T0 + 5, 7.0)]))
    b.update(batch_of([(0, 0, T0 + 5, 3.0), (0, 0, T0 + 1, 2.0)]))
    merged = TumblingWindows(spec, a.state.merge(b.state))
    rows = rows_of(merged.flush_all())
    assert [r[:4] for r in rows] == [(0, T0, 0, 3), (1, T0, 0, 1)]
    assert rows[0][8:] == (2.0, 3.0)
    assert a.open_windows == 2  # inputs untouched
    assert b.open_windows == 1


def test_merge_keeps_windows_the_other_watermark_closed() -> None:
    spec = WindowSpec(60_000, grace_ms=0, idle_ms=10**9)
    a, b = TumblingWindows(spec), TumblingWindows(spec)
    a.update(batch_of([(0, 0, T0 + 5, 1.0), (0, 1, T0 + 6, 2.0)]))
    b.update(batch_of([(0, 0, T0 + 5 * W, 3.0)]))
    merged = TumblingWindows(spec, a.state.merge(b.state))
    assert merged.open_windows == 3
    u = merged.update(ReadingBatch.empty())  # a's windows are closed by b's watermark
    assert [r[:4] for r in rows_of(u.closed)] == [(0, T0, 0, 1), (0, T0, 1, 1)]
    assert [r[:4] for r in rows_of(merged.flush_all())] == [(0, T0 + 5 * W, 0, 1)]


def test_ring_wraps_and_pops_in_window_order() -> None:
    # grace of 2.5 windows: four windows per stream may be open at once
    spec = WindowSpec(1000, grace_ms=2500)
    tw, ref = TumblingWindows(spec), RefWindows(spec)
    s = 1_000 * MS
    stream = [(1, 0, k * s + 7, float(k)) for k in (5, 6, 7, 8)] + [(1, 0, 4 * s, 9.0)]
    last = [stream[4], (1, 0, 5 * s + 1, 4.0), (1, 0, 20 * s, 0.0)]  # late, closes now, closes
    for part in ([stream[0]], stream[1:4], last):
        u = tw.update(batch_of(part))
        want, late = ref.update(part)
        assert u.late_mask.tolist() == late
        assert_rows_match(rows_of(u.closed), want)
    assert [r[1] // s for r in want] == [5, 6, 7, 8]


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="window_ms"):
        WindowSpec(0, 0)
    with pytest.raises(ValueError, match="grace_ms"):
        WindowSpec(1000, -1)
    assert WindowSpec(1000, 0).idle_ms == 300_000
