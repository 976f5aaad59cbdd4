"""Sensor-health detectors: plausible range, spike, flatline, dead sensor.

Each is a state machine per stream, run in rounds (see ``_detect_core``):

* ``RangeDetector`` ("range"), per (series, metric): a reading is bad
  when outside the metric's plausible range (``PLAUSIBLE_RANGES``, inclusive
  bounds). The stream goes faulty after ``start_readings`` consecutive bad
  readings and recovers after ``recover_readings`` consecutive good ones.
* ``SpikeDetector`` ("spike"), per (series, metric): z-score of the reading
  against an exponentially weighted mean and variance (weights ``max(alpha,
  1/n)``, so the first readings give the plain mean and variance; sd floored
  at ``min_std``). A reading is extreme when ``|z| > threshold_z`` after
  ``warmup_readings`` readings. A spike is a run of 1 to
  ``max_spike_readings`` readings, starting with an extreme one and going on
  while readings stay beyond ``normal_z`` (3) sd, FOLLOWED by a normal one: the
  episode is reported when that normal reading arrives (one reading of
  delay), as a start at the first extreme reading's time (ms precision) and
  an end at the normal reading. Longer runs are level shifts (rain fronts,
  fog, incidents, haze), not spikes, and are not reported. The baseline is
  always updated with the reading winsorised to ``mean +- winsor_z * sd``
  (after warm-up), so one spike moves it by at most ``alpha * winsor_z`` sd.
* ``FlatlineDetector`` ("flatline"), per (series, metric): the same value (as
  float32) for ``>= min_readings`` consecutive readings or for ``>=
  min_duration_s`` seconds (whole seconds of event time from the run's first
  reading), whichever comes first. Metrics with ``ignore_zero`` never start
  a flatline on 0 (traffic intensity and occupancy are legitimately 0 at
  night). The episode ends at the first different value.
* ``DeadSensorDetector`` ("dead"), per series, on messages: an EW
  estimate of the series' own reporting interval (weights ``max(alpha, 1/k)``
  over the first k intervals, each interval capped at the current silence
  limit so that one outage does not inflate it). The silence limit is
  ``max(factor * max(interval, floor_interval_s), min_silence_s)``. ``check(W)``
  declares dead every warmed-up series whose last reading is older than
  ``W - limit`` (start event at ``last + limit``); the next newer message ends
  it. A gap longer than the limit that no ``check`` saw is reported by
  ``update`` when the series reports again, as a start (same event time) and
  an end, so the events do not depend on when ``check`` runs, only how early
  they are seen.

Event time is the reading's ``ts_ns``; all state is event-time driven.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
    END,
    START,
    BatchPlan,
    Column,
    Described,
    DetectionRow,
    Detections,
    DetectorBase,
    SlotTable,
    Step,
    detections_of,
    f64,
    i64,
    metric_layout,
    np_max,
    np_min,
    put,
    row_allocator,
    run_kernel,
    series_layout,
    slot_row,
)
from processors._jit import kernel, typed_kernel
from urbanpulse._batch import ReadingBatch
from urbanpulse._events import Severity
from urbanpulse._schema import KIND_METRICS, N_METRICS, Kind, Metric

__all__ = [
    "DEFAULT_MIN_STD",
    "FLATLINE_DEFAULTS",
    "PLAUSIBLE_RANGES",
    "DeadSensorConfig",
    "DeadSensorDetector",
    "FlatlineConfig",
    "FlatlineDetector",
    "FlatlineRule",
    "RangeConfig",
    "RangeDetector",
    "SpikeConfig",
    "SpikeDetector",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
U8 = NDArray[np.uint8]
I64_2D = NDArray[np.int64]
F64_2D = NDArray[np.float64]
_NS: Final = 1_000_000_000

#: Plausible range of a WORKING sensor, inclusive (domain.md section 6):
#: PMS-type PM2.5 is unreliable above 500 (PurpleAir QC drops PM > 500), PM10
#: above 999 is the pinned top of scale (999.9 / 1999.9 with a dirty inlet),
#: concentrations are never negative, BME280 RH above 100 % and T above 65 C
#: (PurpleAir QC) are faults. Gas highs are ~1.5x the top ISPU breakpoints.
#: Intensity and occupancy are not range-checked (ingest enforces their limits).
PLAUSIBLE_RANGES: Final[Mapping[Metric, tuple[float, float]]] = MappingProxyType(
    {
        Metric.PM25: (0.0, 500.0),
        Metric.PM10: (0.0, 999.0),
        Metric.NO2: (0.0, 3000.0),
        Metric.O3: (0.0, 2000.0),
        Metric.CO: (0.0, 60_000.0),
        Metric.SO2: (0.0, 3000.0),
        Metric.TEMPERATURE: (-20.0, 65.0),
        Metric.RELATIVE_HUMIDITY: (0.0, 100.0),
        Metric.AVERAGE_VEHICLE_SPEED: (0.0, 200.0),
    }
)
#: Values optical PM sensors pin at (labelled "pinned" rather than "above").
_PINNED: Final = (999.9, 1999.9)
_REASONS: Final = ("below", "above", "pinned")


# --------------------------------------------------------------------------- range

_PM10: Final = int(Metric.PM10)


@kernel
def _range_kernel(
    i0: int,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    local: I64,
    lo: F64,
    hi: F64,
    n_start: int,
    n_end: int,
    faulty: U8,
    run: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    for i in range(i0, sid.shape[0]):
        if k + 1 > oi.shape[0]:
            return i, k, False
        m = metric[i]
        slot = local[m]
        if slot < 0:
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            return i, k, True
        v = value[i]
        f = faulty[r] != 0
        bad = (v < lo[m]) or (v > hi[m])
        run2 = min(i64(run[r]), 254) + 1 if bad != f else 0
        start = not f and run2 >= n_start
        end = f and run2 >= n_end
        if start or end:
            run2 = 0
            faulty[r] = 0 if f else 1
            above = v > hi[m]
            bound = hi[m] if above else lo[m]
            if start:
                pinned = above and v in (999.9, 1999.9) and m <= _PM10
                label = 2 if pinned else (1 if above else 0)
                score = v - hi[m] if above else lo[m] - v
                put(oi, of, k, i, ts_ns[i], 0, START, label, v, score, bound)
            else:
                put(oi, of, k, i, ts_ns[i], 0, END, 0, v, float(n_end), bound)
            k += 1
        run[r] = run2
    return sid.shape[0], k, False


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeConfig:
    enabled: bool = True
    #: Inclusive plausible range per metric; metrics not listed are not checked.
    ranges: Mapping[Metric, tuple[float, float]] = field(
        default_factory=lambda: dict(PLAUSIBLE_RANGES)
    )
    #: Consecutive bad readings that make a stream faulty (1: the first one).
    start_readings: int = 1
    #: Consecutive good readings that end the fault (hysteresis).
    recover_readings: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.start_readings <= 255 or not 1 <= self.recover_readings <= 255:
            raise ValueError("start_readings and recover_readings must be in 1..255")
        for m, (lo, hi) in self.ranges.items():
            if not lo <= hi:
                raise ValueError(f"range of {Metric(m).name} is empty: [{lo}, {hi}]")


class RangeDetector(DetectorBase):
    name = "range"

    def __init__(self, config: RangeConfig | None = None) -> None:
        cfg = RangeConfig() if config is None else config
        local = metric_layout(Metric(m) for m in cfg.ranges)
        table = SlotTable(
            {"faulty": Column(np.uint8, 0), "run": Column(np.uint8, 0)}, local, per_metric=True
        )
        super().__init__(cfg.enabled, {"range": table})
        self.config = cfg
        self._table = table
        self._lo = np.full(N_METRICS, -np.inf)
        self._hi = np.full(N_METRICS, np.inf)
        for m, (lo, hi) in cfg.ranges.items():
            self._lo[m], self._hi[m] = lo, hi

    def bad(self, batch: ReadingBatch | BatchPlan) -> NDArray[np.bool_]:
        """Which rows are outside their plausible range (pure)."""
        m, v = batch.metric, batch.value
        return (v < self._lo[m]) | (v > self._hi[m])

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config

        def step(i: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _range_kernel(
                i,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                t.local,
                self._lo,
                self._hi,
                int(cfg.start_readings),
                int(cfg.recover_readings),
                c["faulty"],
                c["run"],
                oi,
                of,
            )

        return detections_of(plan, run_kernel(len(plan), step, row_allocator(t, plan)))

    def describe(self, row: DetectionRow) -> Described:
        lo, hi = self._lo[row.metric], self._hi[row.metric]
        if row.state == START:
            reason = _REASONS[row.label]
            return Described(
                self.name,
                Severity.WARNING,
                f"{row.where} {row.field} = {row.value:g} {row.unit} is outside the plausible "
                f"range [{lo:g}, {hi:g}]: sensor fault ({reason})",
                {"reason": reason},
            )
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} {row.field} back in its plausible range for "
            f"{row.score:g} readings ({row.value:g} {row.unit})",
            {},
        )


# --------------------------------------------------------------------------- spike

#: Floor of the standard deviation per metric (a flat signal must not turn
#: rounding noise into huge z-scores). Temperature and RH floors are wide on
#: purpose: a rain shower drops T by ~3 C and lifts RH by ~15 % in minutes.
DEFAULT_MIN_STD: Final[Mapping[Metric, float]] = MappingProxyType(
    {
        Metric.PM25: 2.0,
        Metric.PM10: 3.0,
        Metric.NO2: 3.0,
        Metric.O3: 3.0,
        Metric.CO: 30.0,
        Metric.SO2: 2.0,
        Metric.TEMPERATURE: 1.0,
        Metric.RELATIVE_HUMIDITY: 4.0,
        Metric.INTENSITY: 1.0,
        Metric.OCCUPANCY: 0.015,
        Metric.AVERAGE_VEHICLE_SPEED: 3.0,
    }
)
_MS: Final = 1_000_000
_U32: Final = (1 << 32) - 1


#: A reading of 0 scores as if it were this share of the mean (log-ratio score).
_RATIO_FLOOR: Final = 1e-3


@typed_kernel("float64(float64, float64, float64, boolean)")
def _spike_z(x: float, mu: float, sd: float, ratio_down: bool) -> float:
    """Robust score of ``x`` against mean ``mu`` and sd ``sd``: (x - mu) / sd, but
    for a metric with multiplicative noise (``ratio_down``) a reading BELOW a
    positive mean scores by its log-ratio in units of the coefficient of
    variation, ``log(x / mu) / (sd / mu)``: a log-normal signal's lower tail is
    compressed in linear units, so PM at 20 % of its mean with 15 % noise is
    -10.7 on this scale but only -5.3 linearly."""
    if ratio_down and x < mu and mu > 0.0:
        return math.log(max(x, mu * _RATIO_FLOOR) / mu) * mu / sd
    return (x - mu) / sd


@kernel
def _spike_kernel(
    i0: int,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    local: I64,
    min_var: F64,
    up: NDArray[np.bool_],
    ratio_down: NDArray[np.bool_],
    warmup: int,
    thr: float,
    normal_z: float,
    wz: float,
    alpha: float,
    alpha_var: float,
    max_run: int,
    c_mean: F32,
    c_var: F32,
    c_n: U8,
    c_run: U8,
    c_pv: F32,
    c_pms: NDArray[np.uint32],
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    for i in range(i0, sid.shape[0]):
        if k + 2 > oi.shape[0]:
            return i, k, False
        m = metric[i]
        slot = local[m]
        if slot < 0:
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            return i, k, True
        x = value[i]
        mu = f64(c_mean[r])
        var = f64(c_var[r])
        n = i64(c_n[r])
        sd = np.sqrt(np_max(var, min_var[m]))
        z = _spike_z(x, mu, sd, ratio_down[m])
        warm = n >= warmup
        dz = z if up[m] else abs(z)
        extreme = warm and dz > thr
        lim = wz * sd
        xc = np_min(np_max(x, mu - lim), mu + lim) if warm else x
        inv_n = 1.0 / (float(n) + 1.0)
        a = np_max(alpha, inv_n)
        av = np_max(alpha_var, inv_n)
        d = xc - mu
        c_mean[r] = mu + a * d
        c_var[r] = (1.0 - av) * (var + av * d * d)
        c_n[r] = min(n, 254) + 1
        run = i64(c_run[r])
        if not extreme and run == 0:
            continue
        if extreme and run == 0:
            c_pv[r] = x
            c_pms[r] = (ts_ns[i] // _MS) & _U32
        # a run goes on while readings stay beyond normal_z (or the warm-up
        # ends under it); it is confirmed as a spike by a normal reading
        going = extreme if run == 0 else (not warm or dz > normal_z)
        c_run[r] = min(run, 254) + 1 if going else 0
        if not going and 1 <= run <= max_run:
            now = ts_ns[i]
            now_ms = now // _MS
            back = (now_ms - i64(c_pms[r])) & _U32
            pv = f64(c_pv[r])
            score = _spike_z(pv, mu, sd, ratio_down[m])
            put(oi, of, k, i, (now_ms - back) * _MS, 0, START, run, pv, score, mu)
            put(oi, of, k + 1, i, now, 0, END, 0, x, z, mu)
            k += 2
    return sid.shape[0], k, False


@dataclass(frozen=True, slots=True, kw_only=True)
class SpikeConfig:
    enabled: bool = True
    #: Metrics scored (default: all).
    metrics: tuple[Metric, ...] = tuple(Metric)
    #: EW weight of the mean (0.05: a memory of ~20 readings).
    alpha: float = 0.05
    #: EW weight of the variance (slower: a stable scale).
    alpha_var: float = 0.02
    threshold_z: float = 6.0
    #: A spike is over when a reading is back within this many sd.
    normal_z: float = 3.0
    #: Readings before any event (1..255).
    warmup_readings: int = 30
    #: Metrics where only upward spikes count (traffic counts and occupancy
    #: legitimately fall to 0 when no vehicle passes).
    upward_only: tuple[Metric, ...] = (Metric.INTENSITY, Metric.OCCUPANCY)
    #: Metrics with multiplicative (log-normal) noise: readings below the mean
    #: score by their log-ratio in units of the coefficient of variation (see
    #: ``_spike_z``). Concentrations, except O3 (near 0 at night, additive).
    ratio_down: tuple[Metric, ...] = (
        Metric.PM25,
        Metric.PM10,
        Metric.NO2,
        Metric.CO,
        Metric.SO2,
    )
    #: Longest run of extreme readings that is still a spike (1..254).
    max_spike_readings: int = 2
    #: After warm-up, updates use the reading clipped to mean +- winsor_z sd.
    winsor_z: float = 3.0
    min_std: Mapping[Metric, float] = field(default_factory=lambda: dict(DEFAULT_MIN_STD))

    def __post_init__(self) -> None:
        if not (0 < self.alpha <= 1 and 0 < self.alpha_var <= 1):
            raise ValueError("alpha and alpha_var must be in (0, 1]")
        if not 1 <= self.warmup_readings <= 255:
            raise ValueError("warmup_readings must be in 1..255")
        if not 1 <= self.max_spike_readings <= 254:
            raise ValueError("max_spike_readings must be in 1..254")
        if not (self.threshold_z > 0 and self.winsor_z > 0):
            raise ValueError("threshold_z and winsor_z must be > 0")
        if not 0 < self.normal_z <= self.threshold_z:
            raise ValueError("normal_z must be in (0, threshold_z]")


class SpikeDetector(DetectorBase):
    """Spikes, confirmed by the next normal reading (see the module docstring).

    The first extreme reading's time is kept as ms modulo 2**32 (``pend_ms``,
    4 bytes) and rebuilt from the confirming reading's time, exact while the
    two are less than 49 days apart.
    """

    name = "spike"

    def __init__(self, config: SpikeConfig | None = None) -> None:
        cfg = SpikeConfig() if config is None else config
        local = metric_layout(cfg.metrics)
        table = SlotTable(
            {
                "mean": Column(np.float32, 0.0),
                "var": Column(np.float32, 0.0),
                "n": Column(np.uint8, 0),
                "run": Column(np.uint8, 0),
                "pend_value": Column(np.float32, np.nan),
                "pend_ms": Column(np.uint32, 0),
            },
            local,
            per_metric=True,
        )
        super().__init__(cfg.enabled, {"spike": table})
        self.config = cfg
        self._table = table
        min_std = np.zeros(N_METRICS)
        for m, s in cfg.min_std.items():
            min_std[m] = s
        self._min_var = min_std * min_std
        self._up = np.zeros(N_METRICS, np.bool_)
        self._up[list(cfg.upward_only)] = True
        self._ratio = np.zeros(N_METRICS, np.bool_)
        self._ratio[list(cfg.ratio_down)] = True

    def score(self, batch: ReadingBatch) -> F64:
        """z-score of each row against the CURRENT baseline (no state change);
        NaN for rows without a warmed-up baseline or an unscored metric."""
        t = self._table
        out = np.full(len(batch), np.nan)
        rows = t.find(batch.sid, batch.metric)
        idx = np.flatnonzero(rows >= 0)
        rows = rows[idx]
        warm = t.cols["n"][rows] >= self.config.warmup_readings
        idx, rows = idx[warm], rows[warm]
        mu = t.cols["mean"][rows].astype(np.float64)
        var = np.maximum(t.cols["var"][rows].astype(np.float64), self._min_var[batch.metric[idx]])
        sd = np.sqrt(var)
        x = batch.value[idx]
        ratio = self._ratio[batch.metric[idx]] & (x < mu) & (mu > 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_z = np.log(np.maximum(x, mu * _RATIO_FLOOR) / mu) * mu / sd
        out[idx] = np.where(ratio, log_z, (x - mu) / sd)
        return out

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config

        def step(i: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _spike_kernel(
                i,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                t.local,
                self._min_var,
                self._up,
                self._ratio,
                int(cfg.warmup_readings),
                float(cfg.threshold_z),
                float(cfg.normal_z),
                float(cfg.winsor_z),
                float(cfg.alpha),
                float(cfg.alpha_var),
                int(cfg.max_spike_readings),
                c["mean"],
                c["var"],
                c["n"],
                c["run"],
                c["pend_value"],
                c["pend_ms"],
                oi,
                of,
            )

        return detections_of(plan, run_kernel(len(plan), step, row_allocator(t, plan)))

    def describe(self, row: DetectionRow) -> Described:
        if row.state == START:
            return Described(
                self.name,
                Severity.WARNING,
                f"{row.where} {row.field} spike: {row.value:g} {row.unit} is "
                f"{abs(row.score):.1f} sd {'above' if row.score > 0 else 'below'} its recent "
                f"mean {row.ref:.4g} ({row.label} reading(s), then back to normal)",
                {},
            )
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} {row.field} back to normal after a spike: {row.value:g} {row.unit}",
            {},
        )


# --------------------------------------------------------------------------- flatline


@dataclass(frozen=True, slots=True)
class FlatlineRule:
    """When a repeated value is a flatline for one metric."""

    min_readings: int
    min_duration_s: float
    #: A run of zeros is never a flatline (e.g. no vehicles at night).
    ignore_zero: bool = False
    #: The duration rule needs at least this many identical readings: two equal
    #: readings on both sides of a two-hour gap, or two hourly PM readings that
    #: agree to 0.1 ug/m3 by chance, are not a stuck sensor.
    min_readings_by_time: int = 3


#: Air sensors report every ~60 s, traffic lanes every ~30 s: 15 identical
#: readings (~15 min) or 30 min for air, 20 readings (~10 min) or 20 min for
#: traffic. Occupancy is left to the loop-health detector (constant occupancy).
FLATLINE_DEFAULTS: Final[Mapping[Metric, FlatlineRule]] = MappingProxyType(
    {
        **{m: FlatlineRule(15, 1800.0) for m in KIND_METRICS[Kind.AIR]},
        # Loops report every 30-60 s and small counts repeat by chance: the
        # duration rule needs the full 20 readings too (it only matters across
        # a gap in the data, e.g. 4, [2 h dropout], 4, 4).
        Metric.INTENSITY: FlatlineRule(20, 1200.0, ignore_zero=True, min_readings_by_time=20),
        Metric.AVERAGE_VEHICLE_SPEED: FlatlineRule(
            20, 1200.0, ignore_zero=True, min_readings_by_time=20
        ),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatlineConfig:
    enabled: bool = True
    rules: Mapping[Metric, FlatlineRule] = field(default_factory=lambda: dict(FLATLINE_DEFAULTS))

    def __post_init__(self) -> None:
        for m, r in self.rules.items():
            if not 2 <= r.min_readings <= 65_535 or not r.min_duration_s > 0:
                raise ValueError(
                    f"flatline rule of {Metric(m).name}: min_readings must be in 2..65535 "
                    "and min_duration_s > 0"
                )
            if not 2 <= r.min_readings_by_time <= r.min_readings:
                raise ValueError(
                    f"flatline rule of {Metric(m).name}: min_readings_by_time must be in "
                    "2..min_readings"
                )


@kernel
def _flatline_kernel(
    i0: int,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    local: I64,
    n_min: I64,
    t_min: I64,
    n_time: I64,
    zero_ok: NDArray[np.bool_],
    c_last: F32,
    c_run: NDArray[np.uint16],
    c_start: NDArray[np.uint32],
    c_act: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    for i in range(i0, sid.shape[0]):
        if k + 1 > oi.shape[0]:
            return i, k, False
        m = metric[i]
        slot = local[m]
        if slot < 0:
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            return i, k, True
        v = value[i]
        x32 = np.float32(v)
        t_s = ts_ns[i] // _NS
        same = x32 == c_last[r]
        run = min(i64(c_run[r]), 65_534) + 1 if same else 1
        start_s = i64(c_start[r]) if same else t_s
        act = c_act[r] != 0
        eligible = not (zero_ok[m] and v == 0.0)
        stuck = eligible and (run >= n_min[m] or (run >= n_time[m] and t_s - start_s >= t_min[m]))
        c_last[r] = x32
        c_run[r] = run
        c_start[r] = start_s
        if stuck and not act:
            c_act[r] = 1
            put(oi, of, k, i, ts_ns[i], 0, START, 0, v, float(run), float(t_s - start_s))
            k += 1
        elif act and not same:
            c_act[r] = 0
            put(oi, of, k, i, ts_ns[i], 0, END, 0, v, 1.0, np.nan)
            k += 1
    return sid.shape[0], k, False


class FlatlineDetector(DetectorBase):
    name = "flatline"

    def __init__(self, config: FlatlineConfig | None = None) -> None:
        cfg = FlatlineConfig() if config is None else config
        local = metric_layout(Metric(m) for m in cfg.rules)
        table = SlotTable(
            {
                "last": Column(np.float32, np.nan),
                "run": Column(np.uint16, 0),
                "start_s": Column(np.uint32, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            per_metric=True,
        )
        super().__init__(cfg.enabled, {"flatline": table})
        self.config = cfg
        self._table = table
        self._n = np.zeros(N_METRICS, np.int64)
        self._t = np.zeros(N_METRICS, np.int64)
        self._n_time = np.zeros(N_METRICS, np.int64)
        self._zero_ok = np.zeros(N_METRICS, np.bool_)
        for m, r in cfg.rules.items():
            self._n[m] = r.min_readings
            # whole seconds; a run lasting >= ceil(T) s qualifies
            self._t[m] = int(np.ceil(r.min_duration_s))
            self._n_time[m] = r.min_readings_by_time
            self._zero_ok[m] = r.ignore_zero

    def _update(self, plan: BatchPlan) -> Detections:
        t = self._table

        def step(i: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _flatline_kernel(
                i,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                t.local,
                self._n,
                self._t,
                self._n_time,
                self._zero_ok,
                c["last"],
                c["run"],
                c["start_s"],
                c["active"],
                oi,
                of,
            )

        return detections_of(plan, run_kernel(len(plan), step, row_allocator(t, plan)))

    def describe(self, row: DetectionRow) -> Described:
        if row.state == START:
            return Described(
                self.name,
                Severity.WARNING,
                f"{row.where} {row.field} stuck at {row.value:g} {row.unit} for "
                f"{row.score:g} readings ({row.ref:g} s): flatline",
                {},
            )
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} {row.field} changed again ({row.value:g} {row.unit}) after a flatline",
            {},
        )


# --------------------------------------------------------------------------- dead sensor


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadSensorConfig:
    enabled: bool = True
    #: Silence limit in own reporting intervals.
    factor: float = 5.0
    #: Interval floor (a burst of fast messages must not make the limit tiny).
    floor_interval_s: float = 10.0
    #: Silence limit floor (MQTT reconnects take tens of seconds).
    min_silence_s: float = 120.0
    #: EW weight of the interval estimate.
    alpha: float = 0.1
    #: Messages seen before a series can be declared dead (>= 2).
    warmup_messages: int = 3

    def __post_init__(self) -> None:
        if not (self.factor > 0 and self.floor_interval_s > 0 and self.min_silence_s >= 0):
            raise ValueError("factor and floor_interval_s must be > 0, min_silence_s >= 0")
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 2 <= self.warmup_messages <= 255:
            raise ValueError("warmup_messages must be in 2..255")


@kernel
def _dead_kernel(
    j0: int,
    first: I64,
    sid: I32,
    ts_ns: I64,
    base: I32,
    mask: U8,
    factor: float,
    floor_s: float,
    min_silence_s: float,
    alpha: float,
    warmup: int,
    c_last: I64,
    c_iv: F32,
    c_n: U8,
    c_dead: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    for j in range(j0, first.shape[0]):
        if k + 2 > oi.shape[0]:
            return j, k, False
        row = first[j]
        r = slot_row(base, mask, 0, sid[row])
        if r < 0:
            return j, k, True
        now = ts_ns[row]
        last = c_last[r]
        iv = f64(c_iv[r])
        n = i64(c_n[r])
        dead = c_dead[r] != 0
        seen = n > 0
        dt_ns = now - last
        newer = seen and dt_ns > 0
        limit_s = np_max(factor * np_max(iv, floor_s), min_silence_s)
        limit_ns = int(limit_s * 1e9)
        gap = newer and n >= warmup and not dead and dt_ns > limit_ns
        recover = newer and dead
        dt_s = dt_ns / 1e9
        if newer:
            x = np_min(dt_s, limit_s) if n >= 2 else dt_s
            a = np_max(alpha, 1.0 / np_max(float(n), 1.0))
            c_iv[r] = iv + a * (x - iv)
        if newer or not seen:
            c_last[r] = now
            c_n[r] = min(n, 254) + 1
        if gap or recover:
            c_dead[r] = 0
            ref = np_max(iv, floor_s)
            if gap:
                put(oi, of, k, row, last + limit_ns, 0, START, 0, limit_s, limit_s / ref, iv)
                k += 1
            put(oi, of, k, row, now, 0, END, 0, dt_s, dt_s / ref, iv)
            k += 1
    return first.shape[0], k, False


class DeadSensorDetector(DetectorBase):
    name = "dead"

    def __init__(self, config: DeadSensorConfig | None = None) -> None:
        cfg = DeadSensorConfig() if config is None else config
        local = series_layout(Metric)
        table = SlotTable(
            {
                "sid": Column(np.int32, -1),
                "last_ns": Column(np.int64, 0),
                "interval_s": Column(np.float32, 0.0),
                "n": Column(np.uint8, 0),
                "dead": Column(np.uint8, 0),
            },
            local,
            per_metric=False,
        )
        super().__init__(cfg.enabled, {"dead": table})
        self.config = cfg
        self._table = table

    def _limit_s(self, interval_s: F64) -> F64:
        cfg = self.config
        return np.maximum(
            cfg.factor * np.maximum(interval_s, cfg.floor_interval_s), cfg.min_silence_s
        )

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        first = plan.msg_first

        def step(j: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _dead_kernel(
                j,
                first,
                plan.sid,
                plan.ts_ns,
                t.base,
                t.mask,
                float(cfg.factor),
                float(cfg.floor_interval_s),
                float(cfg.min_silence_s),
                float(cfg.alpha),
                int(cfg.warmup_messages),
                c["last_ns"],
                c["interval_s"],
                c["n"],
                c["dead"],
                oi,
                of,
            )

        def allocate(j: int) -> None:
            rows = first[j:]
            t.allocate(plan.sid[rows], plan.metric[rows])

        return detections_of(plan, run_kernel(plan.n_messages, step, allocate), metric=-1)

    def _check(self, watermark_ns: int) -> Detections:
        t, cfg = self._table, self.config
        k = t.n_rows
        last = t.cols["last_ns"][:k]
        iv = t.cols["interval_s"][:k].astype(np.float64)
        limit_s = self._limit_s(iv)
        limit_ns = (limit_s * 1e9).astype(np.int64)
        dead = t.cols["dead"][:k]
        # (watermark - last > limit, without int64 overflow for any watermark >= last)
        silent = (t.cols["n"][:k] >= cfg.warmup_messages) & (dead == 0)
        silent &= last < watermark_ns - limit_ns
        if not bool(silent.any()):
            return Detections.empty()
        dead[silent] = 1
        # by series id, whatever the allocation order of the rows
        rows = np.flatnonzero(silent)
        rows = rows[np.argsort(t.cols["sid"][rows], kind="stable")]
        sid = t.cols["sid"][rows].astype(np.int64)
        limit_s, iv = limit_s[rows], iv[rows]
        n = int(rows.shape[0])
        return Detections(
            np.full(n, -1, np.int64),
            sid,
            np.full(n, -1, np.int16),
            np.zeros(n, np.uint8),
            np.full(n, START, np.uint8),
            (last + limit_ns)[rows],
            limit_s,
            limit_s / np.maximum(iv, cfg.floor_interval_s),
            iv,
            np.zeros(n, np.int16),
            np.zeros(n, np.uint8),
        )

    def describe(self, row: DetectionRow) -> Described:
        if row.state == START:
            return Described(
                self.name,
                Severity.CRITICAL,
                f"{row.where} silent for more than {row.value:.0f} s (it reports about every "
                f"{row.ref:.0f} s): dead sensor",
                {},
            )
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} reporting again after {row.value:.0f} s of silence",
            {},
        )
