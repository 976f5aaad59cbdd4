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
    Speeds are smoothed per lane (EW, ``smoothing_alpha``); with ``ratio =
    smoothed speed / free flow``:

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
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
    CHANGE,
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
    series_layout,
)
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
_DAY_NS: Final = 86_400 * 1_000_000_000
_HOUR_NS: Final = 3_600 * 1_000_000_000
LOS_NAMES: Final = ("A", "B", "C", "D", "E", "F")
_POPCOUNT: Final = np.array([bin(i).count("1") for i in range(256)], np.uint8)
_SPEED: Final = Metric.AVERAGE_VEHICLE_SPEED


def los_class(ratio: F64, bounds: tuple[float, ...]) -> NDArray[np.int64]:
    """HCM class index (0 = A ... 5 = F) of speed / free-flow ratios: the number
    of bounds the ratio does not exceed."""
    out = np.zeros(ratio.shape[0], np.int64)
    for b in bounds:
        out += ratio <= b
    return out


def _offpeak(ts_ns: NDArray[np.int64], hours: tuple[float, float], utc_offset_s: int) -> Any:
    h = ((ts_ns + utc_offset_s * 1_000_000_000) % _DAY_NS) / _HOUR_NS
    lo, hi = hours
    if lo <= hi:
        return (h >= lo) & (h < hi)
    return (h >= lo) | (h < hi)


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
    #: EW weight of the smoothed speed (0.1: ~10 readings = 5 min at 30 s).
    smoothing_alpha: float = 0.1
    congested_ratio: float = 0.90
    clear_ratio: float = 0.92
    los_bounds: tuple[float, float, float, float, float] = (0.80, 0.67, 0.50, 0.40, 0.30)
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


