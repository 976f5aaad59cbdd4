"""Per-series rolling hourly means, as struct-of-arrays numpy kernels.

Regulatory indices average concentrations over whole hours: ISPU and the US AQI
use 24 h means for PM, 8 h means for CO and O3, 1 h means for NO2, and the PM
NowCast needs the last 12 hourly means. ``RollingHours`` keeps, per (series,
tracked metric) stream, a ring of ``H`` hourly buckets ``(sum, count)``.

Hours
    ``hour = ts_ns // 3_600_000_000_000`` (event time, floor division; UTC hours
    since the epoch). Hour ``h`` of a stream sits in ring slot ``h % H``.

Layout
    One row of ``row_width = sum(H_m)`` slots per series id; metric ``m`` owns the
    slots ``[offset_m, offset_m + H_m)`` of the row. ``sum`` (float64), ``count``
    (int32) and ``hour`` (int64, -1 = empty) are flat arrays of
    ``n_sid * row_width`` slots; ``max_hour`` (int64, -1 = nothing seen) holds the
    newest hour seen per stream (``n_sid * n_tracked``). Readings of metrics that
    are not tracked are ignored (not counted).

Update (driven by event time, order-independent)
    1. ``max_hour`` of each stream is advanced with the batch first.
    2. A reading whose hour is ``<= max_hour - H`` (older than the ring of its
       stream, counting this batch's newest hour) is ignored and counted in
       ``too_old``.
    3. Every other reading goes to slot ``h % H``; a slot that still holds an older
       hour is reset first ("a newer hour takes the slot").
    The retained state is therefore exactly "the hours ``(max_hour - H, max_hour]``
    of each stream", whatever the order and micro-batch split of the readings
    (slots holding hours that fell out of the ring are stale; ``snapshot`` and
    ``merge`` clear them, queries ignore them). Only ``too_old`` depends on order.

Queries
    ``hourly_means`` gives the mean of each of the last ``n`` hours ending at
    ``end_hour`` (the current, possibly incomplete, hour is included; column 0 is
    the end hour, column ``i`` is ``i`` hours ago; NaN when the hour has no
    reading). ``mean`` is the mean of those hourly means (every hour weighs the
    same, however many readings it holds), NaN unless at least
    ``ceil(min_coverage * n)`` of the ``n`` hours have data. ``end_hour``
    defaults to the newest hour of the series over all tracked metrics, so a
    pollutant that stopped reporting while the sensor goes on loses coverage.
    Queries are meant for ``end_hour >= max_hour`` of the stream; for an earlier
    end the hours the ring has already overwritten count as missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from urbanpulse._batch import ReadingBatch
from urbanpulse._schema import N_METRICS, Metric

__all__ = [
    "DEFAULT_ROLLING_SPEC",
    "HOUR_NS",
    "RollingHours",
    "RollingSpec",
    "mean_with_coverage",
]

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
F64 = NDArray[np.float64]

HOUR_NS: Final = 3_600_000_000_000
#: Refuse ring lengths beyond this (a year of hours): a typo, not a config.
_MAX_RING: Final = 24 * 366


@dataclass(frozen=True, slots=True)
class RollingSpec:
    """Which metrics are tracked and how many hours each keeps (ring length ``H``).

    ``rings`` is a tuple of ``(metric code, hours)`` pairs, sorted by metric and
    unique; ``RollingSpec.of({Metric.PM25: 24, ...})`` builds one from a mapping.
    """

    rings: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        rings = tuple(sorted((int(m), int(h)) for m, h in self.rings))
        metrics = [m for m, _ in rings]
        if not rings:
            raise ValueError("a rolling spec needs at least one metric")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"duplicate metrics in rolling spec: {metrics}")
        for m, h in rings:
            if not 0 <= m < N_METRICS:
                raise ValueError(f"unknown metric code {m}")
            if not 1 <= h <= _MAX_RING:
                raise ValueError(f"ring of metric {m} must hold 1..{_MAX_RING} hours, got {h}")
        object.__setattr__(self, "rings", rings)

    @classmethod
    def of(cls, hours_by_metric: Mapping[Metric, int] | Mapping[int, int]) -> RollingSpec:
        return cls(tuple((int(m), int(h)) for m, h in hours_by_metric.items()))

    @property
    def metrics(self) -> tuple[int, ...]:
        return tuple(m for m, _ in self.rings)

    def hours(self, metric: Metric | int) -> int:
        for m, h in self.rings:
            if m == int(metric):
                return h
        raise KeyError(f"metric {int(metric)} is not tracked")


#: Rings long enough for the default ISPU and US AQI averaging (PM 24 h and the
#: 12 h NowCast, CO/O3 8 h, SO2 24 h for the AQI >= 200 rule, NO2 1 h).
DEFAULT_ROLLING_SPEC: Final = RollingSpec.of(
    {
        Metric.PM25: 24,
        Metric.PM10: 24,
        Metric.NO2: 1,
        Metric.O3: 8,
        Metric.CO: 8,
        Metric.SO2: 24,
    }
)


class RollingHours:
    """Hourly (sum, count) rings per (series, metric); see the module docstring."""

    __slots__ = (
        "_col",
        "_offset",
        "_ring",
        "_slot_col",
        "count",
        "hour",
        "max_hour",
        "n_sid",
        "row_width",
        "spec",
        "sum",
        "too_old",
    )

    def __init__(self, spec: RollingSpec = DEFAULT_ROLLING_SPEC) -> None:
        self.spec = spec
        metrics = np.array(spec.metrics, dtype=np.int64)
        ring = np.array([h for _, h in spec.rings], dtype=np.int64)
        #: column of each metric code (-1: not tracked)
        self._col = np.full(N_METRICS, -1, dtype=np.int64)
        self._col[metrics] = np.arange(metrics.shape[0])
        self._ring = ring
        self._offset = np.concatenate([[0], np.cumsum(ring)[:-1]]).astype(np.int64)
        self.row_width = int(ring.sum())
        #: column owning each slot of a row
        self._slot_col = np.repeat(np.arange(ring.shape[0]), ring)
        self.n_sid = 0
        self.sum: F64 = np.empty(0, np.float64)
        self.count: I32 = np.empty(0, np.int32)
        self.hour: I64 = np.empty(0, np.int64)
        self.max_hour: I64 = np.empty(0, np.int64)
        self.too_old = 0

    @property
    def n_tracked(self) -> int:
        return int(self._ring.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.sum.nbytes + self.count.nbytes + self.hour.nbytes + self.max_hour.nbytes)

    @property
    def bytes_per_series(self) -> int:
        """State bytes per series id (every sid of the registry has a row)."""
        return self.row_width * (8 + 4 + 8) + self.n_tracked * 8

    def _reserve(self, n_sid: int) -> None:
        have = self.n_sid
        if n_sid <= have:
            return
        n_sid = max(n_sid, have + have // 4)
        w, k = self.row_width, self.n_tracked
        self.sum = _grow(self.sum, n_sid * w, 0.0)
        self.count = _grow(self.count, n_sid * w, 0)
        self.hour = _grow(self.hour, n_sid * w, -1)
        self.max_hour = _grow(self.max_hour, n_sid * k, -1)
        self.n_sid = n_sid

    # -- update

    def update(self, batch: ReadingBatch) -> int:
        """Fold a micro-batch in; returns how many readings were too old (ignored)."""
        if len(batch) == 0:
            return 0
        col = self._col[batch.metric]
        tracked = col >= 0
        if bool(tracked.all()):
            sid, ts, value = batch.sid.astype(np.int64), batch.ts_ns, batch.value
        else:
            col = col[tracked]
            if col.shape[0] == 0:
                return 0
            sid = batch.sid[tracked].astype(np.int64)
            ts, value = batch.ts_ns[tracked], batch.value[tracked]
        self._reserve(int(sid.max()) + 1)
        hour = ts // HOUR_NS
        sm = sid * self.n_tracked + col
        np.maximum.at(self.max_hour, sm, hour)
        ring = self._ring[col]
        fresh = hour > self.max_hour[sm] - ring
        n_old = int(fresh.shape[0] - np.count_nonzero(fresh))
        if n_old:
            self.too_old += n_old
            sid, col, hour, value, ring = (
                sid[fresh],
                col[fresh],
                hour[fresh],
                value[fresh],
                ring[fresh],
            )
        slot = sid * self.row_width + self._offset[col] + hour % ring
        reset = self.hour[slot] != hour
        if bool(reset.any()):
            rs = slot[reset]
            self.sum[rs] = 0.0
            self.count[rs] = 0
            self.hour[rs] = hour[reset]
        np.add.at(self.sum, slot, value)
        np.add.at(self.count, slot, 1)
        return n_old

    # -- queries

    def _column(self, metric: Metric | int) -> int:
        if not 0 <= int(metric) < N_METRICS or self._col[int(metric)] < 0:
            raise KeyError(f"metric {int(metric)} is not tracked")
        return int(self._col[int(metric)])

    def latest_hour(self, sid: ArrayLike) -> I64:
        """Newest hour seen per series over all tracked metrics (-1: none)."""
        sid = np.asarray(sid, dtype=np.int64)
        out = np.full(sid.shape[0], -1, np.int64)
        known = (sid >= 0) & (sid < self.n_sid)
        if bool(known.any()):
            grid = self.max_hour.reshape(self.n_sid, self.n_tracked)
            out[known] = grid[sid[known]].max(axis=1)
        return out

    def hourly_means(
        self,
        sid: ArrayLike,
        metric: Metric | int,
        n_hours: int,
        *,
        end_hour: ArrayLike | None = None,
    ) -> F64:
        """``(len(sid), n_hours)`` hourly means; column ``i`` is ``end_hour - i``.

        NaN where the hour has no reading (or the sid is unknown). ``end_hour``
        (scalar or per sid) defaults to ``latest_hour(sid)``.
        """
        c = self._column(metric)
        h_ring = int(self._ring[c])
        if not 1 <= n_hours <= h_ring:
            raise ValueError(f"n_hours must be in 1..{h_ring} for metric {int(metric)}")
        sid = np.asarray(sid, dtype=np.int64)
        end = (
            self.latest_hour(sid)
            if end_hour is None
            else np.broadcast_to(np.asarray(end_hour, dtype=np.int64), sid.shape)
        )
        out = np.full((sid.shape[0], n_hours), np.nan)
        known = (sid >= 0) & (sid < self.n_sid) & (end >= 0)
        if not bool(known.any()):
            return out
        hours = end[known][:, None] - np.arange(n_hours, dtype=np.int64)
        slot = (sid[known] * self.row_width + int(self._offset[c]))[:, None] + hours % h_ring
        hit = self.hour[slot] == hours
        part = np.full(hours.shape, np.nan)
        np.divide(self.sum[slot], self.count[slot], out=part, where=hit)
        out[known] = part
        return out

    def mean(
        self,
        sid: ArrayLike,
        metric: Metric | int,
        n_hours: int,
        *,
        end_hour: ArrayLike | None = None,
        min_coverage: float = 0.75,
    ) -> F64:
        """Mean of the hourly means of the last ``n_hours`` hours ending at ``end_hour``.

        NaN unless at least ``max(1, ceil(min_coverage * n_hours))`` hours have data.
        """
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
        hm = self.hourly_means(sid, metric, n_hours, end_hour=end_hour)
        return mean_with_coverage(hm, min_coverage)

    # -- persistence and scale-out

    def _stale(self) -> NDArray[np.bool_]:
        """Slots holding an hour that fell out of its stream's ring."""
        w, k = self.row_width, self.n_tracked
        hour = self.hour.reshape(self.n_sid, w)
        newest = self.max_hour.reshape(self.n_sid, k)[:, self._slot_col]
        stale: NDArray[np.bool_] = (hour >= 0) & (hour <= newest - self._ring[self._slot_col])
        return stale.ravel()

    def _clear_stale(self) -> None:
        stale = np.flatnonzero(self._stale())
        self.sum[stale] = 0.0
        self.count[stale] = 0
        self.hour[stale] = -1

    def snapshot(self) -> dict[str, NDArray[np.generic]]:
        """Plain arrays (copies, stale slots cleared), savable with ``np.savez``."""
        self._clear_stale()
        return {
            "metrics": np.array(self.spec.metrics, dtype=np.int64),
            "rings": np.array([h for _, h in self.spec.rings], dtype=np.int64),
            "sum": self.sum.copy(),
            "count": self.count.copy(),
            "hour": self.hour.copy(),
            "max_hour": self.max_hour.copy(),
            "too_old": np.array(self.too_old, dtype=np.int64),
        }

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]]) -> RollingHours:
        metrics = [int(m) for m in np.asarray(snap["metrics"])]
        rings = [int(h) for h in np.asarray(snap["rings"])]
        state = cls(RollingSpec(tuple(zip(metrics, rings, strict=True))))
        n_slots = int(np.asarray(snap["sum"]).shape[0])
        if n_slots % state.row_width:
            raise ValueError("snapshot arrays do not match the rolling spec")
        n_sid = n_slots // state.row_width
        state.n_sid = n_sid
        state.sum = np.array(snap["sum"], dtype=np.float64)
        state.count = np.array(snap["count"], dtype=np.int32)
        state.hour = np.array(snap["hour"], dtype=np.int64)
        state.max_hour = np.array(snap["max_hour"], dtype=np.int64)
        for name, arr, n in (
            ("count", state.count, n_slots),
            ("hour", state.hour, n_slots),
            ("max_hour", state.max_hour, n_sid * state.n_tracked),
        ):
            if arr.shape[0] != n:
                raise ValueError(f"snapshot column {name} has {arr.shape[0]} rows, expected {n}")
        state.too_old = int(snap["too_old"])
        return state

    def merge(self, other: RollingHours) -> RollingHours:
        """Combined state of two instances (e.g. a partition of the series, or two
        halves of a stream): per slot the newer hour wins, equal hours add up;
        ``too_old`` counters add up. Pure (returns a new instance)."""
        if other.spec != self.spec:
            raise ValueError(f"cannot merge rolling states of {self.spec} and {other.spec}")
        out = RollingHours(self.spec)
        out._reserve(max(self.n_sid, other.n_sid))
        n_a, n_b = self.sum.shape[0], other.sum.shape[0]
        k_a, k_b = self.max_hour.shape[0], other.max_hour.shape[0]
        out.max_hour[:k_a] = self.max_hour
        out.max_hour[:k_b] = np.maximum(out.max_hour[:k_b], other.max_hour)
        out.hour[:n_a] = self.hour
        out.hour[:n_b] = np.maximum(out.hour[:n_b], other.hour)
        a_wins = out.hour[:n_a] == self.hour
        out.sum[:n_a] = np.where(a_wins, self.sum, 0.0)
        out.count[:n_a] = np.where(a_wins, self.count, 0)
        b_wins = out.hour[:n_b] == other.hour
        out.sum[:n_b] += np.where(b_wins, other.sum, 0.0)
        out.count[:n_b] += np.where(b_wins, other.count, 0)
        out.too_old = self.too_old + other.too_old
        out._clear_stale()
        return out


def mean_with_coverage(hourly: F64, min_coverage: float) -> F64:
    """Row means of a ``(n, k)`` array of hourly means, NaN where fewer than
    ``max(1, ceil(min_coverage * k))`` entries are present (pure)."""
    k = int(hourly.shape[1])
    need = max(1, math.ceil(min_coverage * k - 1e-9))
    present = ~np.isnan(hourly)
    n_present = present.sum(axis=1)
    total = np.where(present, hourly, 0.0).sum(axis=1)
    out = np.full(hourly.shape[0], np.nan)
    ok = n_present >= need
    out[ok] = total[ok] / n_present[ok]
    return out


_T = TypeVar("_T", bound=np.generic)


def _grow(arr: NDArray[_T], n: int, fill: float) -> NDArray[_T]:
    grown = np.full(n, fill, dtype=arr.dtype)
    grown[: arr.shape[0]] = arr
    return grown
