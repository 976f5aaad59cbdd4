"""Traffic detectors: free flow, congestion and level of service; speed drops; loop health.

``TrafficStateDetector`` (per lane, on ``averageVehicleSpeed`` rows)
    Free-flow speed = the ``quantile`` (0.85) of OFF-PEAK speeds (local hours
    ``offpeak_hours``, default 22-05 WIB = UTC+7), estimated from a per-lane
    histogram of ``n_bins`` x ``bin_kmh`` (100 x 2 km/h: 0-200 km/h, faster
    readings go to the last bin) of uint8 counts: when a bin would pass 255,
    the whole lane's histogram is halved first, so it holds the last ~1-2
    nights of off-peak readings and follows slow changes. The quantile is
    interpolated linearly inside its bin (error < 1 bin). Free flow is known
    once ``min_offpeak_samples`` off-peak readings were seen, and recomputed
    from the histogram then and every ``refresh_samples`` off-peak readings
    (one quantile costs a pass over the bins; it moves little per reading).
    Speeds are smoothed per lane (EW, ``smoothing_alpha``, with weights
    ``max(alpha, 1/n)`` over a lane's first readings so that the average
    converges from the start instead of remembering its first reading); with
    ``ratio = smoothed speed / free flow``:

    * congestion ("congestion"): starts when ``ratio < congested_ratio`` (0.90,
      FHWA), ends when ``ratio >= clear_ratio`` (hysteresis);
    * level of service ("level_of_service"): HCM classes A-F by ratio (A >
      0.80, B > 0.67, C > 0.50, D > 0.40, E > 0.30, F <= 0.30); a lane moves to
      a worse class only when ``ratio + los_margin`` is in it, to a better one
      only when ``ratio - los_margin`` is; each move is a ``change`` event
      (labels from/to). The first class of a lane is set silently.

``SpeedDropDetector`` ("incident", per lane)
    Baseline = EW mean speed (``alpha``, weights ``max(alpha, 1/n)`` during the
    first readings). A reading is a drop when, after ``warmup_readings`` and
    with a baseline of at least ``min_baseline_kmh``, ``baseline - speed >=
    min(drop_fraction * baseline, drop_kmh)``. An incident starts when ``k``
    of the last ``m`` readings are drops and ends when none of the last ``m``
    is. The baseline is updated with the reading floored at ``baseline -
    threshold`` (winsorised), so a sustained drop lowers it by at most
    ``alpha * threshold`` per reading.

``LoopHealthDetector`` (per lane, on messages with intensity and occupancy)
    * "loop_intermittent": intensity 0 while occupancy > 0 for
      ``intermittent_readings`` consecutive messages; ends at the first
      message that is not;
    * "loop_constant_occupancy": the same non-zero occupancy (float32) for
      ``constant_occupancy_readings`` consecutive messages; ends when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
    CHANGE,
    END,
    NO_METRIC,
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
    np_max,
    np_min,
    popcount8,
    put,
    row_allocator,
    run_kernel,
    series_layout,
    slot_row,
)
from processors._indices import _LOS_SHARES, LOS_LETTERS
from processors._jit import kernel
from urbanpulse._events import Severity
from urbanpulse._schema import Metric

__all__ = [
    "LOS_NAMES",
    "LoopHealthConfig",
    "LoopHealthDetector",
    "SpeedDropConfig",
    "SpeedDropDetector",
    "TrafficStateConfig",
    "TrafficStateDetector",
    "los_class",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
U8 = NDArray[np.uint8]
I64_2D = NDArray[np.int64]
F64_2D = NDArray[np.float64]
_DAY_NS: Final = 86_400 * 1_000_000_000
_HOUR_NS: Final = 3_600 * 1_000_000_000
#: Level-of-service letters by class index (the same as ``LOS_LETTERS``).
LOS_NAMES: Final = LOS_LETTERS
_SPEED: Final = Metric.AVERAGE_VEHICLE_SPEED


def los_class(ratio: F64, bounds: tuple[float, ...]) -> NDArray[np.int64]:
    """HCM class index (0 = A ... 5 = F) of speed / free-flow ratios: the number
    of bounds the ratio does not exceed."""
    out = np.zeros(ratio.shape[0], np.int64)
    for b in bounds:
        out += ratio <= b
    return out


# --------------------------------------------------------------------------- traffic state


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficStateConfig:
    enabled: bool = True
    #: Emit congestion start/end events.
    congestion: bool = True
    #: Emit level-of-service change events.
    level_of_service: bool = True
    #: Local hours [start, end) that are off-peak (wraps past midnight).
    offpeak_hours: tuple[float, float] = (22.0, 5.0)
    #: Local time = UTC + this (WIB: +7 h).
    utc_offset_s: int = 7 * 3600
    quantile: float = 0.85
    bin_kmh: float = 2.0
    n_bins: int = 100
    #: Off-peak readings before free flow is known (1 h of 30 s readings).
    min_offpeak_samples: int = 120
    #: Off-peak readings between two free-flow recomputations (1..255).
    refresh_samples: int = 10
    #: EW weight of the smoothed speed (0.03: a time constant of ~33 readings,
    #: ~16 min at 30 s, close to the HCM's 15 min analysis period; at 0.1 (5 min)
    #: the 30 s noise of a lane near 90 % of free flow flapped congestion on and
    #: off: 1.7 false alarms per lane-day against the simulator's noise-free
    #: truth, 0.07 at 0.03, see docs/evaluation.md).
    smoothing_alpha: float = 0.03
    congested_ratio: float = 0.90
    clear_ratio: float = 0.92
    #: Lower (exclusive) ratio bounds of classes A..E (HCM 7 Exh. 18-1).
    los_bounds: tuple[float, float, float, float, float] = _LOS_SHARES
    los_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError("quantile must be in (0, 1)")
        if not (self.bin_kmh > 0 and 2 <= self.n_bins <= 4096):
            raise ValueError("bin_kmh must be > 0 and n_bins in 2..4096")
        if not 1 <= self.min_offpeak_samples <= 65_535:
            raise ValueError("min_offpeak_samples must be in 1..65535")
        if not 1 <= self.refresh_samples <= 255:
            raise ValueError("refresh_samples must be in 1..255")
        if not 0 < self.smoothing_alpha <= 1:
            raise ValueError("smoothing_alpha must be in (0, 1]")
        if self.clear_ratio < self.congested_ratio:
            raise ValueError("clear_ratio must be >= congested_ratio")
        if list(self.los_bounds) != sorted(self.los_bounds, reverse=True):
            raise ValueError("los_bounds must be decreasing")


@kernel
def _los_of(ratio: float, bounds: F64) -> int:
    """``los_class`` of one ratio."""
    c = 0
    for b in bounds:
        if ratio <= b:
            c += 1
    return c


@kernel
def _quantile_of(hist: NDArray[np.uint8], r: int, quantile: float, bin_kmh: float) -> float:
    """Interpolated quantile (km/h) of lane row ``r``'s histogram (linear inside
    its bin)."""
    n_bins = hist.shape[1]
    total = 0
    for j in range(n_bins):
        total += i64(hist[r, j])
    target = quantile * float(total)
    # the first bin whose cumulative count reaches the target (bin 0 if none)
    b, cum, cum_b = 0, 0, i64(hist[r, 0])
    for j in range(n_bins):
        cum += i64(hist[r, j])
        if cum >= target:
            b, cum_b = j, cum
            break
    hb = i64(hist[r, b])
    frac = (target - float(cum_b - hb)) / float(hb)
    return (b + frac) * bin_kmh


@kernel
def _traffic_state_kernel(
    i0: int,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    local: I64,
    utc_offset_ns: int,
    off_lo: float,
    off_hi: float,
    bin_kmh: float,
    refresh: int,
    min_samples: int,
    quantile: float,
    smoothing_alpha: float,
    congestion: bool,
    congested_ratio: float,
    clear_ratio: float,
    level_of_service: bool,
    bounds: F64,
    los_margin: float,
    hist: NDArray[np.uint8],
    total: NDArray[np.uint16],
    tick: U8,
    c_ff: F32,
    c_s: F32,
    c_n: U8,
    c_cong: U8,
    c_los: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    n_bins = hist.shape[1]
    for i in range(i0, sid.shape[0]):
        if k + 2 > oi.shape[0]:
            return i, k, False
        slot = local[metric[i]]
        if slot < 0:
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            return i, k, True
        v = value[i]
        ts = ts_ns[i]
        h = ((ts + utc_offset_ns) % _DAY_NS) / _HOUR_NS
        off = (off_lo <= h < off_hi) if off_lo <= off_hi else (h >= off_lo or h < off_hi)
        if off:
            b = min(max(int(v / bin_kmh), 0), n_bins - 1)
            if hist[r, b] == 255:
                for j in range(n_bins):
                    hist[r, j] >>= 1
            hist[r, b] += 1
            tot = min(i64(total[r]), 65_534) + 1
            total[r] = tot
            tk = (i64(tick[r]) + 1) % refresh
            tick[r] = tk
            if tot >= min_samples and (tk == 0 or np.isnan(c_ff[r])):
                c_ff[r] = _quantile_of(hist, r, quantile, bin_kmh)
        s = f64(c_s[r])
        n = i64(c_n[r])
        a = max(smoothing_alpha, 1.0 / (n + 1))
        s = v if np.isnan(s) else s + a * (v - s)
        c_s[r] = s
        c_n[r] = min(n + 1, 255)
        ff = f64(c_ff[r])
        ratio = s / ff
        if np.isnan(ratio):
            continue
        if congestion:
            cong = c_cong[r] != 0
            if not cong and ratio < congested_ratio:
                c_cong[r] = 1
                put(oi, of, k, i, ts, 0, START, 0, s, ratio, ff)
                k += 1
            elif cong and ratio >= clear_ratio:
                c_cong[r] = 0
                put(oi, of, k, i, ts, 0, END, 0, s, ratio, ff)
                k += 1
        if level_of_service:
            cur = i64(c_los[r])
            if cur == 255:
                c_los[r] = _los_of(ratio, bounds)
            else:
                worse = _los_of(ratio + los_margin, bounds)
                better = _los_of(ratio - los_margin, bounds)
                new = worse if worse > cur else (better if better < cur else cur)
                if new != cur:
                    c_los[r] = new
                    put(oi, of, k, i, ts, 1, CHANGE, cur * 8 + new, s, ratio, ff)
                    k += 1
    return sid.shape[0], k, False


class TrafficStateDetector(DetectorBase):
    name = "traffic_state"

    def __init__(self, config: TrafficStateConfig | None = None) -> None:
        cfg = TrafficStateConfig() if config is None else config
        local = series_layout((_SPEED,))
        table = SlotTable(
            {
                "hist": Column(np.uint8, 0, (cfg.n_bins,)),
                "total": Column(np.uint16, 0),
                "tick": Column(np.uint8, 0),
                "free_flow": Column(np.float32, np.nan),
                "smooth": Column(np.float32, np.nan),
                "n_smooth": Column(np.uint8, 0),
                "congested": Column(np.uint8, 0),
                "los": Column(np.uint8, 255),
            },
            local,
            per_metric=False,
        )
        super().__init__(
            cfg.enabled and (cfg.congestion or cfg.level_of_service), {"traffic": table}
        )
        self.config = cfg
        self._table = table

    def levels(self, sid: NDArray[np.int32]) -> tuple[NDArray[np.uint8], F64, F64]:
        """Current level of service (0 = A ... 5 = F, 255 = not known yet), smoothed
        speed and free-flow speed (km/h, NaN while unknown) of lanes ``sid``
        (no state change)."""
        rows = self._table.find(sid, np.full(sid.shape[0], _SPEED, np.uint8))
        has = rows >= 0
        r = rows[has]
        los = np.full(sid.shape[0], 255, np.uint8)
        smooth = np.full(sid.shape[0], np.nan)
        free = np.full(sid.shape[0], np.nan)
        c = self._table.cols
        los[has] = c["los"][r]
        smooth[has] = c["smooth"][r]
        free[has] = c["free_flow"][r]
        return los, smooth, free

    def free_flow(self, sid: int) -> float:
        """Learned free-flow speed of a lane (NaN while unknown)."""
        row = self._table.row_of(sid, _SPEED)
        return float("nan") if row is None else float(self._table.cols["free_flow"][row])

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        lo, hi = cfg.offpeak_hours
        bounds = np.array(cfg.los_bounds, np.float64)

        def step(i: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _traffic_state_kernel(
                i,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                t.local,
                int(cfg.utc_offset_s) * 1_000_000_000,
                float(lo),
                float(hi),
                float(cfg.bin_kmh),
                int(cfg.refresh_samples),
                int(cfg.min_offpeak_samples),
                float(cfg.quantile),
                float(cfg.smoothing_alpha),
                bool(cfg.congestion),
                float(cfg.congested_ratio),
                float(cfg.clear_ratio),
                bool(cfg.level_of_service),
                bounds,
                float(cfg.los_margin),
                c["hist"],
                c["total"],
                c["tick"],
                c["free_flow"],
                c["smooth"],
                c["n_smooth"],
                c["congested"],
                c["los"],
                oi,
                of,
            )

        out = run_kernel(len(plan), step, row_allocator(t, plan))
        return detections_of(plan, out, metric=int(_SPEED))

    def describe(self, row: DetectionRow) -> Described:
        pct = f"{100 * row.score:.0f} % of free flow {row.ref:.0f} km/h"
        if row.code == 1:
            old, new = LOS_NAMES[row.label // 8], LOS_NAMES[row.label % 8]
            return Described(
                "level_of_service",
                Severity.INFO,
                f"{row.where} level of service {old} -> {new} (speed {row.value:.0f} km/h, {pct})",
                {"from": old, "to": new},
            )
        if row.state == START:
            return Described(
                "congestion",
                Severity.WARNING,
                f"{row.where} congested: speed {row.value:.0f} km/h is {pct}",
                {},
            )
        return Described(
            "congestion",
            Severity.INFO,
            f"{row.where} flowing again: speed {row.value:.0f} km/h is {pct}",
            {},
        )


# --------------------------------------------------------------------------- speed drop


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedDropConfig:
    enabled: bool = True
    drop_fraction: float = 0.40
    drop_kmh: float = 30.0
    #: EW weight of the baseline (0.05: ~20 readings = 10 min at 30 s).
    alpha: float = 0.05
    k: int = 3
    m: int = 5
    warmup_readings: int = 20
    min_baseline_kmh: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.m <= 8:
            raise ValueError("need 1 <= k <= m <= 8")
        if not 0 < self.alpha <= 1 or not 0 < self.drop_fraction < 1 or self.drop_kmh <= 0:
            raise ValueError("alpha in (0, 1], drop_fraction in (0, 1), drop_kmh > 0")
        if not 1 <= self.warmup_readings <= 255:
            raise ValueError("warmup_readings must be in 1..255")


@kernel
def _speed_drop_kernel(
    i0: int,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    local: I64,
    drop_fraction: float,
    drop_kmh: float,
    alpha: float,
    k_hits: int,
    window: int,
    warmup: int,
    min_baseline: float,
    c_b: F32,
    c_n: U8,
    c_bits: U8,
    c_act: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    for i in range(i0, sid.shape[0]):
        if k + 1 > oi.shape[0]:
            return i, k, False
        slot = local[metric[i]]
        if slot < 0:
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            return i, k, True
        v = value[i]
        b = f64(c_b[r])
        n = i64(c_n[r])
        warm = n >= warmup
        thr = np_min(drop_fraction * b, drop_kmh)
        drop = warm and b >= min_baseline and b - v >= thr
        bits = ((i64(c_bits[r]) << 1) | (1 if drop else 0)) & window
        hits = popcount8(bits)
        act = c_act[r] != 0
        xw = np_max(v, b - thr) if warm else v
        a = np_max(alpha, 1.0 / (float(n) + 1.0))
        c_b[r] = b + a * (xw - b)
        c_n[r] = min(n, 254) + 1
        c_bits[r] = bits
        if not act and hits >= k_hits:
            c_act[r] = 1
            put(oi, of, k, i, ts_ns[i], 0, START, hits, v, 1.0 - v / b, b)
            k += 1
        elif act and hits == 0:
            c_act[r] = 0
            put(oi, of, k, i, ts_ns[i], 0, END, hits, v, 1.0 - v / b, b)
            k += 1
    return sid.shape[0], k, False


class SpeedDropDetector(DetectorBase):
    name = "incident"

    def __init__(self, config: SpeedDropConfig | None = None) -> None:
        cfg = SpeedDropConfig() if config is None else config
        local = series_layout((_SPEED,))
        table = SlotTable(
            {
                "baseline": Column(np.float32, 0.0),
                "n": Column(np.uint8, 0),
                "bits": Column(np.uint8, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            per_metric=False,
        )
        super().__init__(cfg.enabled, {"speed": table})
        self.config = cfg
        self._table = table

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config

        def step(i: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _speed_drop_kernel(
                i,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                t.local,
                float(cfg.drop_fraction),
                float(cfg.drop_kmh),
                float(cfg.alpha),
                int(cfg.k),
                (1 << cfg.m) - 1,
                int(cfg.warmup_readings),
                float(cfg.min_baseline_kmh),
                c["baseline"],
                c["n"],
                c["bits"],
                c["active"],
                oi,
                of,
            )

        out = run_kernel(len(plan), step, row_allocator(t, plan))
        return detections_of(plan, out, metric=int(_SPEED))

    def describe(self, row: DetectionRow) -> Described:
        m = self.config.m
        if row.state == START:
            return Described(
                self.name,
                Severity.WARNING,
                f"{row.where} sudden speed drop: {row.value:.0f} km/h vs recent "
                f"{row.ref:.0f} km/h ({-100 * row.score:+.0f} %) in {row.label} of the last "
                f"{m} readings: possible incident",
                {},
            )
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} speed recovered: {row.value:.0f} km/h (baseline {row.ref:.0f} km/h), "
            f"no drop in the last {m} readings",
            {},
        )


# --------------------------------------------------------------------------- loop health


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopHealthConfig:
    enabled: bool = True
    intermittent: bool = True
    constant_occupancy: bool = True
    intermittent_readings: int = 3
    constant_occupancy_readings: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.intermittent_readings <= 255:
            raise ValueError("intermittent_readings must be in 1..255")
        if not 2 <= self.constant_occupancy_readings <= 65_535:
            raise ValueError("constant_occupancy_readings must be in 2..65535")


_INTENSITY: Final = int(Metric.INTENSITY)
_OCCUPANCY: Final = int(Metric.OCCUPANCY)


@kernel
def _loop_keys(first: I64, metric: U8) -> U8:
    """Per message: the table key, occupancy when the message has intensity and
    occupancy, else ``NO_METRIC`` (no state)."""
    n_msg = first.shape[0]
    n = metric.shape[0]
    key = np.empty(n_msg, np.uint8)
    for j in range(n_msg):
        end = first[j + 1] if j + 1 < n_msg else n
        has_i = has_o = False
        for i in range(first[j], end):
            has_i = has_i or metric[i] == _INTENSITY
            has_o = has_o or metric[i] == _OCCUPANCY
        key[j] = _OCCUPANCY if has_i and has_o else NO_METRIC
    return key


@kernel
def _loop_kernel(
    j0: int,
    first: I64,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    intermittent: bool,
    intermittent_readings: int,
    constant: bool,
    constant_readings: int,
    c_zr: U8,
    c_occ: F32,
    c_orun: NDArray[np.uint16],
    c_act: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    n_msg = first.shape[0]
    n = metric.shape[0]
    for j in range(j0, n_msg):
        if k + 2 > oi.shape[0]:
            return j, k, False
        row = first[j]
        end = first[j + 1] if j + 1 < n_msg else n
        i = o = np.nan
        has_i = has_o = False
        for q in range(row, end):
            if metric[q] == _INTENSITY:
                i, has_i = value[q], True
            elif metric[q] == _OCCUPANCY:
                o, has_o = value[q], True
        if not (has_i and has_o):
            continue
        r = slot_row(base, mask, 0, sid[row])
        if r < 0:
            return j, k, True
        inter = i == 0.0 and o > 0.0
        zr = min(i64(c_zr[r]), 254) + 1 if inter else 0
        o32 = np.float32(o)
        same = o32 == c_occ[r]
        orun = min(i64(c_orun[r]), 65_534) + 1 if same else 1
        act = i64(c_act[r])
        ia, ca = (act & 1) != 0, (act & 2) != 0
        i_start = not ia and zr >= intermittent_readings and intermittent
        i_end = ia and not inter
        c_start = not ca and o > 0.0 and orun >= constant_readings and constant
        c_end = ca and not same
        c_zr[r] = zr
        c_occ[r] = o32
        c_orun[r] = orun
        if i_start or i_end or c_start or c_end:
            ia2 = (ia or i_start) and not i_end
            ca2 = (ca or c_start) and not c_end
            c_act[r] = (1 if ia2 else 0) | (2 if ca2 else 0)
            ts = ts_ns[row]
            if i_start or i_end:
                put(oi, of, k, row, ts, 0, START if i_start else END, 0, o, float(zr), i)
                k += 1
            if c_start or c_end:
                put(oi, of, k, row, ts, 1, START if c_start else END, 0, o, float(orun), i)
                k += 1
    return n_msg, k, False


class LoopHealthDetector(DetectorBase):
    name = "loop_health"

    def __init__(self, config: LoopHealthConfig | None = None) -> None:
        cfg = LoopHealthConfig() if config is None else config
        local = series_layout((Metric.INTENSITY, Metric.OCCUPANCY))
        table = SlotTable(
            {
                "zero_run": Column(np.uint8, 0),
                "occ": Column(np.float32, np.nan),
                "occ_run": Column(np.uint16, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            per_metric=False,
        )
        super().__init__(
            cfg.enabled and (cfg.intermittent or cfg.constant_occupancy), {"loop": table}
        )
        self.config = cfg
        self._table = table

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        first = plan.msg_first

        def step(j: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _loop_kernel(
                j,
                first,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                bool(cfg.intermittent),
                int(cfg.intermittent_readings),
                bool(cfg.constant_occupancy),
                int(cfg.constant_occupancy_readings),
                c["zero_run"],
                c["occ"],
                c["occ_run"],
                c["active"],
                oi,
                of,
            )

        def allocate(j: int) -> None:
            key = _loop_keys(first[j:], plan.metric)
            t.allocate(plan.sid[first[j:]], key)

        out = run_kernel(plan.n_messages, step, allocate)
        return detections_of(plan, out, metric=int(Metric.OCCUPANCY))

    def describe(self, row: DetectionRow) -> Described:
        if row.code == 0:
            name = "loop_intermittent"
            if row.state == START:
                msg = (
                    f"{row.where} loop detector intermittent: occupancy {row.value:g} with no "
                    f"vehicle counted for {row.score:g} readings"
                )
            else:
                msg = f"{row.where} loop detector counting again (intensity {row.ref:g})"
        else:
            name = "loop_constant_occupancy"
            if row.state == START:
                msg = (
                    f"{row.where} loop detector occupancy constant at {row.value:g} for "
                    f"{row.score:g} readings"
                )
            else:
                msg = f"{row.where} loop detector occupancy changing again ({row.value:g})"
        sev = Severity.WARNING if row.state == START else Severity.INFO
        return Described(name, sev, msg, {})
