"""Rolling hourly means: numpy rings against a plain-Python reference loop."""

from __future__ import annotations

import io
import math
import random
from collections import defaultdict
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from test_windows import Reading, batch_of, split

from processors._rolling import HOUR_NS, RollingHours, RollingSpec, mean_with_coverage
from urbanpulse import Metric

T0 = 1_700_000_000 * 10**9 // HOUR_NS * HOUR_NS  # an hour boundary
SPEC = RollingSpec.of({Metric.PM25: 4, Metric.CO: 2, Metric.NO2: 1})
TRACKED = (int(Metric.PM25), int(Metric.CO), int(Metric.NO2))


class RefRolling:
    """Per-reading dict loop: keep every reading, answer queries from the definition."""

    def __init__(self, spec: RollingSpec) -> None:
        self.spec = spec
        self.hours: dict[tuple[int, int], dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.max_hour: dict[tuple[int, int], int] = {}

    def update(self, readings: list[Reading]) -> None:
        for sid, metric, ts, value in readings:
            if metric not in self.spec.metrics:
                continue
            h = ts // HOUR_NS
            self.hours[(sid, metric)][h].append(value)
            self.max_hour[(sid, metric)] = max(self.max_hour.get((sid, metric), -1), h)

    def latest_hour(self, sid: int) -> int:
        return max((h for (s, _), h in self.max_hour.items() if s == sid), default=-1)

    def hourly(self, sid: int, metric: int, n: int, end: int) -> list[float]:
        ring = self.spec.hours(metric)
        newest = self.max_hour.get((sid, metric), -1)
        out = []
        for i in range(n):
            h = end - i
            values = self.hours[(sid, metric)].get(h, [])
            # only the last `ring` hours of the stream are retained
            if values and h > newest - ring and end >= 0:
                out.append(math.fsum(values) / len(values))
            else:
                out.append(math.nan)
        return out

    def mean(self, sid: int, metric: int, n: int, end: int, coverage: float) -> float:
        present = [v for v in self.hourly(sid, metric, n, end) if not math.isnan(v)]
        if len(present) < max(1, math.ceil(coverage * n - 1e-9)):
            return math.nan
        return math.fsum(present) / len(present)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Reading], list[int]]:
    reading = st.tuples(
        st.integers(0, 4),
        st.sampled_from([*TRACKED, int(Metric.TEMPERATURE)]),
        st.builds(
            lambda h, j: T0 + h * HOUR_NS + j,
            st.integers(0, 12),
            st.sampled_from([0, 1, HOUR_NS // 2, HOUR_NS - 1]),
        ),
        st.integers(-400, 4000).map(lambda i: i / 8),
    )
    readings = draw(st.lists(reading, max_size=80))
    cuts = draw(st.lists(st.integers(0, len(readings)), max_size=6))
    return readings, cuts


def assert_close(got: NDArray[np.float64], want: list[float] | list[list[float]]) -> None:
    np.testing.assert_allclose(got, np.array(want, dtype=np.float64), rtol=1e-12, atol=1e-12)


def assert_same_state(a: RollingHours, b: RollingHours) -> None:
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.keys() == sb.keys()
    for name in ("metrics", "rings", "count", "hour", "max_hour"):
        # growth slack may differ: compare the common prefix, the rest must be empty
        x, y = sa[name], sb[name]
        n = min(x.shape[0], y.shape[0])
        np.testing.assert_array_equal(x[:n], y[:n], err_msg=name)
        empty = -1 if name in ("hour", "max_hour") else 0
        if name not in ("metrics", "rings"):
            assert (x[n:] == empty).all(), name
            assert (y[n:] == empty).all(), name
    n = min(sa["sum"].shape[0], sb["sum"].shape[0])
    sum_a, sum_b = sa["sum"].astype(np.float64), sb["sum"].astype(np.float64)
    np.testing.assert_allclose(sum_a[:n], sum_b[:n], rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------- properties


@settings(max_examples=50, deadline=None)
@given(streams(), st.sampled_from([0.0, 0.5, 0.75, 1.0]))
def test_queries_match_reference_over_micro_batches(
    case: tuple[list[Reading], list[int]], coverage: float
) -> None:
    readings, cuts = case
    roll, ref = RollingHours(SPEC), RefRolling(SPEC)
    for part in split(readings, cuts):
        roll.update(batch_of(part))
        ref.update(part)
    sids = np.arange(6)  # sid 5 never seen
    latest = roll.latest_hour(sids)
    assert latest.tolist() == [ref.latest_hour(s) for s in range(6)]
    for metric in TRACKED:
        ring = SPEC.hours(metric)
        for n in range(1, ring + 1):
            got = roll.hourly_means(sids, metric, n)
            want = [ref.hourly(s, metric, n, ref.latest_hour(s)) for s in range(6)]
            assert_close(got, want)
            got_mean = roll.mean(sids, metric, n, min_coverage=coverage)
            want_mean = [ref.mean(s, metric, n, ref.latest_hour(s), coverage) for s in range(6)]
            assert_close(got_mean, want_mean)
        # an explicit end hour later than the data (a silent stream loses coverage)
        end = T0 // HOUR_NS + 13
        got = roll.hourly_means(sids, metric, ring, end_hour=end)
        assert_close(got, [ref.hourly(s, metric, ring, end) for s in range(6)])


@settings(max_examples=60, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_state_does_not_depend_on_split_or_order(
    case: tuple[list[Reading], list[int]], rnd: random.Random
) -> None:
    readings, cuts = case
    whole = RollingHours(SPEC)
    whole.update(batch_of(readings))
    parts = RollingHours(SPEC)
    shuffled = list(readings)
    rnd.shuffle(shuffled)
    for part in split(shuffled, cuts):
        parts.update(batch_of(part))
    assert_same_state(whole, parts)


@settings(max_examples=60, deadline=None)
@given(streams(), st.floats(0.0, 1.0))
def test_merge_equals_one_state_over_all_readings(
    case: tuple[list[Reading], list[int]], share: float
) -> None:
    readings, _ = case
    cut = round(share * len(readings))
    a, b, whole = RollingHours(SPEC), RollingHours(SPEC), RollingHours(SPEC)
    a.update(batch_of(readings[:cut]))
    b.update(batch_of(readings[cut:]))
    whole.update(batch_of(readings))
    assert_same_state(a.merge(b), whole)
    assert_same_state(b.merge(a), whole)


@settings(max_examples=30, deadline=None)
@given(streams())
def test_snapshot_restore_roundtrip_through_npz(case: tuple[list[Reading], list[int]]) -> None:
    readings, cuts = case
    roll = RollingHours(SPEC)
    parts = split(readings, cuts) or [[]]
    for part in parts[:-1]:
        roll.update(batch_of(part))
    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], roll.snapshot()))
    buf.seek(0)
    with np.load(buf) as npz:
        restored = RollingHours.restore(dict(npz))
    assert restored.too_old == roll.too_old
    assert_same_state(restored, roll)
    roll.update(batch_of(parts[-1]))
    restored.update(batch_of(parts[-1]))
    assert_same_state(restored, roll)
    assert restored.too_old == roll.too_old


# --------------------------------------------------------------------------- examples


def test_too_old_readings_are_ignored_and_counted() -> None:
    roll = RollingHours(SPEC)  # PM2.5 ring of 4 hours
    pm = int(Metric.PM25)
    assert roll.update(batch_of([(0, pm, T0 + 10 * HOUR_NS, 5.0)])) == 0
    # hour 6 is 4 hours older than 10: outside the ring; hour 7 is inside
    n = roll.update(batch_of([(0, pm, T0 + 6 * HOUR_NS, 99.0), (0, pm, T0 + 7 * HOUR_NS, 3.0)]))
    assert n == 1
    assert roll.too_old == 1
    hm = roll.hourly_means([0], pm, 4)
    assert_close(hm, [[5.0, math.nan, math.nan, 3.0]])
    # within one batch the batch's own newest hour decides
    assert roll.update(batch_of([(1, pm, T0, 1.0), (1, pm, T0 + 4 * HOUR_NS, 2.0)])) == 1
    assert roll.too_old == 2


def test_newer_hour_resets_the_slot_it_takes() -> None:
    roll = RollingHours(SPEC)
    pm = int(Metric.PM25)
    roll.update(batch_of([(0, pm, T0, 10.0), (0, pm, T0 + 1, 20.0)]))
    assert_close(roll.hourly_means([0], pm, 1), [[15.0]])
    roll.update(batch_of([(0, pm, T0 + 4 * HOUR_NS, 1.0)]))  # same slot (4 % 4 == 0)
    assert_close(roll.hourly_means([0], pm, 4), [[1.0, math.nan, math.nan, math.nan]])
    assert roll.count.sum() == 1


def test_mean_weights_hours_equally_and_needs_coverage() -> None:
    roll = RollingHours(SPEC)
    pm = int(Metric.PM25)
    # hour 0: three readings of 10; hour 1: one reading of 40 -> (10 + 40) / 2
    roll.update(batch_of([(0, pm, T0 + k, 10.0) for k in range(3)]))
    roll.update(batch_of([(0, pm, T0 + HOUR_NS, 40.0)]))
    assert_close(roll.mean([0], pm, 2, min_coverage=1.0), [25.0])
    # 2 of 4 hours present: 50 % coverage passes 0.5, fails 0.75
    assert_close(roll.mean([0], pm, 4, min_coverage=0.5), [25.0])
    assert np.isnan(roll.mean([0], pm, 4, min_coverage=0.75)).all()
    # the sensor's other metrics move its end hour: PM loses coverage
    roll.update(batch_of([(0, int(Metric.CO), T0 + 3 * HOUR_NS, 1.0)]))
    assert_close(roll.mean([0], pm, 2, min_coverage=0.5), [math.nan])
    assert_close(roll.mean([0], pm, 4, min_coverage=0.5), [25.0])


def test_mean_with_coverage_counts_hours() -> None:
    hm = np.full((2, 24), np.nan)
    hm[0, :18] = 2.0
    hm[1, :17] = 2.0
    assert_close(mean_with_coverage(hm, 0.75), [2.0, math.nan])


def test_untracked_metrics_are_ignored() -> None:
    roll = RollingHours(SPEC)
    n = roll.update(batch_of([(3, int(Metric.TEMPERATURE), T0, 30.0)]))
    assert n == 0
    assert roll.n_sid == 0
    with pytest.raises(KeyError):
        roll.hourly_means([0], Metric.TEMPERATURE, 1)
    with pytest.raises(ValueError, match="n_hours"):
        roll.hourly_means([0], Metric.PM25, 5)


def test_spec_validation_and_bytes_per_series() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        RollingSpec(((0, 4), (0, 2)))
    with pytest.raises(ValueError, match="hours"):
        RollingSpec.of({Metric.PM25: 0})
    assert SPEC.metrics == (0, 2, 4)
    roll = RollingHours(SPEC)
    assert roll.bytes_per_series == (4 + 2 + 1) * 20 + 3 * 8
    roll.update(batch_of([(9, int(Metric.PM25), T0, 1.0)]))
    assert roll.nbytes == roll.n_sid * roll.bytes_per_series


def test_merge_newer_hour_wins_equal_hours_add() -> None:
    pm = int(Metric.PM25)
    a, b = RollingHours(SPEC), RollingHours(SPEC)
    a.update(batch_of([(0, pm, T0, 10.0), (0, pm, T0 + HOUR_NS, 4.0)]))
    b.update(batch_of([(0, pm, T0 + 4 * HOUR_NS, 2.0), (0, pm, T0 + HOUR_NS, 6.0)]))
    merged = a.merge(b)
    # hour 0 was taken by hour 4 (same slot); hour 1 holds both readings
    assert_close(merged.hourly_means([0], pm, 4), [[2.0, math.nan, math.nan, 5.0]])
    assert merged.count.sum() == 3


def test_merge_refuses_other_spec() -> None:
    with pytest.raises(ValueError, match="merge"):
        RollingHours(SPEC).merge(RollingHours(RollingSpec.of({Metric.PM25: 4})))