class TrafficStateDetector(DetectorBase):
    name = "traffic_state"

    def __init__(self, config: TrafficStateConfig | None = None) -> None:
        cfg = TrafficStateConfig() if config is None else config
        local, width = series_layout((_SPEED,))
        table = SlotTable(
            {
                "hist": Column(np.uint8, 0, (cfg.n_bins,)),
                "total": Column(np.uint16, 0),
                "tick": Column(np.uint8, 0),
                "free_flow": Column(np.float32, np.nan),
                "smooth": Column(np.float32, np.nan),
                "congested": Column(np.uint8, 0),
                "los": Column(np.uint8, 255),
            },
            local,
            width,
        )
        super().__init__(
            cfg.enabled and (cfg.congestion or cfg.level_of_service), {"traffic": table}
        )
        self.config = cfg
        self._table = table

    def free_flow(self, sid: int) -> float:
        """Learned free-flow speed of a lane (NaN while unknown)."""
        row = self._table.row_of(sid, _SPEED)
        return float("nan") if row is None else float(self._table.cols["free_flow"][row])

    def _free_flow_of(self, hist: NDArray[np.uint8]) -> F64:
        """Interpolated quantile (km/h) of each histogram row."""
        h = hist.astype(np.int64)
        cum = np.cumsum(h, axis=1)
        target = self.config.quantile * cum[:, -1].astype(np.float64)
        b = np.argmax(cum >= target[:, None], axis=1)
        i = np.arange(h.shape[0])
        hb = h[i, b].astype(np.float64)
        lower = (cum[i, b] - h[i, b]).astype(np.float64)
        frac = (target - lower) / hb
        ff: F64 = (b + frac) * self.config.bin_kmh
        return ff

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        sel = np.flatnonzero(plan.metric == _SPEED)
        if sel.shape[0] == 0:
            return Detections.empty()
        val, ts, sid = plan.value[sel], plan.ts_ns[sel], plan.sid[sel]
        rows_all = t.rows(sid, plan.metric[sel])
        off_all = _offpeak(ts, cfg.offpeak_hours, cfg.utc_offset_s)
        bins_all = np.clip((val / cfg.bin_kmh).astype(np.int64), 0, cfg.n_bins - 1)
        hist, total, ffc = t.cols["hist"], t.cols["total"], t.cols["free_flow"]
        tick = t.cols["tick"]
        c_s, c_cong, c_los = t.cols["smooth"], t.cols["congested"], t.cols["los"]
        bounds = cfg.los_bounds
        out = Collector()
        for p in plan.row_rounds(sel):
            rows = rows_all[p]
            off = off_all[p]
            if bool(off.any()):
                ro, b = rows[off], bins_all[p][off]
                full = hist[ro, b] == 255
                if bool(full.any()):
                    hist[ro[full]] >>= 1
                hist[ro, b] += 1
                tot = np.minimum(total[ro], 65_534) + 1
                total[ro] = tot
                tk = (tick[ro].astype(np.int64) + 1) % cfg.refresh_samples
                tick[ro] = tk
                due = (tot >= cfg.min_offpeak_samples) & ((tk == 0) | np.isnan(ffc[ro]))
                known = ro[due]
                if known.shape[0]:
                    ffc[known] = self._free_flow_of(hist[known])
            v = val[p]
            s = c_s[rows].astype(np.float64)
            s = np.where(np.isnan(s), v, s + cfg.smoothing_alpha * (v - s))
            c_s[rows] = s
            ff = ffc[rows].astype(np.float64)
            ratio = s / ff
            known_r = ~np.isnan(ratio)
            if not bool(known_r.any()):
                continue
            common: dict[str, Any] = {
                "row": sel[p],
                "sid": sid[p],
                "metric": int(_SPEED),
                "ts_ns": ts[p],
                "value": s,
                "score": ratio,
                "ref": ff,
            }
            if cfg.congestion:
                cong = c_cong[rows].view(np.bool_)
                start = known_r & ~cong & (ratio < cfg.congested_ratio)
                end = known_r & cong & (ratio >= cfg.clear_ratio)
                if bool(start.any()) or bool(end.any()):
                    c_cong[rows] = ((cong | start) & ~end).view(np.uint8)
                    out.add(start, **common, code=0, state=START)
                    out.add(end, **common, code=0, state=END)
            if cfg.level_of_service:
                cur = c_los[rows].astype(np.int64)
                worse = los_class(ratio + cfg.los_margin, bounds)
                better = los_class(ratio - cfg.los_margin, bounds)
                new = np.where(worse > cur, worse, np.where(better < cur, better, cur))
                new = np.where(cur == 255, los_class(ratio, bounds), new)
                new = np.where(known_r, new, cur)
                change = (cur != 255) & (new != cur)
                c_los[rows] = new.astype(np.uint8)
                out.add(change, **common, code=1, state=CHANGE, label=cur * 8 + new)
        return out.result()

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


