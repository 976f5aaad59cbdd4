"""Humidity artefact of optical PM sensors ("humid_pm").

Optical PM sensors (SDS011, PMS5003) over-read sharply above ~70 % relative
humidity (domain.md section 6). Per message of an air series:

* the effective RH is the RH of the same message, or else the last RH of that
  series if it is at most ``max_rh_age_s`` old (event time, either direction);
  otherwise unknown;
* every PM row (``pm_metrics``) of a message whose effective RH is ``>
  rh_threshold_pct`` (70 %) gets ``ReadingFlag.HUMID`` in the returned flags;
* an EPISODE (event) needs more: ``event_readings`` consecutive messages with
  PM and effective RH ``> event_rh_pct`` (90 %: fog, saturated air); it
  starts at the message completing the run and ends at the first message
  whose effective RH is ``<= clear_below_pct`` (85 %) or unknown. Tropical
  nights sit at 75-90 % RH for hours: flagging every such reading is right
  (the optical over-read is real), but an event per humid night would drown
  the fog episodes operators need to see. Flags are per reading, events per
  episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
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
    put,
    run_kernel,
    series_layout,
    slot_row,
)
from processors._jit import kernel
from urbanpulse._batch import ReadingBatch
from urbanpulse._events import Severity
from urbanpulse._schema import N_METRICS, Metric, ReadingFlag

__all__ = ["HumidityConfig", "HumidityDetector"]

_NS: Final = 1_000_000_000
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
U8 = NDArray[np.uint8]
I64_2D = NDArray[np.int64]
F64_2D = NDArray[np.float64]


_RH: Final = int(Metric.RELATIVE_HUMIDITY)
_HUMID: Final = int(ReadingFlag.HUMID)


@kernel
def _humid_keys(first: I64, metric: U8, is_pm: NDArray[np.bool_]) -> U8:
    """Per message: the table key, RH when the message has PM or RH, else
    ``NO_METRIC`` (no state)."""
    n_msg = first.shape[0]
    n = metric.shape[0]
    key = np.full(n_msg, NO_METRIC, np.uint8)
    for j in range(n_msg):
        end = first[j + 1] if j + 1 < n_msg else n
        for i in range(first[j], end):
            if metric[i] == _RH or is_pm[metric[i]]:
                key[j] = _RH
    return key


@kernel
def _humid_kernel(
    j0: int,
    first: I64,
    sid: I32,
    metric: U8,
    value: F64,
    ts_ns: I64,
    base: I32,
    mask: U8,
    is_pm: NDArray[np.bool_],
    max_age_s: float,
    flag_pct: float,
    event_pct: float,
    event_readings: int,
    clear_pct: float,
    c_rh: F32,
    c_rh_s: NDArray[np.uint32],
    c_run: U8,
    c_act: U8,
    flags: U8,
    oi: I64_2D,
    of: F64_2D,
) -> Step:
    k = 0
    n_msg = first.shape[0]
    n = metric.shape[0]
    for j in range(j0, n_msg):
        if k + 1 > oi.shape[0]:
            return j, k, False
        a = first[j]
        end = first[j + 1] if j + 1 < n_msg else n
        hp = hr = False
        rh = np.nan
        for i in range(a, end):
            if metric[i] == _RH:
                hr, rh = True, value[i]
            elif is_pm[metric[i]]:
                hp = True
        if not (hp or hr):
            continue
        r = slot_row(base, mask, 0, sid[a])
        if r < 0:
            return j, k, True
        ts = ts_ns[a]
        t_s = ts // _NS
        last = f64(c_rh[r])
        age = abs(t_s - i64(c_rh_s[r]))
        eff = rh if hr else (last if age <= max_age_s else np.nan)
        if hp and eff > flag_pct:
            for i in range(a, end):
                if is_pm[metric[i]]:
                    flags[i] = _HUMID
        act = c_act[r] != 0
        wet = hp and eff > event_pct
        run = min(i64(c_run[r]), 254) + 1 if wet else 0
        c_run[r] = run
        start = wet and not act and run >= event_readings
        stop = act and not eff > clear_pct
        if hr:
            c_rh[r] = eff
            c_rh_s[r] = t_s
        if start or stop:
            c_act[r] = 1 if start else 0
            state, ref = (START, event_pct) if start else (END, clear_pct)
            put(oi, of, k, a, ts, 0, state, 0, eff, eff - event_pct, ref)
            k += 1
    return n_msg, k, False


@dataclass(frozen=True, slots=True, kw_only=True)
class HumidityConfig:
    enabled: bool = True
    #: PM readings above this RH are flagged.
    rh_threshold_pct: float = 70.0
    #: An episode starts after ``event_readings`` messages above this RH...
    event_rh_pct: float = 90.0
    event_readings: int = 10
    #: ... and ends when RH falls to this or below.
    clear_below_pct: float = 85.0
    #: How old the series' last RH may be for a message without RH.
    max_rh_age_s: float = 300.0
    pm_metrics: tuple[Metric, ...] = (Metric.PM25, Metric.PM10)

    def __post_init__(self) -> None:
        if self.clear_below_pct > self.event_rh_pct:
            raise ValueError("clear_below_pct must be <= event_rh_pct")
        if not 1 <= self.event_readings <= 255:
            raise ValueError("event_readings must be in 1..255")
        if self.max_rh_age_s < 0:
            raise ValueError("max_rh_age_s must be >= 0")


class HumidityDetector(DetectorBase):
    name = "humid_pm"

    def __init__(self, config: HumidityConfig | None = None) -> None:
        cfg = HumidityConfig() if config is None else config
        local = series_layout((*cfg.pm_metrics, Metric.RELATIVE_HUMIDITY))
        table = SlotTable(
            {
                "rh": Column(np.float32, np.nan),
                "rh_s": Column(np.uint32, 0),
                "run": Column(np.uint8, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            per_metric=False,
        )
        super().__init__(cfg.enabled, {"humid": table})
        self.config = cfg
        self._table = table
        self._is_pm = np.zeros(N_METRICS, np.bool_)
        self._is_pm[list(cfg.pm_metrics)] = True

    def _update(self, plan: BatchPlan) -> Detections:
        return self._detect(plan)[0]

    def update_flags(
        self, batch: ReadingBatch, plan: BatchPlan | None = None
    ) -> tuple[Detections, NDArray[np.uint8]]:
        """Detections and the ``ReadingFlag.HUMID`` bits for the batch rows."""
        if not self.enabled or len(batch) == 0:
            return Detections.empty(), np.zeros(len(batch), np.uint8)
        return self._detect(BatchPlan.of(batch) if plan is None else plan)

    def _detect(self, plan: BatchPlan) -> tuple[Detections, NDArray[np.uint8]]:
        t, cfg = self._table, self.config
        first = plan.msg_first
        flags = np.zeros(len(plan), np.uint8)

        def step(j: int, oi: I64_2D, of: F64_2D) -> Step:
            c = t.cols
            return _humid_kernel(
                j,
                first,
                plan.sid,
                plan.metric,
                plan.value,
                plan.ts_ns,
                t.base,
                t.mask,
                self._is_pm,
                float(cfg.max_rh_age_s),
                float(cfg.rh_threshold_pct),
                float(cfg.event_rh_pct),
                int(cfg.event_readings),
                float(cfg.clear_below_pct),
                c["rh"],
                c["rh_s"],
                c["run"],
                c["active"],
                flags,
                oi,
                of,
            )

        def allocate(j: int) -> None:
            key = _humid_keys(first[j:], plan.metric, self._is_pm)
            t.allocate(plan.sid[first[j:]], key)

        out = run_kernel(plan.n_messages, step, allocate)
        return detections_of(plan, out, metric=int(Metric.RELATIVE_HUMIDITY)), flags

    def describe(self, row: DetectionRow) -> Described:
        if row.state == START:
            return Described(
                self.name,
                Severity.INFO,
                f"{row.where} relative humidity {row.value:.0f} % is above "
                f"{row.ref:g} %: fog or saturated air, PM readings over-read (flagged)",
                {},
            )
        rh = "unknown" if np.isnan(row.value) else f"{row.value:.0f} %"
        return Described(
            self.name,
            Severity.INFO,
            f"{row.where} relative humidity {rh} (<= {row.ref:g} % or no recent reading): "
            "PM readings no longer flagged",
            {},
        )
