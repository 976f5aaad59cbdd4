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

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
    END,
    START,
    BatchPlan,
    Collector,
    Column,
    Described,
    DetectionRow,
    Detections,
    DetectorBase,
    SlotTable,
    metric_layout,
    series_layout,
)
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
        local, width = metric_layout(Metric(m) for m in cfg.ranges)
        table = SlotTable({"faulty": Column(np.uint8, 0), "run": Column(np.uint8, 0)}, local, width)
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
        t = self._table
        sel = np.flatnonzero(t.covered(plan.metric))
        if sel.shape[0] == 0:
            return Detections.empty()
        met, val, ts = plan.metric[sel], plan.value[sel], plan.ts_ns[sel]
        sid = plan.sid[sel]
        rows_all = t.rows(sid, met)
        lo, hi = self._lo[met], self._hi[met]
        bad_all = (val < lo) | (val > hi)
        n_start, n_end = self.config.start_readings, self.config.recover_readings
        out = Collector()
        faulty_c, run_c = t.cols["faulty"], t.cols["run"]
        for p in plan.row_rounds(sel):
            rows = rows_all[p]
            f = faulty_c[rows].view(np.bool_)
            run = run_c[rows]
            bad = bad_all[p]
            run2 = np.where(bad != f, np.minimum(run, 254) + 1, 0).astype(np.uint8)
            start = ~f & (run2 >= n_start)
            end = f & (run2 >= n_end)
            flip = start | end
            if bool(flip.any()):
                run2[flip] = 0
                faulty_c[rows] = (f ^ flip).view(np.uint8)
                v, m = val[p], met[p]
                above = v > hi[p]
                pinned = above & np.isin(v, _PINNED) & (m <= Metric.PM10)
                common: dict[str, Any] = {
                    "row": sel[p],
                    "sid": sid[p],
                    "metric": m,
                    "ts_ns": ts[p],
                    "value": v,
                }
                out.add(
                    start,
                    **common,
                    code=0,
                    state=START,
                    score=np.where(above, v - hi[p], lo[p] - v),
                    ref=np.where(above, hi[p], lo[p]),
                    label=np.where(pinned, 2, above.astype(np.int16)),
                )
                out.add(
                    end,
                    **common,
                    code=0,
                    state=END,
                    score=np.full(v.shape[0], float(n_end)),
                    ref=np.where(v > hi[p], hi[p], lo[p]),
                )
            run_c[rows] = run2
        return out.result()

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
        local, width = metric_layout(cfg.metrics)
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
            width,
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

    def score(self, batch: ReadingBatch) -> F64:
        """z-score of each row against the CURRENT baseline (no state change);
        NaN for rows without a warmed-up baseline or an unscored metric."""
        t = self._table
        out = np.full(len(batch), np.nan)
        sid = batch.sid.astype(np.int64)
        idx = np.flatnonzero(t.covered(batch.metric) & (sid < t.base.shape[0]))
        idx = idx[t.base[sid[idx]] >= 0]
        rows = t.base[sid[idx]].astype(np.intp) + t.local[batch.metric[idx]]
        warm = t.cols["n"][rows] >= self.config.warmup_readings
        idx, rows = idx[warm], rows[warm]
        mu = t.cols["mean"][rows].astype(np.float64)
        var = np.maximum(t.cols["var"][rows].astype(np.float64), self._min_var[batch.metric[idx]])
        out[idx] = (batch.value[idx] - mu) / np.sqrt(var)
        return out

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        sel = np.flatnonzero(t.covered(plan.metric))
        if sel.shape[0] == 0:
            return Detections.empty()
        met, val, ts, sid = plan.metric[sel], plan.value[sel], plan.ts_ns[sel], plan.sid[sel]
        rows_all = t.rows(sid, met)
        min_var_all = self._min_var[met]
        up_all = self._up[met]
        out = Collector()
        c_mean, c_var, c_n, c_run = (t.cols[k] for k in ("mean", "var", "n", "run"))
        c_pv, c_pms = t.cols["pend_value"], t.cols["pend_ms"]
        warmup, thr, wz, max_run = (
            cfg.warmup_readings,
            cfg.threshold_z,
            cfg.winsor_z,
            cfg.max_spike_readings,
        )
        for p in plan.row_rounds(sel):
            rows = rows_all[p]
            x = val[p]
            mu = c_mean[rows].astype(np.float64)
            var = c_var[rows].astype(np.float64)
            n = c_n[rows]
            sd = np.sqrt(np.maximum(var, min_var_all[p]))
            z = (x - mu) / sd
            warm = n >= warmup
            dz = np.where(up_all[p], z, np.abs(z))
            extreme = warm & (dz > thr)
            lim = wz * sd
            xc = np.where(warm, np.clip(x, mu - lim, mu + lim), x)
            inv_n = 1.0 / (n.astype(np.float64) + 1.0)
            a = np.maximum(cfg.alpha, inv_n)
            av = np.maximum(cfg.alpha_var, inv_n)
            d = xc - mu
            c_mean[rows] = mu + a * d
            c_var[rows] = (1.0 - av) * (var + av * d * d)
            c_n[rows] = np.minimum(n, 254) + 1
            run = c_run[rows]
            if not (bool(extreme.any()) or bool(run.any())):
                continue
            onset = extreme & (run == 0)
            if bool(onset.any()):
                r_on = rows[onset]
                c_pv[r_on] = x[onset]
                c_pms[r_on] = ((ts[p][onset] // _MS) & _U32).astype(np.uint32)
            # a run goes on while readings stay beyond normal_z (or the warm-up
            # ends under it); it is confirmed as a spike by a normal reading
            going = np.where(run == 0, extreme, ~warm | (dz > cfg.normal_z))
            c_run[rows] = np.where(going, np.minimum(run, 254) + 1, 0)
            confirm = ~going & (run >= 1) & (run <= max_run)
            if bool(confirm.any()):
                now = ts[p]
                now_ms = now // _MS
                back = (now_ms - c_pms[rows].astype(np.int64)) & _U32
                pv = c_pv[rows].astype(np.float64)
                common: dict[str, Any] = {"row": sel[p], "sid": sid[p], "metric": met[p]}
                out.add(
                    confirm,
                    **common,
                    code=0,
                    state=START,
                    ts_ns=(now_ms - back) * _MS,
                    value=pv,
                    score=(pv - mu) / sd,
                    ref=mu,
                    label=run,
                )
                out.add(confirm, **common, code=0, state=END, ts_ns=now, value=x, score=z, ref=mu)
        return out.result()

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


#: Air sensors report every ~60 s, traffic lanes every ~30 s: 15 identical
#: readings (~15 min) or 30 min for air, 20 readings (~10 min) or 20 min for
#: traffic. Occupancy is left to the loop-health detector (constant occupancy).
FLATLINE_DEFAULTS: Final[Mapping[Metric, FlatlineRule]] = MappingProxyType(
    {
        **{m: FlatlineRule(15, 1800.0) for m in KIND_METRICS[Kind.AIR]},
        Metric.INTENSITY: FlatlineRule(20, 1200.0, ignore_zero=True),
        Metric.AVERAGE_VEHICLE_SPEED: FlatlineRule(20, 1200.0, ignore_zero=True),
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


class FlatlineDetector(DetectorBase):
    name = "flatline"

    def __init__(self, config: FlatlineConfig | None = None) -> None:
        cfg = FlatlineConfig() if config is None else config
        local, width = metric_layout(Metric(m) for m in cfg.rules)
        table = SlotTable(
            {
                "last": Column(np.float32, np.nan),
                "run": Column(np.uint16, 0),
                "start_s": Column(np.uint32, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            width,
        )
        super().__init__(cfg.enabled, {"flatline": table})
        self.config = cfg
        self._table = table
        self._n = np.zeros(N_METRICS, np.int64)
        self._t = np.zeros(N_METRICS, np.int64)
        self._zero_ok = np.zeros(N_METRICS, np.bool_)
        for m, r in cfg.rules.items():
            self._n[m] = r.min_readings
            # whole seconds; a run lasting >= ceil(T) s qualifies
            self._t[m] = int(np.ceil(r.min_duration_s))
            self._zero_ok[m] = r.ignore_zero

    def _update(self, plan: BatchPlan) -> Detections:
        t = self._table
        sel = np.flatnonzero(t.covered(plan.metric))
        if sel.shape[0] == 0:
            return Detections.empty()
        met, val, ts, sid = plan.metric[sel], plan.value[sel], plan.ts_ns[sel], plan.sid[sel]
        rows_all = t.rows(sid, met)
        x32_all = val.astype(np.float32)
        t_s_all = ts // _NS
        eligible_all = ~(self._zero_ok[met] & (val == 0.0))
        n_min, t_min = self._n[met], self._t[met]
        c_last, c_run, c_start, c_act = (t.cols[k] for k in ("last", "run", "start_s", "active"))
        out = Collector()
        for p in plan.row_rounds(sel):
            rows = rows_all[p]
            x32 = x32_all[p]
            t_s = t_s_all[p]
            same = x32 == c_last[rows]
            run = np.where(same, np.minimum(c_run[rows], 65_534) + 1, 1).astype(np.uint16)
            start_s = np.where(same, c_start[rows].astype(np.int64), t_s)
            act = c_act[rows].view(np.bool_)
            stuck = eligible_all[p] & ((run >= n_min[p]) | (t_s - start_s >= t_min[p]))
            begin = stuck & ~act
            finish = act & ~same
            c_last[rows] = x32
            c_run[rows] = run
            c_start[rows] = start_s.astype(np.uint32)
            if bool(begin.any()) or bool(finish.any()):
                c_act[rows] = (np.where(same, act | stuck, False)).view(np.uint8)
                common: dict[str, Any] = {
                    "row": sel[p],
                    "sid": sid[p],
                    "metric": met[p],
                    "ts_ns": ts[p],
                    "value": val[p],
                }
                out.add(
                    begin,
                    **common,
                    code=0,
                    state=START,
                    score=run.astype(np.float64),
                    ref=(t_s - start_s).astype(np.float64),
                )
                out.add(finish, **common, code=0, state=END, score=np.ones(x32.shape[0]))
        return out.result()

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


class DeadSensorDetector(DetectorBase):
    name = "dead"

    def __init__(self, config: DeadSensorConfig | None = None) -> None:
        cfg = DeadSensorConfig() if config is None else config
        local, width = series_layout(Metric)
        table = SlotTable(
            {
                "sid": Column(np.int32, -1),
                "last_ns": Column(np.int64, 0),
                "interval_s": Column(np.float32, 0.0),
                "n": Column(np.uint8, 0),
                "dead": Column(np.uint8, 0),
            },
            local,
            width,
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
        sid, ts, met = plan.sid[first], plan.ts_ns[first], plan.metric[first]
        rows_all = t.rows(sid, met)
        c_last, c_iv, c_n, c_dead = (t.cols[k] for k in ("last_ns", "interval_s", "n", "dead"))
        out = Collector()
        for p in plan.message_rounds(np.arange(plan.n_messages)):
            rows = rows_all[p]
            now = ts[p]
            last = c_last[rows]
            iv = c_iv[rows].astype(np.float64)
            n = c_n[rows]
            dead = c_dead[rows].view(np.bool_)
            seen = n > 0
            dt_ns = now - last
            newer = seen & (dt_ns > 0)
            limit_s = self._limit_s(iv)
            limit_ns = (limit_s * 1e9).astype(np.int64)
            warm = n >= cfg.warmup_messages
            gap = newer & warm & ~dead & (dt_ns > limit_ns)
            recover = newer & dead
            dt_s = dt_ns / 1e9
            x = np.where(n >= 2, np.minimum(dt_s, limit_s), dt_s)
            a = np.maximum(cfg.alpha, 1.0 / np.maximum(n.astype(np.float64), 1.0))
            c_iv[rows] = np.where(newer, iv + a * (x - iv), iv)
            advance = newer | ~seen
            c_last[rows] = np.where(advance, now, last)
            c_n[rows] = np.where(advance, np.minimum(n, 254) + 1, n)
            if bool(gap.any()) or bool(recover.any()):
                c_dead[rows] = (dead & ~recover).view(np.uint8)
                row, s = first[p], sid[p]
                out.add(
                    gap,
                    row=row,
                    sid=s,
                    metric=-1,
                    code=0,
                    state=START,
                    ts_ns=last + limit_ns,
                    value=limit_s,
                    score=limit_s / np.maximum(iv, cfg.floor_interval_s),
                    ref=iv,
                )
                out.add(
                    gap | recover,
                    row=row,
                    sid=s,
                    metric=-1,
                    code=0,
                    state=END,
                    ts_ns=now,
                    value=dt_s,
                    score=dt_s / np.maximum(iv, cfg.floor_interval_s),
                    ref=iv,
                )
        return out.result()

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
        order = np.argsort(t.cols["sid"][:k], kind="stable")
        last, iv, limit_s, limit_ns, silent = (
            last[order],
            iv[order],
            limit_s[order],
            limit_ns[order],
            silent[order],
        )
        out = Collector()
        out.add(
            silent,
            row=np.full(k, -1, np.int64),
            sid=t.cols["sid"][:k][order].astype(np.int64),
            metric=-1,
            code=0,
            state=START,
            ts_ns=last + limit_ns,
            value=limit_s,
            score=limit_s / np.maximum(iv, cfg.floor_interval_s),
            ref=iv,
        )
        return out.result()

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