class SpeedDropDetector(DetectorBase):
    name = "incident"

    def __init__(self, config: SpeedDropConfig | None = None) -> None:
        cfg = SpeedDropConfig() if config is None else config
        local, width = series_layout((_SPEED,))
        table = SlotTable(
            {
                "baseline": Column(np.float32, 0.0),
                "n": Column(np.uint8, 0),
                "bits": Column(np.uint8, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            width,
        )
        super().__init__(cfg.enabled, {"speed": table})
        self.config = cfg
        self._table = table

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        sel = np.flatnonzero(plan.metric == _SPEED)
        if sel.shape[0] == 0:
            return Detections.empty()
        val, ts, sid = plan.value[sel], plan.ts_ns[sel], plan.sid[sel]
        rows_all = t.rows(sid, plan.metric[sel])
        c_b, c_n, c_bits, c_act = (t.cols[k] for k in ("baseline", "n", "bits", "active"))
        mask = (1 << cfg.m) - 1
        out = Collector()
        for p in plan.row_rounds(sel):
            rows = rows_all[p]
            v = val[p]
            b = c_b[rows].astype(np.float64)
            n = c_n[rows]
            warm = n >= cfg.warmup_readings
            thr = np.minimum(cfg.drop_fraction * b, cfg.drop_kmh)
            drop = warm & (b >= cfg.min_baseline_kmh) & (b - v >= thr)
            bits = ((c_bits[rows] << 1) | drop) & mask
            hits = _POPCOUNT[bits]
            act = c_act[rows].view(np.bool_)
            start = ~act & (hits >= cfg.k)
            end = act & (hits == 0)
            xw = np.where(warm, np.maximum(v, b - thr), v)
            a = np.maximum(cfg.alpha, 1.0 / (n.astype(np.float64) + 1.0))
            c_b[rows] = b + a * (xw - b)
            c_n[rows] = np.minimum(n, 254) + 1
            c_bits[rows] = bits
            if bool(start.any()) or bool(end.any()):
                c_act[rows] = ((act | start) & ~end).view(np.uint8)
                common: dict[str, Any] = {
                    "row": sel[p],
                    "sid": sid[p],
                    "metric": int(_SPEED),
                    "code": 0,
                    "ts_ns": ts[p],
                    "value": v,
                    "score": 1.0 - v / b,
                    "ref": b,
                    "label": hits,
                }
                out.add(start, **common, state=START)
                out.add(end, **common, state=END)
        return out.result()

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


class LoopHealthDetector(DetectorBase):
    name = "loop_health"

    def __init__(self, config: LoopHealthConfig | None = None) -> None:
        cfg = LoopHealthConfig() if config is None else config
        local, width = series_layout((Metric.INTENSITY, Metric.OCCUPANCY))
        table = SlotTable(
            {
                "zero_run": Column(np.uint8, 0),
                "occ": Column(np.float32, np.nan),
                "occ_run": Column(np.uint16, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            width,
        )
        super().__init__(
            cfg.enabled and (cfg.intermittent or cfg.constant_occupancy), {"loop": table}
        )
        self.config = cfg
        self._table = table

    def _update(self, plan: BatchPlan) -> Detections:
        t, cfg = self._table, self.config
        inten, has_i = plan.message_values(Metric.INTENSITY)
        occ, has_o = plan.message_values(Metric.OCCUPANCY)
        msel = np.flatnonzero(has_i & has_o)
        if msel.shape[0] == 0:
            return Detections.empty()
        first = plan.msg_first[msel]
        sid, ts = plan.sid[first], plan.ts_ns[first]
        rows_all = t.rows(sid, np.full(msel.shape[0], Metric.OCCUPANCY, np.uint8))
        c_zr, c_occ, c_orun, c_act = (t.cols[k] for k in ("zero_run", "occ", "occ_run", "active"))
        out = Collector()
        for p in plan.message_rounds(msel):
            rows = rows_all[p]
            m = msel[p]
            i, o = inten[m], occ[m]
            inter = (i == 0.0) & (o > 0.0)
            zr = np.where(inter, np.minimum(c_zr[rows], 254) + 1, 0).astype(np.uint8)
            o32 = o.astype(np.float32)
            same = o32 == c_occ[rows]
            orun = np.where(same, np.minimum(c_orun[rows], 65_534) + 1, 1).astype(np.uint16)
            act = c_act[rows]
            ia, ca = (act & 1).astype(np.bool_), (act & 2).astype(np.bool_)
            i_start = ~ia & (zr >= cfg.intermittent_readings) & cfg.intermittent
            i_end = ia & ~inter
            c_start = ~ca & (o > 0.0) & (orun >= cfg.constant_occupancy_readings)
            c_start &= cfg.constant_occupancy
            c_end = ca & ~same
            c_zr[rows] = zr
            c_occ[rows] = o32
            c_orun[rows] = orun
            if bool((i_start | i_end | c_start | c_end).any()):
                ia2 = (ia | i_start) & ~i_end
                ca2 = (ca | c_start) & ~c_end
                c_act[rows] = ia2.astype(np.uint8) | (ca2.astype(np.uint8) << 1)
                common: dict[str, Any] = {
                    "row": first[p],
                    "sid": sid[p],
                    "metric": int(Metric.OCCUPANCY),
                    "ts_ns": ts[p],
                    "value": o,
                    "ref": i,
                }
                out.add(i_start, **common, code=0, state=START, score=zr.astype(np.float64))
                out.add(i_end, **common, code=0, state=END, score=zr.astype(np.float64))
                out.add(c_start, **common, code=1, state=START, score=orun.astype(np.float64))
                out.add(c_end, **common, code=1, state=END, score=orun.astype(np.float64))
        return out.result()

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
