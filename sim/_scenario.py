"""Scenarios: what goes wrong, when and where (a validated TOML/JSON file or a seeded draw).

A scenario lists faults; :func:`sim.compile_scenario` resolves them against a
fleet, the simulator applies them to the values and the schedule, and every
fault becomes ground-truth labels (``sim._groundtruth``)::

    description = "monsoon morning"
    origin = "2025-11-24T00:00:00+07:00"   # time zero of start_s; default: the run's start
    jitter_s = { "SDS011+BME280" = 2.0 }   # per-model timestamp jitter, +- seconds

    [[faults]]
    kind = "haze"                 # district: PM2.5 += pm25_add_ugm3 (x 0.8-1.2 per sensor)
    district = "coblong"
    start_s = 21600               # or start = "2025-11-24T06:00:00+07:00"
    duration_s = 43200
    pm25_add_ugm3 = 120.0
    ramp_s = 3600                 # linear ramp in and out, inside the interval

    [[faults]]
    kind = "spike"                # the first reading at or after the start
    sensor_id = "aq-coblong-0003"
    metric = "pm25"
    start_s = 3600
    factor = 4.0                  # or value = 650.0

Kinds and their fields (every kind has ``start_s`` or ``start``; all but
``spike`` have ``duration_s``):

* ``haze``: ``district``, ``pm25_add_ugm3`` (120), ``ramp_s`` (3600).
* ``fog``: ``district``, ``rh_pct`` (95, > 90), ``pm_factor`` (1.8) for the
  low-cost optical nodes (reference stations dry their inlet).
* ``spike``: ``sensor_id``, ``metric`` (pm25), ``lane`` (0 = every lane),
  ``factor`` (4) or ``value``.
* ``stuck``: ``sensor_id``, ``metric``, ``lane``, ``value`` (default: the
  sensor's own value at the start, repeated).
* ``dropout``: ``sensor_id`` (all lanes): no messages.
* ``out_of_range``: ``sensor_id``, ``metric`` ("pm25", "pm10" or "both"): PM
  pinned at 999.9 (PM10 1999.9).
* ``incident``: ``sensor_id``, ``lane``, ``severity`` (0.8), ``reach_km`` (2),
  ``wave_kmh`` (12): speed and flow drop, occupancy rises; the queue reaches
  stations upstream on the same corridor later (distance / wave speed) and
  weaker (x exp(-2 distance / reach)).
* ``clock_skew``: ``sensor_id``, ``offset_s``: ``dateObserved`` is off by
  this much (values are not).
* ``power``: ``sensor_id`` (an air sensor), ``pm_factor`` (1.5),
  ``skip_fraction`` (0.3): a weak battery or brown-out supply. PM2.5 and PM10
  read ``pm_factor`` times high (the fan slows, the laser dims), a share
  ``skip_fraction`` of the reporting slots is lost to resets, and the readings
  that are sent come late by 0 to 0.45 of an interval (less any model jitter),
  so the reporting intervals are irregular. TTN payloads carry a low
  ``battery`` voltage meanwhile.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal, Self

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim._fleet import MODEL_LOW_COST, MODEL_NAMES, MODEL_REFERENCE, Fleet
from urbanpulse._errors import ConfigError
from urbanpulse._schema import KIND_METRICS, METRIC_INFO, Kind

__all__ = [
    "ClockSkewFault",
    "DropoutFault",
    "Fault",
    "FaultRates",
    "FogFault",
    "HazeFault",
    "IncidentFault",
    "OutOfRangeFault",
    "PowerFault",
    "Scenario",
    "SpikeFault",
    "StuckFault",
    "aware_ns",
    "load_scenario",
    "random_scenario",
]

MetricName = Literal[
    "pm25",
    "pm10",
    "no2",
    "o3",
    "co",
    "so2",
    "temperature",
    "relativeHumidity",
    "intensity",
    "occupancy",
    "averageVehicleSpeed",
]
Seconds = Annotated[float, Field(gt=0.0, le=366 * 86400.0)]
Offset = Annotated[float, Field(ge=-366 * 86400.0, le=10 * 366 * 86400.0)]


def aware_ns(dt: datetime) -> int:
    """A timezone-aware datetime in ns since the epoch (exact to the microsecond)."""
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Seconds after the scenario's origin (or the run's start)...
    start_s: Offset | None = None
    #: ... or an absolute, timezone-aware time.
    start: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_start(self) -> Self:
        if (self.start_s is None) == (self.start is None):
            raise ValueError("give exactly one of start_s (seconds after origin) or start")
        return self

    def start_ns(self, origin_ns: int) -> int:
        """Start in ns since the epoch, floored to the millisecond."""
        if self.start is not None:
            ns = aware_ns(self.start)
        else:
            assert self.start_s is not None
            ns = origin_ns + round(self.start_s * 1e9)
        return ns - ns % 1_000_000


class _Timed(_Fault):
    duration_s: Seconds

    def span_ns(self, origin_ns: int) -> tuple[int, int]:
        start = self.start_ns(origin_ns)
        end = start + round(self.duration_s * 1000) * 1_000_000
        return start, max(end, start + 1_000_000)


class HazeFault(_Timed):
    kind: Literal["haze"] = "haze"
    district: str
    pm25_add_ugm3: Annotated[float, Field(gt=0.0, le=900.0)] = 120.0
    ramp_s: Annotated[float, Field(ge=0.0)] = 3600.0


class FogFault(_Timed):
    kind: Literal["fog"] = "fog"
    district: str
    rh_pct: Annotated[float, Field(gt=90.0, le=100.0)] = 95.0
    pm_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 1.8


class SpikeFault(_Fault):
    kind: Literal["spike"] = "spike"
    sensor_id: str
    metric: MetricName = "pm25"
    lane: Annotated[int, Field(ge=0, le=2)] = 0
    factor: Annotated[float, Field(gt=0.0)] = 4.0
    value: float | None = None


class StuckFault(_Timed):
    kind: Literal["stuck"] = "stuck"
    sensor_id: str
    metric: MetricName = "pm25"
    lane: Annotated[int, Field(ge=0, le=2)] = 0
    value: float | None = None


class DropoutFault(_Timed):
    kind: Literal["dropout"] = "dropout"
    sensor_id: str


class OutOfRangeFault(_Timed):
    kind: Literal["out_of_range"] = "out_of_range"
    sensor_id: str
    metric: Literal["pm25", "pm10", "both"] = "both"


class IncidentFault(_Timed):
    kind: Literal["incident"] = "incident"
    sensor_id: str
    lane: Annotated[int, Field(ge=0, le=2)] = 0
    severity: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    reach_km: Annotated[float, Field(ge=0.0, le=50.0)] = 2.0
    wave_kmh: Annotated[float, Field(gt=0.0, le=100.0)] = 12.0


class ClockSkewFault(_Timed):
    kind: Literal["clock_skew"] = "clock_skew"
    sensor_id: str
    offset_s: Annotated[float, Field(ge=-86400.0, le=86400.0)]

    @model_validator(mode="after")
    def _nonzero(self) -> Self:
        if round(self.offset_s * 1000) == 0:
            raise ValueError("offset_s must be at least 1 ms")
        return self


class PowerFault(_Timed):
    kind: Literal["power"] = "power"
    sensor_id: str
    pm_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    skip_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3


Fault = Annotated[
    HazeFault
    | FogFault
    | SpikeFault
    | StuckFault
    | DropoutFault
    | OutOfRangeFault
    | IncidentFault
    | ClockSkewFault
    | PowerFault,
    Field(discriminator="kind"),
]


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    #: Time zero of every ``start_s``; None = the start of the run.
    origin: AwareDatetime | None = None
    #: Per-model timestamp jitter: readings are taken up to +- this many seconds
    #: off their nominal slot (less than half the reporting interval).
    jitter_s: dict[
        Literal["SDS011+BME280", "reference", "loop"], Annotated[float, Field(ge=0)]
    ] = {}
    faults: list[Fault] = []

    def origin_ns(self, run_start_ns: int) -> int:
        return run_start_ns if self.origin is None else aware_ns(self.origin)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (``.toml`` or ``.json``); errors name the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario file {p}: {exc}") from exc
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        elif p.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(f"scenario file {p}: expected a .toml or .json file")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"scenario file {p} is not valid {p.suffix[1:].upper()}: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e["loc"])
            parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
        raise ConfigError(f"scenario file {p}: {'; '.join(parts)}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRates:
    """Expected faults per sensor-day (per district-day for haze and fog)."""

    spike: float = 0.5
    stuck: float = 0.05
    dropout: float = 0.05
    out_of_range: float = 0.02
    incident: float = 0.05
    clock_skew: float = 0.01
    fog: float = 0.1
    haze: float = 0.03
    #: Low-cost air nodes only (reference stations have mains power).
    power: float = 0.02
    #: Per-model timestamp jitter written into the scenario.
    jitter_s: dict[str, float] = field(default_factory=dict)
    #: Minimum quiet time between two faults of the same sensor (or district).
    gap_s: float = 1800.0


_AIR_METRICS: Final = ("pm25", "pm25", "pm25", "pm10", "temperature", "relativeHumidity")
_GAS_METRICS: Final = ("no2", "o3", "co", "so2")
_TRAFFIC_METRICS: Final = ("intensity", "occupancy", "averageVehicleSpeed")


#: Spike values (uniform range) of loop glitches on traffic metrics (speed
#: spikes stay x3).
_TRAFFIC_SPIKE: dict[str, tuple[float, float]] = {
    "occupancy": (0.5, 0.9),
    "intensity": (40.0, 60.0),
}
#: Spike factors for metrics whose upward spikes would be physically impossible
#: (RH above 100 %, a 29 C reading x3 = 87 C): ingest refuses those as out of
#: range before any detector sees them, so a spike on them goes down, or up by
#: a plausible step.
_SPIKE_FACTORS: dict[str, tuple[float, ...]] = {
    "relativeHumidity": (0.2, 0.4),
    "temperature": (0.2, 0.4, 1.5),
}


def random_scenario(
    fleet: Fleet,
    *,
    seed: int,
    days: float,
    start_ns: int,
    rates: FaultRates | None = None,
) -> Scenario:
    """A seeded scenario sprinkling each fault kind over the fleet for ``days``.

    Counts are Poisson with the given rates; starts are uniform over the
    period (fog prefers 02:00-07:00 WIB); faults of one sensor (and of one
    district) never overlap and keep ``rates.gap_s`` apart, so each label
    stays attributable. Power faults hit low-cost air nodes only. Durations:
    stuck 1-6 h, dropout 15 min-4 h, out of range 30 min-6 h, incident 20-90
    min, clock skew 2-24 h (+-20-240 s), fog 1-4 h, haze 12-48 h (+60-200
    ug/m3), power 2-10 h (PM x1.3-2, 10-50 % of slots lost). The scenario's
    origin is ``start_ns`` (floored to the second), so it means the same instants
    whatever run it is applied to.
    """
    if not days > 0:
        raise ConfigError(f"days must be positive, got {days}")
    r = rates or FaultRates()
    rng = np.random.default_rng([seed & ((1 << 64) - 1), 0x5CE7A])
    # Its own stream, so that the other draws of a seed did not change with it.
    spike_rng = np.random.default_rng([seed & ((1 << 64) - 1), 0x5B1CE])
    span_s = days * 86400.0
    first = np.flatnonzero(
        np.concatenate(
            [[True], np.asarray(fleet.sensor_id[1:]) != np.asarray(fleet.sensor_id[:-1])]
        )
    )
    sensors = [fleet.sensor_id[i] for i in first.tolist()]
    kinds = fleet.kind[first]
    models = fleet.model[first]
    lanes = np.bincount(np.searchsorted(first, np.arange(fleet.n_streams), side="right") - 1)
    is_air = kinds == Kind.AIR
    # (sensor, start_s, end_s, fault)
    drafts: list[tuple[int, float, float, _Fault]] = []

    def draw(kind_mask: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(kind_mask)
        n = rng.poisson(rate * days, idx.shape[0])
        who = np.repeat(idx, n)
        return who, rng.random(who.shape[0]) * span_s

    traffic = (kinds == Kind.TRAFFIC).tolist()
    reference = (models == MODEL_REFERENCE).tolist()
    lane_count = lanes.tolist()
    full_pool = _AIR_METRICS + _GAS_METRICS

    def metric_for(i: int) -> str:
        if traffic[i]:
            return _TRAFFIC_METRICS[int(rng.integers(len(_TRAFFIC_METRICS)))]
        pool = full_pool if reference[i] else _AIR_METRICS
        return pool[int(rng.integers(len(pool)))]

    def lane_for(i: int) -> int:
        return int(rng.integers(1, lane_count[i] + 1)) if traffic[i] else 0

    everyone = np.ones(len(sensors), dtype=bool)
    f: _Fault
    for i, t in zip(*draw(everyone, r.spike), strict=True):
        metric = metric_for(i)
        factors = _SPIKE_FACTORS.get(metric, (0.2, 3.0, 4.0, 6.0)) if not traffic[i] else (3.0,)
        factor = factors[int(rng.integers(len(factors)))]
        # A loop glitch (chattering, crosstalk) reads a high occupancy and an
        # impossible count; x3 of a night-time 0.05 occupancy or 2 vehicles is
        # ordinary traffic, not a spike any detector could tell from noise.
        value = _TRAFFIC_SPIKE.get(metric) if traffic[i] else None
        f = SpikeFault(
            sensor_id=sensors[i],
            metric=metric,
            lane=lane_for(i),
            start_s=float(t),
            factor=factor,
            value=None if value is None else round(float(spike_rng.uniform(*value)), 3),
        )
        drafts.append((int(i), float(t), float(t) + 60.0, f))
    for i, t in zip(*draw(everyone, r.stuck), strict=True):
        d = float(rng.uniform(3600, 6 * 3600))
        f = StuckFault(
            sensor_id=sensors[i],
            metric=metric_for(i),
            lane=lane_for(i),
            start_s=float(t),
            duration_s=d,
        )
        drafts.append((int(i), float(t), float(t) + d, f))
    for i, t in zip(*draw(everyone, r.dropout), strict=True):
        d = float(rng.uniform(900, 4 * 3600))
        drafts.append(
            (
                int(i),
                float(t),
                float(t) + d,
                DropoutFault(sensor_id=sensors[i], start_s=t, duration_s=d),
            )
        )
    for i, t in zip(*draw(is_air, r.out_of_range), strict=True):
        d = float(rng.uniform(1800, 6 * 3600))
        f = OutOfRangeFault(
            sensor_id=sensors[i],
            start_s=float(t),
            duration_s=d,
            metric=str(rng.choice(["pm25", "both"])),
        )
        drafts.append((int(i), float(t), float(t) + d, f))
    for i, t in zip(*draw(~is_air, r.incident), strict=True):
        d = float(rng.uniform(1200, 5400))
        f = IncidentFault(
            sensor_id=sensors[i],
            start_s=float(t),
            duration_s=d,
            severity=float(rng.uniform(0.6, 0.95)),
        )
        drafts.append((int(i), float(t), float(t) + d, f))
    for i, t in zip(*draw(everyone, r.clock_skew), strict=True):
        d = float(rng.uniform(2 * 3600, 24 * 3600))
        off = float(rng.uniform(20, 240) * rng.choice([-1.0, 1.0]))
        f = ClockSkewFault(sensor_id=sensors[i], start_s=float(t), duration_s=d, offset_s=off)
        drafts.append((int(i), float(t), float(t) + d, f))

    # District events: fog (early morning) and haze, not overlapping per district.
    district_drafts: list[tuple[int, float, float, _Fault]] = []
    n_d = len(fleet.districts)
    has_air = np.zeros(n_d, dtype=bool)
    has_air[fleet.district_index[fleet.kind == Kind.AIR]] = True
    origin_s = float(start_ns // 1_000_000_000)
    origin = datetime.fromtimestamp(origin_s, UTC)
    for d in np.repeat(np.arange(n_d), rng.poisson(r.fog * days, n_d)).tolist():
        day = math.floor(rng.random() * days)
        # 02:00-07:00 WIB on that day, relative to the origin.
        t = _next_local_hour(origin_s, day, float(rng.uniform(2.0, 7.0)))
        if not has_air[d] or t >= span_s:
            continue
        dur = float(rng.uniform(3600, 4 * 3600))
        f2 = FogFault(
            district=fleet.districts[d],
            start_s=t,
            duration_s=dur,
            pm_factor=float(rng.uniform(1.4, 2.5)),
            rh_pct=float(rng.uniform(93, 99)),
        )
        district_drafts.append((d, t, t + dur, f2))
    for d in np.repeat(np.arange(n_d), rng.poisson(r.haze * days, n_d)).tolist():
        t = float(rng.random() * span_s)
        dur = float(rng.uniform(12 * 3600, 48 * 3600))
        if not has_air[d]:
            continue
        f3 = HazeFault(
            district=fleet.districts[d],
            start_s=t,
            duration_s=dur,
            pm25_add_ugm3=float(rng.uniform(60, 200)),
            ramp_s=float(min(3600.0, dur / 4)),
        )
        district_drafts.append((d, t, t + dur, f3))
    # Drawn last so that adding the kind left the other draws of a seed unchanged.
    for i, t in zip(*draw(is_air & (models == MODEL_LOW_COST), r.power), strict=True):
        d = float(rng.uniform(2 * 3600, 10 * 3600))
        f = PowerFault(
            sensor_id=sensors[i],
            start_s=float(t),
            duration_s=d,
            pm_factor=float(rng.uniform(1.3, 2.0)),
            skip_fraction=float(rng.uniform(0.1, 0.5)),
        )
        drafts.append((int(i), float(t), float(t) + d, f))
    faults: list[_Fault] = _no_overlap(drafts, r.gap_s)
    faults += _no_overlap(district_drafts, r.gap_s)
    faults.sort(key=lambda f: (f.start_s or 0.0, f.kind))  # type: ignore[attr-defined]
    jitter = {k: v for k, v in r.jitter_s.items() if k in MODEL_NAMES}
    return Scenario.model_validate(
        {
            "description": f"random_scenario(seed={seed}, days={days})",
            "origin": origin,
            "jitter_s": jitter,
            "faults": [f.model_dump(exclude_none=True) for f in faults],
        }
    )


def _next_local_hour(origin_s: float, day: int, hour: float) -> float:
    """Seconds after the origin of ``hour`` WIB on the origin's ``day``-th local day."""
    wib = 7 * 3600.0
    local_midnight = math.floor((origin_s + wib) / 86400.0) * 86400.0 - wib
    t = local_midnight + (day * 24 + hour) * 3600.0 - origin_s
    return t if t >= 0 else t + 86400.0


def _no_overlap(drafts: list[tuple[int, float, float, _Fault]], gap_s: float) -> list[_Fault]:
    """Keep faults in start order, dropping those that would overlap a kept one of their owner."""
    drafts.sort(key=lambda d: (d[0], d[1]))
    out: list[_Fault] = []
    last_owner, last_end = -1, -math.inf
    for owner, start, end, fault in drafts:
        if owner == last_owner and start < last_end + gap_s:
            continue
        out.append(fault)
        last_owner, last_end = owner, end
    return out


def _metric_ok(kind: Kind, model: int, metric: str) -> bool:
    allowed = {METRIC_INFO[m].field for m in KIND_METRICS[kind]}
    if kind == Kind.AIR and model == MODEL_LOW_COST:
        allowed -= set(_GAS_METRICS)
    return metric in allowed
