"""A scenario resolved against a fleet: fault spans per stream, applied in bulk, and labels.

:func:`compile_scenario` turns each scenario entry into *spans* (stream,
``[lo, hi)`` in reading time, kind, metric, parameters) kept as
struct-of-arrays, plus the ground-truth :class:`~sim.Label` list. For a batch
of readings, one :func:`~sim._groundtruth.interval_pairs` call per span table
finds every (reading, span) hit; effects are then applied per kind with numpy
masks, never per reading.

Time: a stream's *nominal* slots are its schedule (phase + k x interval).
Per-model jitter moves the *reading time* of each slot by a hashed offset
(ms resolution, less than half an interval, so a stream's readings stay in
order); values, faults and labels all use the reading time. Clock skew then
shifts only the timestamp written in the payload.

Power faults act on the schedule too: a slot inside one is dropped with
probability ``skip_fraction`` (a hash of the stream and slot) and its reading
time is delayed by a hashed 0 to ``min(0.45 interval, interval - 2 jitter)``
(so a stream's readings stay in order).

Order of effects: air: haze (additive, ramped), fog (RH up to ``rh_pct`` less a
hashed 0-1.5 %: a saturated humidity sensor still wanders, it does not freeze;
PM x factor on low-cost nodes; both ramp in and out over 20 min, as fog forms
and lifts), power (PM x factor), spike, stuck, out of range; traffic: incident or
its upstream queue (worst severity wins), spike, stuck. Dropout removes
readings; clock skew rewrites timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from sim._fleet import MODEL_LOW_COST, MODEL_NAMES, Fleet, derive, mix64, unit_uniform
from sim._groundtruth import EXPECTED_DETECTORS, Label, interval_pairs
from sim._scenario import (
    ClockSkewFault,
    DropoutFault,
    FogFault,
    HazeFault,
    IncidentFault,
    OutOfRangeFault,
    PowerFault,
    Scenario,
    SpikeFault,
    StuckFault,
    _metric_ok,
)
from sim._values import AirColumns, TrafficColumns, ValueModel
from urbanpulse._errors import ConfigError
from urbanpulse._schema import METRIC_BY_FIELD, Kind, Metric

__all__ = ["FaultPlan", "compile_scenario"]

_I64 = NDArray[np.int64]
_F64 = NDArray[np.float64]
_MS: Final = 1_000_000

# Span codes, in the order their effects are applied.
#: Fog forms and lifts over this long (RH and the PM over-read ramp linearly).
_FOG_RAMP_NS: Final = 20 * 60 * 1_000_000_000
HAZE, FOG, INCIDENT, SPIKE, STUCK, OUT_OF_RANGE, DROPOUT, SKEW, POWER = range(9)
#: Share of an interval a power fault may delay a reading (less twice the jitter).
_POWER_DELAY: Final = 0.45
_AIR_ATTR: Final = {
    Metric.PM25: "pm25",
    Metric.PM10: "pm10",
    Metric.NO2: "no2",
    Metric.O3: "o3",
    Metric.CO: "co",
    Metric.SO2: "so2",
    Metric.TEMPERATURE: "temperature",
    Metric.RELATIVE_HUMIDITY: "relative_humidity",
}
_TRAFFIC_ATTR: Final = {
    Metric.INTENSITY: "intensity",
    Metric.OCCUPANCY: "occupancy",
    Metric.AVERAGE_VEHICLE_SPEED: "average_vehicle_speed",
}
_PM_PIN: Final = {Metric.PM25: 999.9, Metric.PM10: 1999.9}


class _LabelFn(Protocol):
    def __call__(
        self,
        stream: int,
        fault: str,
        lo: int,
        hi: int,
        src: int,
        *,
        lane: int = 0,
        metric: str = "",
    ) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class _Spans:
    stream: _I64
    lo: _I64
    hi: _I64
    code: _I64
    metric: _I64
    a: _F64
    b: _F64

    def hits(self, stream: NDArray[np.intp], t: _I64) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        return interval_pairs(self.stream, self.lo, self.hi, stream.astype(np.int64), t)

    def __len__(self) -> int:
        return int(self.stream.shape[0])


class _Builder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int, int, float, float]] = []

    def add(
        self,
        streams: NDArray[np.intp] | list[int],
        lo: int,
        hi: int,
        code: int,
        metric: int = -1,
        a: float | _F64 = 0.0,
        b: float = 0.0,
    ) -> None:
        ids = streams if isinstance(streams, list) else streams.tolist()
        if isinstance(a, float):
            self.rows.extend((int(s), lo, hi, code, metric, a, b) for s in ids)
            return
        for s, av in zip(ids, a.tolist(), strict=True):
            self.rows.append((int(s), lo, hi, code, metric, float(av), b))

    def build(self, codes: tuple[int, ...]) -> _Spans:
        rows = [r for r in self.rows if r[3] in codes]
        cols = list(zip(*rows, strict=True)) if rows else [()] * 7
        return _Spans(
            stream=np.array(cols[0], dtype=np.int64),
            lo=np.array(cols[1], dtype=np.int64),
            hi=np.array(cols[2], dtype=np.int64),
            code=np.array(cols[3], dtype=np.int64),
            metric=np.array(cols[4], dtype=np.int64),
            a=np.array(cols[5], dtype=np.float64),
            b=np.array(cols[6], dtype=np.float64),
        )


@dataclass(frozen=True, slots=True, eq=False)
class FaultPlan:
    """Compiled faults of one scenario on one fleet (see the module docstring)."""

    fleet: Fleet
    labels: tuple[Label, ...]
    #: Max |jitter| in ns per stream (0: readings on their nominal slots).
    jitter_ns: _I64
    _air: _Spans
    _traffic: _Spans
    _dropout: _Spans
    _skew: _Spans
    #: Power faults: a = pm_factor, b = skip_fraction (stream, [lo, hi) of nominal slots).
    _power: _Spans
    #: Reporting interval per stream (power faults delay readings by a share of it).
    interval_ns: _I64 | None = None

    def _slot_key(self, stream: NDArray[np.intp], nominal_ns: _I64) -> NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            return mix64(self.fleet.stream_key[stream] ^ (nominal_ns // _MS).astype(np.uint64))

    def reading_ns(self, stream: NDArray[np.intp], nominal_ns: _I64) -> _I64:
        """Reading time of each nominal slot: the slot plus its hashed jitter (ms steps),
        plus a power fault's delay."""
        j = self.jitter_ns[stream]
        out = nominal_ns
        if bool(j.any()):
            key = self._slot_key(stream, nominal_ns)
            u = unit_uniform(derive(key, 61)) * 2.0 - 1.0
            out = nominal_ns + np.rint(u * (j // _MS)).astype(np.int64) * _MS
        if len(self._power) and self.interval_ns is not None:
            rows, _ = self._power.hits(stream, nominal_ns)
            if rows.shape[0]:
                s = stream[rows]
                interval = self.interval_ns[s]
                room = np.minimum(
                    np.floor(interval * _POWER_DELAY).astype(np.int64),
                    interval - 2 * self.jitter_ns[s] - _MS,
                )
                u = unit_uniform(derive(self._slot_key(s, nominal_ns[rows]), 67))
                delay = np.rint(u * (np.maximum(room, 0) // _MS)).astype(np.int64) * _MS
                out = out.copy() if out is nominal_ns else out
                out[rows] += delay
        return out

    def kept(self, stream: NDArray[np.intp], t_ns: _I64) -> NDArray[np.bool_]:
        """False for readings inside a dropout, or lost to a power fault's resets."""
        keep = np.ones(t_ns.shape[0], dtype=np.bool_)
        if len(self._dropout):
            rows, _ = self._dropout.hits(stream, t_ns)
            keep[rows] = False
        if len(self._power):
            rows, spans = self._power.hits(stream, t_ns)
            if rows.shape[0]:
                u = unit_uniform(derive(self._slot_key(stream[rows], t_ns[rows]), 71))
                keep[rows[u < self._power.b[spans]]] = False
        return keep

    def power_weak(self, stream: NDArray[np.intp], t_ns: _I64) -> NDArray[np.bool_]:
        """True for readings taken during a power fault of their stream."""
        weak = np.zeros(t_ns.shape[0], dtype=np.bool_)
        if len(self._power):
            rows, _ = self._power.hits(stream, t_ns)
            weak[rows] = True
        return weak

    def stamps(self, stream: NDArray[np.intp], t_ns: _I64) -> _I64:
        """Timestamps the sensors write: reading time plus any clock skew."""
        if not len(self._skew):
            return t_ns
        rows, spans = self._skew.hits(stream, t_ns)
        out = t_ns.copy()
        out[rows] += self._skew.a[spans].astype(np.int64)
        return out

    def apply_air(self, stream: NDArray[np.intp], t_ns: _I64, cols: AirColumns) -> None:
        """Apply air faults to ``cols`` (rows = ``stream``/``t_ns``) in place."""
        sp = self._air
        if not len(sp):
            return
        rows, spans = sp.hits(stream, t_ns)
        if rows.shape[0] == 0:
            return
        code = sp.code[spans]
        sel = code == HAZE
        if sel.any():
            r, s = rows[sel], spans[sel]
            env = _envelope(sp, s, t_ns[r], sp.b[s])
            np.add.at(cols.pm25, r, sp.a[s] * env)
            np.add.at(cols.pm10, r, 1.15 * sp.a[s] * env)
        sel = code == FOG
        if sel.any():
            r, s = rows[sel], spans[sel]
            wander = 1.5 * unit_uniform(derive(self._slot_key(stream[r], t_ns[r]), 73))
            env = _envelope(sp, s, t_ns[r], _FOG_RAMP_NS)
            rh = cols.relative_humidity[r]
            cols.relative_humidity[r] = np.maximum(rh, rh + (sp.b[s] - wander - rh) * env)
            factor = 1.0 + (sp.a[s] - 1.0) * env
            cols.pm25[r] *= factor
            cols.pm10[r] *= factor
        sel = code == POWER
        if sel.any():
            r, s = rows[sel], spans[sel]
            cols.pm25[r] *= sp.a[s]
            cols.pm10[r] *= sp.a[s]
        np.minimum(cols.pm25, 999.9, out=cols.pm25)
        np.minimum(cols.pm10, 1999.9, out=cols.pm10)
        _set_metrics(sp, rows, spans, code, _AIR_ATTR, cols, integer=())
        sel = code == OUT_OF_RANGE
        for m, pin in _PM_PIN.items():
            hit = sel & (sp.metric[spans] == m)
            if hit.any():
                getattr(cols, _AIR_ATTR[m])[rows[hit]] = pin

    def apply_traffic(self, stream: NDArray[np.intp], t_ns: _I64, cols: TrafficColumns) -> None:
        """Apply traffic faults to ``cols`` in place."""
        sp = self._traffic
        if not len(sp):
            return
        rows, spans = sp.hits(stream, t_ns)
        if rows.shape[0] == 0:
            return
        code = sp.code[spans]
        sel = code == INCIDENT
        if sel.any():
            sev = np.zeros(t_ns.shape[0])
            np.maximum.at(sev, rows[sel], sp.a[spans[sel]])
            r = np.flatnonzero(sev > 0)
            sv = sev[r]
            cols.average_vehicle_speed[r] = np.maximum(
                cols.average_vehicle_speed[r] * (1.0 - 0.75 * sv), 3.0
            )
            cols.occupancy[r] = np.minimum(cols.occupancy[r] + (0.8 - cols.occupancy[r]) * sv, 0.95)
            cols.intensity[r] = np.rint(cols.intensity[r] * (1.0 - 0.5 * sv)).astype(np.int64)
        _set_metrics(sp, rows, spans, code, _TRAFFIC_ATTR, cols, integer=(Metric.INTENSITY,))


def _envelope(sp: _Spans, spans: NDArray[np.intp], t_ns: _I64, ramp_ns: _F64 | int) -> _F64:
    """0 at the edges of each span rising linearly to 1 at ``ramp_ns`` inside them
    (1 throughout where ``ramp_ns`` is 0)."""
    edge = np.minimum(t_ns - sp.lo[spans], sp.hi[spans] - t_ns).astype(np.float64)
    return np.where(ramp_ns > 0, np.clip(edge / np.maximum(ramp_ns, 1.0), 0.0, 1.0), 1.0)


def _set_metrics(
    sp: _Spans,
    rows: NDArray[np.intp],
    spans: NDArray[np.intp],
    code: _I64,
    attrs: Mapping[Metric, str],
    cols: AirColumns | TrafficColumns,
    *,
    integer: tuple[Metric, ...],
) -> None:
    """Spikes (x factor or = value), then stuck values, per metric."""
    for kind in (SPIKE, STUCK):
        sel = code == kind
        if not sel.any():
            continue
        for m in np.unique(sp.metric[spans[sel]]).tolist():
            hit = sel & (sp.metric[spans] == m)
            r, s = rows[hit], spans[hit]
            arr = getattr(cols, attrs[Metric(m)])
            fixed = sp.b[s]
            new = np.where(np.isnan(fixed), arr[r] * sp.a[s], fixed) if kind == SPIKE else fixed
            if Metric(m) in integer:
                arr[r] = np.rint(np.maximum(new, 0.0)).astype(np.int64)
            else:
                arr[r] = np.maximum(new, 0.0)


def compile_scenario(
    scenario: Scenario,
    fleet: Fleet,
    *,
    start_ns: int,
    first_slot_ns: _I64 | None = None,
    interval_ns: _I64 | None = None,
    values: ValueModel | None = None,
    expected: Mapping[str, tuple[str, ...]] = EXPECTED_DETECTORS,
) -> FaultPlan:
    """Resolve ``scenario`` on ``fleet`` for a run starting at ``start_ns``.

    ``first_slot_ns``/``interval_ns`` are the run's schedule per stream (default:
    the fleet's nominal phases and intervals); spikes land on the first slot
    at or after their start. ``values`` computes the default value of a stuck
    sensor (its own reading at the start). Unknown sensors, districts, lanes
    or metrics are ConfigErrors naming the entry.
    """
    origin = scenario.origin_ns(start_ns)
    interval = fleet.interval_ns if interval_ns is None else interval_ns
    first = (
        start_ns + (fleet.phase_ns - start_ns) % interval
        if first_slot_ns is None
        else first_slot_ns
    )
    vm = values or ValueModel(fleet)

    jitter = np.zeros(len(MODEL_NAMES), dtype=np.int64)
    for name, seconds in scenario.jitter_s.items():
        jitter[MODEL_NAMES.index(name)] = round(seconds * 1000) * _MS
    jitter_ns = jitter[fleet.model]
    bad = np.flatnonzero(2 * jitter_ns >= interval)
    if bad.shape[0]:
        s = int(bad[0])
        raise ConfigError(
            f"jitter_s for model {MODEL_NAMES[int(fleet.model[s])]!r} must be less than half "
            f"the reporting interval ({int(interval[s]) / 2e9:g} s of {fleet.sensor_id[s]!r})"
        )
    plan_probe = FaultPlan(
        fleet=fleet,
        labels=(),
        jitter_ns=jitter_ns.astype(np.int64),
        _air=_Builder().build(()),
        _traffic=_Builder().build(()),
        _dropout=_Builder().build(()),
        _skew=_Builder().build(()),
        _power=_Builder().build(()),
    )

    streams_of: dict[str, list[int]] = {}
    for i, sid in enumerate(fleet.sensor_id):
        streams_of.setdefault(sid, []).append(i)
    is_air = fleet.kind == Kind.AIR
    b = _Builder()
    labels: list[Label] = []

    def label(
        stream: int, fault: str, lo: int, hi: int, src: int, *, lane: int = 0, metric: str = ""
    ) -> None:
        labels.append(
            Label(
                sensor_id=fleet.sensor_id[stream],
                lane=lane,
                fault=fault,
                metric=metric,
                start_ns=lo,
                end_ns=hi,
                detectors=tuple(expected.get(f"{fault}:{metric}", expected.get(fault, ()))),
                city=fleet.city,
                district=fleet.district(stream),
                source=src,
            )
        )

    def sensor_streams(n: int, sensor_id: str, lane: int = 0) -> list[int]:
        found = streams_of.get(sensor_id)
        if found is None:
            raise ConfigError(f"faults[{n}]: unknown sensor_id {sensor_id!r}")
        if lane:
            found = [s for s in found if int(fleet.lane[s]) == lane]
            if not found:
                raise ConfigError(f"faults[{n}]: sensor {sensor_id!r} has no lane {lane}")
        return found

    def district_air(n: int, district: str) -> NDArray[np.intp]:
        if district not in fleet.districts:
            raise ConfigError(f"faults[{n}]: unknown district {district!r}")
        d = fleet.districts.index(district)
        return np.flatnonzero(is_air & (fleet.district_index == d))

    def check_metric(n: int, stream: int, metric: str) -> int:
        kind = Kind(int(fleet.kind[stream]))
        if not _metric_ok(kind, int(fleet.model[stream]), metric):
            raise ConfigError(
                f"faults[{n}]: sensor {fleet.sensor_id[stream]!r} "
                f"({MODEL_NAMES[int(fleet.model[stream])]}) does not report {metric!r}"
            )
        return int(METRIC_BY_FIELD[metric])

    for n, f in enumerate(scenario.faults):
        if isinstance(f, HazeFault):
            lo, hi = f.span_ns(origin)
            da = district_air(n, f.district)
            amp = f.pm25_add_ugm3 * (
                0.8 + 0.4 * unit_uniform(derive(fleet.stream_key[da], 500 + n % 1000))
            )
            b.add(da, lo, hi, HAZE, a=amp, b=f.ramp_s * 1e9)
            for s in da.tolist():
                label(s, "haze", lo, hi, n)
        elif isinstance(f, FogFault):
            lo, hi = f.span_ns(origin)
            da = district_air(n, f.district)
            factor = np.where(fleet.model[da] == MODEL_LOW_COST, f.pm_factor, 1.0)
            b.add(da, lo, hi, FOG, a=factor, b=f.rh_pct)
            for s in da.tolist():
                label(s, "fog", lo, hi, n)
        elif isinstance(f, SpikeFault):
            st = sensor_streams(n, f.sensor_id, f.lane)
            m = check_metric(n, st[0], f.metric)
            start = f.start_ns(origin)
            s0 = st[0]
            # The first nominal slot at or after the start, then its reading time.
            k = -((first[s0] - start) // interval[s0])
            slot = np.array([int(first[s0] + k * interval[s0])], dtype=np.int64)
            t = int(plan_probe.reading_ns(np.array([s0], dtype=np.intp), slot)[0])
            value = math.nan if f.value is None else f.value
            b.add(st, t, t + _MS, SPIKE, m, a=f.factor, b=value)
            label(s0, "spike", t, t + _MS, n, lane=f.lane, metric=f.metric)
        elif isinstance(f, StuckFault):
            st = sensor_streams(n, f.sensor_id, f.lane)
            m = check_metric(n, st[0], f.metric)
            lo, hi = f.span_ns(origin)
            for s in st:
                value = f.value if f.value is not None else _value_at(vm, fleet, s, lo, Metric(m))
                b.add([s], lo, hi, STUCK, m, b=value)
            label(st[0], "stuck", lo, hi, n, lane=f.lane, metric=f.metric)
        elif isinstance(f, DropoutFault):
            st = sensor_streams(n, f.sensor_id)
            lo, hi = f.span_ns(origin)
            b.add(st, lo, hi, DROPOUT)
            label(st[0], "dropout", lo, hi, n)
        elif isinstance(f, OutOfRangeFault):
            st = sensor_streams(n, f.sensor_id)
            if not is_air[st[0]]:
                raise ConfigError(f"faults[{n}]: out_of_range needs an air sensor")
            lo, hi = f.span_ns(origin)
            for metric in ("pm25", "pm10") if f.metric == "both" else (f.metric,):
                b.add(st, lo, hi, OUT_OF_RANGE, int(METRIC_BY_FIELD[metric]))
                label(st[0], "out_of_range", lo, hi, n, metric=metric)
        elif isinstance(f, IncidentFault):
            st = sensor_streams(n, f.sensor_id, f.lane)
            if is_air[st[0]]:
                raise ConfigError(f"faults[{n}]: incident needs a traffic sensor")
            lo, hi = f.span_ns(origin)
            b.add(st, lo, hi, INCIDENT, a=f.severity)
            label(st[0], "incident", lo, hi, n, lane=f.lane)
            _upstream(fleet, st[0], f, lo, hi, n, b, label)
        elif isinstance(f, ClockSkewFault):
            st = sensor_streams(n, f.sensor_id)
            lo, hi = f.span_ns(origin)
            b.add(st, lo, hi, SKEW, a=float(round(f.offset_s * 1000) * _MS))
            label(st[0], "clock_skew", lo, hi, n)
        elif isinstance(f, PowerFault):
            st = sensor_streams(n, f.sensor_id)
            if not is_air[st[0]]:
                raise ConfigError(f"faults[{n}]: power needs an air sensor")
            lo, hi = f.span_ns(origin)
            b.add(st, lo, hi, POWER, a=f.pm_factor, b=f.skip_fraction)
            label(st[0], "power", lo, hi, n)
        else:  # pragma: no cover - the union is closed
            raise ConfigError(f"faults[{n}]: unknown kind")
    return FaultPlan(
        fleet=fleet,
        labels=tuple(labels),
        jitter_ns=jitter_ns.astype(np.int64),
        _air=b.build((HAZE, FOG, POWER, SPIKE, STUCK, OUT_OF_RANGE)),
        _traffic=b.build((INCIDENT, SPIKE, STUCK)),
        _dropout=b.build((DROPOUT,)),
        _skew=b.build((SKEW,)),
        _power=b.build((POWER,)),
        interval_ns=interval.astype(np.int64),
    )


def _value_at(vm: ValueModel, fleet: Fleet, stream: int, ts_ns: int, metric: Metric) -> float:
    s = np.array([stream], dtype=np.intp)
    t = np.array([ts_ns], dtype=np.int64)
    if fleet.kind[stream] == Kind.AIR:
        air = vm.air(s, t)
        return float(getattr(air, _AIR_ATTR[metric])[0])
    trf = vm.traffic(s, t)
    return float(getattr(trf, _TRAFFIC_ATTR[metric])[0])


def _upstream(
    fleet: Fleet,
    stream: int,
    f: IncidentFault,
    lo: int,
    hi: int,
    n: int,
    b: _Builder,
    label: _LabelFn,
) -> None:
    """The incident's queue at stations upstream on the same corridor, later and weaker."""
    corridor = int(fleet.corridor[stream])
    if corridor < 0 or f.reach_km <= 0:
        return
    pos0 = float(fleet.corridor_pos_km[stream])
    dist = pos0 - fleet.corridor_pos_km
    cand = np.flatnonzero(
        (fleet.corridor == corridor)
        & (dist > 0.0)
        & (dist <= f.reach_km)
        & (fleet.sensor_key != fleet.sensor_key[stream])
    )
    sev = f.severity * np.exp(-2.0 * dist[cand] / f.reach_km)
    cand, sev = cand[sev >= 0.25], sev[sev >= 0.25]
    lag_ns = np.round(dist[cand] / f.wave_kmh * 3600.0 * 1000).astype(np.int64) * _MS
    seen: set[str] = set()
    for s, sv, lag in zip(cand.tolist(), sev.tolist(), lag_ns.tolist(), strict=True):
        b.add([s], lo + lag, hi + lag, INCIDENT, a=sv)
        sid = fleet.sensor_id[s]
        if sid not in seen:
            seen.add(sid)
            label(s, "congestion", lo + lag, hi + lag, n)
