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
from typing import Any

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
    series_layout,
)
from urbanpulse._batch import ReadingBatch
from urbanpulse._events import Severity
from urbanpulse._schema import N_METRICS, Metric, ReadingFlag

__all__ = ["HumidityConfig", "HumidityDetector"]

_NS = 1_000_000_000


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
        local, width = series_layout((*cfg.pm_metrics, Metric.RELATIVE_HUMIDITY))
        table = SlotTable(
            {
                "rh": Column(np.float32, np.nan),
                "rh_s": Column(np.uint32, 0),
                "run": Column(np.uint8, 0),
                "active": Column(np.uint8, 0),
            },
            local,
            width,
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
        flags = np.zeros(len(plan), np.uint8)
        t, cfg = self._table, self.config
        rh_msg, has_rh = plan.message_values(Metric.RELATIVE_HUMIDITY)
        pm_rows = np.flatnonzero(self._is_pm[plan.metric])
        has_pm = np.zeros(plan.n_messages, np.bool_)
        has_pm[plan.msg_of_row[pm_rows]] = True
        msel = np.flatnonzero(has_pm | has_rh)
        if msel.shape[0] == 0:
            return Detections.empty(), flags
        first = plan.msg_first[msel]
        sid, ts = plan.sid[first], plan.ts_ns[first]
        rows_all = t.rows(sid, np.full(msel.shape[0], Metric.RELATIVE_HUMIDITY, np.uint8))
        t_s_all = ts // _NS
        humid_msg = np.zeros(plan.n_messages, np.bool_)
        c_rh, c_rh_s, c_act, c_run = (t.cols[k] for k in ("rh", "rh_s", "active", "run"))
        out = Collector()
        for p in plan.message_rounds(msel):
            rows = rows_all[p]
            m = msel[p]
            t_s = t_s_all[p]
            hr = has_rh[m]
            hp = has_pm[m]
            last = c_rh[rows].astype(np.float64)
            age = np.abs(t_s - c_rh_s[rows].astype(np.int64))
            eff = np.where(hr, rh_msg[m], np.where(age <= cfg.max_rh_age_s, last, np.nan))
            humid = eff > cfg.rh_threshold_pct
            humid_msg[m] = humid & hp
            act = c_act[rows].view(np.bool_)
            wet = hp & (eff > cfg.event_rh_pct)
            run = np.where(wet, np.minimum(c_run[rows], 254) + 1, 0).astype(np.uint8)
            c_run[rows] = run
            start = wet & ~act & (run >= cfg.event_readings)
            end = act & ~(eff > cfg.clear_below_pct)
            c_rh[rows] = np.where(hr, rh_msg[m], last).astype(np.float32)
            c_rh_s[rows] = np.where(hr, t_s, c_rh_s[rows]).astype(np.uint32)
            if bool(start.any()) or bool(end.any()):
                c_act[rows] = ((act | start) & ~end).view(np.uint8)
                common: dict[str, Any] = {
                    "row": first[p],
                    "sid": sid[p],
                    "metric": int(Metric.RELATIVE_HUMIDITY),
                    "code": 0,
                    "ts_ns": ts[p],
                    "value": eff,
                    "score": eff - cfg.event_rh_pct,
                }
                out.add(start, **common, state=START, ref=cfg.event_rh_pct)
                out.add(end, **common, state=END, ref=cfg.clear_below_pct)
        flags[pm_rows[humid_msg[plan.msg_of_row[pm_rows]]]] = ReadingFlag.HUMID
        return out.result(), flags

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
