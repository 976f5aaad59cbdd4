"""Ground truth of the simulated city's natural conditions, from its noise-free signal.

Injected faults are labelled where they are injected (``sim._faults``). The
city also has conditions nobody injects: evening PM2.5 that crosses the US
AQI "Unhealthy for Sensitive Groups" line, rush-hour congestion, saturated
air after rain. A detector that reports them is right, so scoring needs them
labelled too, and the labels must not come from the detector under test.

:func:`condition_labels` evaluates the simulator's value model WITHOUT noise
(``ValueModel(noise=False)``) on a regular grid (``step_s``, 60 s), applies
the scenario's world events (haze, fog, incidents, not sensor faults such as
spikes, stuck or pinned values, dropouts or power faults) and labels, per
sensor or lane, the intervals where the noise-free signal is in the condition:

=================== ============ ====================================================
fault (label)       detectors    condition of the noise-free signal
=================== ============ ====================================================
``aqi_unhealthy``   aqi          US AQI of the PM NowCast (12 hourly means of PM2.5
                                 and PM10) >= 101 ("Unhealthy for Sensitive
                                 Groups" or worse), from the end of each hour
``ispu_unhealthy``  ispu         ISPU of the 24 h PM2.5 and PM10 means (>= 18 hours
                                 present) >= 101 ("Tidak Sehat" or worse)
``saturated_air``   humid_pm     RH > ``saturated_rh_pct`` (90 %)
``slow_traffic``    congestion   speed < ``congested_ratio`` (0.9) x the lane's
                                 free-flow speed, which is (as the issue defines
                                 it) the 85th percentile of the lane's off-peak
                                 speeds (22-05 WIB), here over the whole run and
                                 with the model's noise: the spread of 30 s mean
                                 speeds is real, not sensor error
=================== ============ ====================================================

Runs shorter than ``min_duration_s`` are dropped and gaps shorter than
``merge_gap_s`` are closed first (a condition that lasts a minute is not one
an operator acts on). The index conditions use the pure index functions of
``processors._indices`` (tested on their own against worked examples and
every band edge) on noise-free hourly means: they say what the index WOULD
be without sensor noise and sensor faults; gases are left out (in this model
PM dominates both indices by a wide margin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from processors._indices import aqi, ispu, nowcast
from sim._faults import compile_scenario
from sim._fleet import Fleet
from sim._groundtruth import Label
from sim._scenario import FogFault, HazeFault, IncidentFault, Scenario
from sim._values import ValueModel, local_hour
from urbanpulse._schema import Kind

__all__ = ["CONDITION_DETECTORS", "TruthOptions", "condition_labels", "runs"]

#: Condition (label ``fault``) -> detectors expected to report it.
CONDITION_DETECTORS: Final[dict[str, tuple[str, ...]]] = {
    "aqi_unhealthy": ("aqi",),
    "ispu_unhealthy": ("ispu",),
    "saturated_air": ("humid_pm",),
    "slow_traffic": ("congestion",),
}

_S: Final = 1_000_000_000
_HOUR_NS: Final = 3600 * _S
#: Hourly means an ISPU day needs (of 24).
_ISPU_MIN_HOURS: Final = 18
_F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class TruthOptions:
    step_s: float = 60.0
    saturated_rh_pct: float = 90.0
    congested_ratio: float = 0.90
    #: AQI / ISPU index above which the air is "unhealthy" (category 2 and up).
    unhealthy_index: float = 100.0
    #: Local hours [start, end) of off-peak traffic (WIB), for free flow.
    offpeak_hours: tuple[float, float] = (22.0, 5.0)
    free_flow_quantile: float = 0.85
    min_duration_s: float = 600.0
    merge_gap_s: float = 600.0

    def __post_init__(self) -> None:
        if self.step_s <= 0 or 3600 % self.step_s:
            raise ValueError("step_s must be > 0 and divide an hour")
        if self.min_duration_s < 0 or self.merge_gap_s < 0:
            raise ValueError("min_duration_s and merge_gap_s must be >= 0")


def runs(
    mask: NDArray[np.bool_], *, merge_gap: int = 0, min_length: int = 1
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Runs of True along the last axis of a 2-D ``mask``: ``(row, start, stop)``
    with ``stop`` exclusive, after closing gaps of fewer than ``merge_gap``
    False cells between two runs, keeping runs of at least ``min_length``."""
    m = np.asarray(mask, dtype=np.bool_)
    if m.ndim != 2:
        raise ValueError("mask must be 2-D")
    n, k = m.shape
    padded = np.zeros((n, k + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    row, start = np.nonzero(d == 1)
    row2, stop = np.nonzero(d == -1)
    assert np.array_equal(row, row2)
    if merge_gap > 0 and row.shape[0] > 1:
        # a gap joins two runs of the same row when it is short enough
        join = (row[1:] == row[:-1]) & (start[1:] - stop[:-1] < merge_gap)
        keep_start = np.concatenate([[True], ~join])
        keep_stop = np.concatenate([~join, [True]])
        row, start, stop = row[keep_start], start[keep_start], stop[keep_stop]
    long = stop - start >= min_length
    return row[long], start[long], stop[long]


def _trailing_day(per_step: _F64, n_hours: int) -> _F64:
    """``(n, n_hours x steps per hour)`` -> ``(n x n_hours, 24)``: at the end of each
    hour its mean and the means of the 23 hours before it, newest first (NaN
    before the first hour); rows are hours within sensors."""
    n = per_step.shape[0]
    hourly = per_step.reshape(n, n_hours, -1).mean(axis=2)
    padded = np.concatenate([np.full((n, 23), np.nan), hourly], axis=1)
    return sliding_window_view(padded, 24, axis=1)[:, :, ::-1].reshape(-1, 24)


def _world(scenario: Scenario | None) -> Scenario | None:
    if scenario is None:
        return None
    faults = [f for f in scenario.faults if isinstance(f, HazeFault | FogFault | IncidentFault)]
    return Scenario(origin=scenario.origin, faults=faults) if faults else None


def condition_labels(
    fleet: Fleet,
    *,
    start_ns: int,
    end_ns: int,
    scenario: Scenario | None = None,
    options: TruthOptions | None = None,
) -> list[Label]:
    """Labels of the natural conditions in ``[start_ns, end_ns)`` (module doc).

    ``start_ns`` should be on an hour (the hourly means are clock hours from it).
    """
    o = TruthOptions() if options is None else options
    step_ns = round(o.step_s * _S)
    n_steps = max(0, (end_ns - start_ns) // step_ns)
    if n_steps == 0:
        return []
    vm = ValueModel(fleet, noise=False)
    world = _world(scenario)
    plan = (
        compile_scenario(world, fleet, start_ns=start_ns, values=vm) if world is not None else None
    )
    grid = start_ns + np.arange(n_steps, dtype=np.int64) * step_ns
    merge = int(np.ceil(o.merge_gap_s * _S / step_ns))
    least = max(1, int(np.ceil(o.min_duration_s * _S / step_ns)))
    out: list[Label] = []

    def emit(
        streams: NDArray[np.intp],
        fault: str,
        row: NDArray[np.intp],
        lo_ns: NDArray[np.int64],
        hi_ns: NDArray[np.int64],
        *,
        lanes: bool,
    ) -> None:
        for r, lo, hi in zip(row.tolist(), lo_ns.tolist(), hi_ns.tolist(), strict=True):
            if lo >= hi:  # an index that turned bad at the very end of the period
                continue
            s = int(streams[r])
            out.append(
                Label(
                    sensor_id=fleet.sensor_id[s],
                    lane=int(fleet.lane[s]) if lanes else 0,
                    fault=fault,
                    start_ns=int(lo),
                    end_ns=int(hi),
                    detectors=CONDITION_DETECTORS[fault],
                    city=fleet.city,
                    district=fleet.district(s),
                )
            )

    def emit_grid(
        streams: NDArray[np.intp], fault: str, mask: NDArray[np.bool_], *, lanes: bool
    ) -> None:
        row, a, b = runs(mask, merge_gap=merge, min_length=least)
        emit(streams, fault, row, grid[a], np.minimum(grid[b - 1] + step_ns, end_ns), lanes=lanes)

    def on_grid(streams: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
        return np.repeat(streams, n_steps), np.tile(grid, streams.shape[0])

    air = np.flatnonzero(fleet.kind == Kind.AIR)
    if air.shape[0]:
        stream, ts = on_grid(air)
        cols = vm.air(stream, ts, gases=np.zeros(stream.shape[0], np.bool_))
        if plan is not None:
            plan.apply_air(stream, ts, cols)
        shape = (air.shape[0], n_steps)
        emit_grid(
            air,
            "saturated_air",
            cols.relative_humidity.reshape(shape) > o.saturated_rh_pct,
            lanes=False,
        )
        per_hour = round(3600 / o.step_s)
        n_hours = n_steps // per_hour
        if n_hours:
            # index at the end of hour h (a value from hour h + 1's start on)
            day25, day10 = (
                _trailing_day(pm.reshape(shape)[:, : n_hours * per_hour], n_hours)
                for pm in (cols.pm25, cols.pm10)
            )
            a = aqi({"pm25": nowcast(day25[:, :12]), "pm10": nowcast(day10[:, :12])})
            bad_aqi = (a.index > o.unhealthy_index).reshape(air.shape[0], n_hours)
            i = ispu({"pm25": np.nanmean(day25, axis=1), "pm10": np.nanmean(day10, axis=1)})
            bad_ispu = (i.index > o.unhealthy_index).reshape(air.shape[0], n_hours)
            bad_ispu[:, : _ISPU_MIN_HOURS - 1] = False
            hour_ns = start_ns + (np.arange(n_hours + 1, dtype=np.int64) + 1) * _HOUR_NS
            hour_ns = np.minimum(hour_ns, end_ns)
            for fault, bad in (("aqi_unhealthy", bad_aqi), ("ispu_unhealthy", bad_ispu)):
                row, a_h, b_h = runs(bad)
                emit(air, fault, row, hour_ns[a_h], hour_ns[b_h], lanes=False)

    def traffic(model: ValueModel, stream: NDArray[np.intp], ts: NDArray[np.int64]) -> _F64:
        tcols = model.traffic(stream, ts)
        if plan is not None:
            plan.apply_traffic(stream, ts, tcols)
        return tcols.average_vehicle_speed

    lanes = np.flatnonzero(fleet.kind == Kind.TRAFFIC)
    if lanes.shape[0]:
        stream, ts = on_grid(lanes)
        hour = local_hour(ts)
        off_lo, off_hi = o.offpeak_hours
        off = np.flatnonzero(
            (hour >= off_lo) | (hour < off_hi)
            if off_lo > off_hi
            else (hour >= off_lo) & (hour < off_hi)
        )
        # free flow from the noisy model, which is needed off-peak only
        noisy = np.full(stream.shape[0], np.nan)
        noisy[off] = traffic(ValueModel(fleet), stream[off], ts[off])
        shape = (lanes.shape[0], n_steps)
        free = np.nanquantile(noisy.reshape(shape), o.free_flow_quantile, axis=1)
        ratio = traffic(vm, stream, ts).reshape(shape) / free[:, None]
        emit_grid(lanes, "slow_traffic", ratio < o.congested_ratio, lanes=True)
    out.sort(key=lambda lb: (lb.start_ns, lb.sensor_id, lb.lane, lb.fault))
    return out
