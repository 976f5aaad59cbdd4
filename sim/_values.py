"""Sensor values as pure, vectorised functions of ``(seed, stream, event time)``.

No state and no sequential random generator: noise comes from a counter-based
hash of the stream key and the millisecond timestamp, so a value does not
depend on which other messages were generated before it or in the same batch.

Model (local time is Asia/Jakarta, WIB = UTC+7, no DST):

* PM2.5: per-sensor baseline 25-45 ug/m3 times a diurnal factor (morning peak
  around 07:30, evening/night accumulation peaking around 21:00 under a
  shallow boundary layer, afternoon minimum around 14:00 when mixing is
  deepest), a slow city-wide "weather" factor (periods of 1.7 and 3.3 days),
  a weekend factor of 0.88 and log-normal noise (sigma 0.15, bounded).
  Guaranteed shape: the diurnal factor is 1.47 at 07:00 and 1.06 at 03:00.
  Low-cost optical nodes (SDS011) over-read at high humidity: x (1 + 0.5 q^2)
  with q = max(RH - 75, 0) / 25.
* PM10: PM2.5 x a per-sensor ratio in 1.35-1.75 with small noise, clipped to
  [1.3, 1.8].
* NO2 and CO follow the traffic demand profile; O3 is photochemical (zero
  production at night, peak ~12:30); SO2 has a weak daytime bump.
* Temperature: per-sensor mean 26.5-28.5 C, diurnal amplitude 4 C with the
  maximum at 14:30 (range ~22-33 C). RH = 78 % - 3.6 %/C x diurnal
  deviation (+ weather, noise), clipped to [45, 99.5]: anti-correlated.
* Traffic: a demand fraction in [0, 1] with weekday rush hours (peaks 07:30
  and 17:30 WIB) and a flatter weekend profile; intensity = vehicles in the
  sensor's *nominal* reporting period (Poisson-like, normal approximation),
  at a per-lane capacity of 1440-1800 veh/h; occupancy rises convexly with
  demand (0 when no vehicle passed); speed follows Greenshields,
  ``v = v_free (1 - occupancy / 0.75)`` with v_free 40-60 km/h, so speed
  drops as occupancy rises.

Weather and space (``dynamics=True``, the default), also pure functions of
(seed, position, time):

* A regional field: six travelling plane waves (wavelengths 6-25 km, periods
  8-40 h) summed to unit variance, evaluated at each sensor's position.
  Neighbouring sensors see nearly the same value, sensors 10 km apart do not.
  PM2.5 x exp(0.2 field); traffic demand x (1 + 0.05 field).
* Rain: per hour of the city a seeded coin (probability 3 % at night up to 25 %
  around 15:30 WIB, convective afternoon rain) with an intensity 0.3-1, over a
  patchy footprint (a plane wave of ~15 km per rain hour), building up over
  the first half hour of a rain hour. While it rains and
  for a few hours after (e-folding 3 h for PM, 1.5 h for RH/T): PM is washed
  out (x (1 - 0.55 w)), RH rises towards 96 % (+0.7 w (96 - RH)), the air cools
  towards 24 C (-0.5 w (T - 24)) and traffic slows (x (1 - 0.12 r)).

Regional haze episodes, humid fog and traffic incidents (with the queue
spreading upstream along a corridor) are scenario events: see ``sim._faults``,
which applies them on top of these values and labels them.

Noise is an Irwin-Hall(4) approximation of a standard normal (bounded at
+-3.46 sigma), which keeps every value inside documented ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from sim._fleet import MODEL_LOW_COST, Fleet, derive, mix64, seed_key, unit_uniform

__all__ = [
    "WIB_OFFSET_S",
    "AirColumns",
    "TrafficColumns",
    "ValueModel",
    "WeatherColumns",
    "local_hour",
    "pm_diurnal_factor",
    "traffic_demand",
    "weekday",
]

_F64 = NDArray[np.float64]
_I64 = NDArray[np.int64]

#: Asia/Jakarta (WIB) is UTC+7 all year.
WIB_OFFSET_S: Final = 7 * 3600
_WIB_OFFSET_NS: Final = WIB_OFFSET_S * 1_000_000_000
_DAY_NS: Final = 86_400 * 1_000_000_000
_HOUR_NS: Final = 3_600 * 1_000_000_000
_SQRT3: Final = math.sqrt(3.0)
_TS_MUL: Final = np.uint64(0x9FB21C651E98DF25)


def local_hour(ts_ns: _I64) -> _F64:
    """Hour of day in WIB as a float in [0, 24)."""
    return ((ts_ns + _WIB_OFFSET_NS) % _DAY_NS).astype(np.float64) / _HOUR_NS


def weekday(ts_ns: _I64) -> _I64:
    """Day of week in WIB, Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return ((ts_ns + _WIB_OFFSET_NS) // _DAY_NS + 3) % 7


def _bump(hour: _F64, centre: float, width: float) -> _F64:
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def pm_diurnal_factor(hour: _F64) -> _F64:
    """Multiplier of the PM baseline by hour of day (WIB)."""
    return (
        1.0
        + 0.5 * _bump(hour, 7.5, 1.5)
        + 0.4 * _bump(hour, 21.0, 3.0)
        - 0.3 * _bump(hour, 14.0, 2.5)
    )


def traffic_demand(hour: _F64, weekend: NDArray[np.bool_]) -> _F64:
    """Road demand as a fraction of lane capacity (before per-lane scaling)."""
    weekday_profile = (
        0.06
        + 0.35 * _bump(hour, 13.0, 4.5)
        + 0.55 * _bump(hour, 7.5, 1.0)
        + 0.5 * _bump(hour, 17.5, 1.2)
        + 0.15 * _bump(hour, 20.5, 1.5)
    )
    weekend_profile = (
        0.06
        + 0.45 * _bump(hour, 13.0, 5.0)
        + 0.15 * _bump(hour, 8.5, 1.5)
        + 0.3 * _bump(hour, 18.5, 2.0)
        + 0.2 * _bump(hour, 21.0, 2.0)
    )
    return np.where(weekend, weekend_profile, weekday_profile)


def _noise(base: NDArray[np.uint64], n: int) -> _F64:
    """Approximately standard normal, bounded at +-2 sqrt(3), from hash stream n."""
    h = derive(base, n)
    m = np.uint64(0xFFFF)
    total = (
        (h & m).astype(np.float64)
        + ((h >> np.uint64(16)) & m).astype(np.float64)
        + ((h >> np.uint64(32)) & m).astype(np.float64)
        + (h >> np.uint64(48)).astype(np.float64)
    )
    return (total * (1.0 / 65536.0) - 2.0) * _SQRT3


@dataclass(frozen=True, slots=True, eq=False)
class AirColumns:
    """Unrounded values, one row per message (gases NaN where not computed)."""

    pm25: _F64
    pm10: _F64
    no2: _F64
    o3: _F64
    co: _F64
    so2: _F64
    temperature: _F64
    relative_humidity: _F64


@dataclass(frozen=True, slots=True, eq=False)
class TrafficColumns:
    intensity: _I64
    occupancy: _F64
    average_vehicle_speed: _F64


@dataclass(frozen=True, slots=True, eq=False)
class WeatherColumns:
    """The weather a reading sees (see the module docstring)."""

    #: Regional field (about unit variance), smooth in space and time.
    field: _F64
    #: Rain intensity now, 0-1.
    rain: _F64
    #: Recent-rain weights for PM (e-folding 3 h) and RH/temperature (1.5 h).
    washout: _F64
    wet: _F64


_N_WAVES: Final = 6
_RAIN_LOOKBACK_H: Final = 8
_KM_PER_DEG: Final = 111.32


class ValueModel:
    """Per-stream parameters of a fleet plus the value functions."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        traffic_period_s: float | None = None,
        dynamics: bool = True,
        noise: bool = True,
    ) -> None:
        self._fleet = fleet
        self.dynamics = dynamics
        #: False: every noise term is 0 (the noise-free signal that
        #: ``sim._truth`` derives the city's natural conditions from).
        self.noise = noise
        sk = fleet.sensor_key
        lk = fleet.stream_key

        def u(keys: NDArray[np.uint64], n: int, lo: float, hi: float) -> _F64:
            return lo + (hi - lo) * unit_uniform(derive(keys, 100 + n))

        self._pm_base = u(sk, 1, 25.0, 45.0)
        self._pm10_ratio = u(sk, 2, 1.35, 1.75)
        self._no2_base = u(sk, 3, 15.0, 35.0)
        self._o3_peak = u(sk, 4, 40.0, 80.0)
        self._co_base = u(sk, 5, 400.0, 900.0)
        self._so2_base = u(sk, 6, 5.0, 20.0)
        self._t_mean = u(sk, 7, 26.5, 28.5)
        self._low_cost = fleet.model == MODEL_LOW_COST
        self._lane_scale = u(lk, 8, 0.8, 1.15)
        self._capacity_per_s = u(lk, 9, 0.4, 0.5)
        self._v_free = u(sk, 10, 40.0, 60.0) * u(lk, 11, 0.95, 1.05)
        self._occ_scale = u(lk, 12, 0.85, 1.15)
        #: Vehicles are counted over the nominal period even when a rate
        #: override makes the stream report faster.
        self._period_s = (
            fleet.interval_ns.astype(np.float64) / 1e9
            if traffic_period_s is None
            else np.full(fleet.n_streams, traffic_period_s)
        )
        city = seed_key(fleet.seed)
        phases = unit_uniform(derive(np.array([city], np.uint64), 13)) * 2 * np.pi
        phases2 = unit_uniform(derive(np.array([city], np.uint64), 14)) * 2 * np.pi
        # Each sensor sees the city-wide weather slightly shifted.
        self._wx_phase1 = float(phases[0]) + u(sk, 15, -0.3, 0.3)
        self._wx_phase2 = float(phases2[0]) + u(sk, 16, -0.3, 0.3)

        # Positions in km from the fleet's centre, for the regional field.
        lat0 = float(fleet.lat.mean()) if fleet.n_streams else 0.0
        lon0 = float(fleet.lon.mean()) if fleet.n_streams else 0.0
        self._y_km = (fleet.lat - lat0) * _KM_PER_DEG
        self._x_km = (fleet.lon - lon0) * _KM_PER_DEG * math.cos(math.radians(lat0))
        wk = derive(np.arange(_N_WAVES, dtype=np.uint64) ^ city, 40)
        wavelength = 6.0 + 19.0 * unit_uniform(derive(wk, 1))
        direction = 2 * np.pi * unit_uniform(derive(wk, 2))
        period_h = 8.0 + 32.0 * unit_uniform(derive(wk, 3))
        self._wave_kx = (2 * np.pi / wavelength * np.sin(direction))[None, :]
        self._wave_ky = (2 * np.pi / wavelength * np.cos(direction))[None, :]
        self._wave_w = (2 * np.pi / period_h / _HOUR_NS)[None, :]
        self._wave_phi = (2 * np.pi * unit_uniform(derive(wk, 4)))[None, :]
        self._city_key = city

    def weather(self, stream: NDArray[np.intp], ts_ns: _I64) -> WeatherColumns:
        """Regional field and rain at the streams' positions and times."""
        x = self._x_km[stream][:, None]
        y = self._y_km[stream][:, None]
        t = (ts_ns % (400 * _DAY_NS)).astype(np.float64)[:, None]
        field = np.sqrt(2.0 / _N_WAVES) * np.cos(
            self._wave_kx * x + self._wave_ky * y - self._wave_w * t + self._wave_phi
        ).sum(axis=1)
        # Rain per city hour slot, for this hour and the ones before it:
        # slot draws are computed once per distinct hour of the batch, the
        # footprint only where it rains.
        n = ts_ns.shape[0]
        washout = np.zeros(n)
        wet = np.zeros(n)
        rain = np.zeros(n)
        if n == 0:
            return WeatherColumns(field=field, rain=rain, washout=washout, wet=wet)
        hour_now = ts_ns // _HOUR_NS
        first = int(hour_now.min()) - _RAIN_LOOKBACK_H + 1
        slots = np.arange(first, int(hour_now.max()) + 1, dtype=np.int64)
        with np.errstate(over="ignore"):
            sk = mix64(slots.astype(np.uint64) * _TS_MUL ^ self._city_key)
        local = ((slots * _HOUR_NS + _WIB_OFFSET_NS) % _DAY_NS // _HOUR_NS).astype(np.float64)
        p = 0.03 + 0.22 * _bump(local + 0.5, 15.5, 2.5)
        intensity = np.where(
            unit_uniform(derive(sk, 1)) < p, 0.3 + 0.7 * unit_uniform(derive(sk, 2)), 0.0
        )
        ang = 2 * np.pi * unit_uniform(derive(sk, 3))
        kx = 2 * np.pi / 15.0 * np.sin(ang)
        ky = 2 * np.pi / 15.0 * np.cos(ang)
        phi = 2 * np.pi * unit_uniform(derive(sk, 4))
        rel = (hour_now - first)[:, None] - np.arange(_RAIN_LOOKBACK_H, dtype=np.int64)[None, :]
        row, k = np.nonzero(intensity[rel] > 0.0)
        if row.shape[0]:
            j = rel[row, k]
            patch = np.clip(
                0.6
                + 0.6
                * np.cos(
                    kx[j] * self._x_km[stream[row]] + ky[j] * self._y_km[stream[row]] + phi[j]
                ),
                0.0,
                1.0,
            )
            # a shower builds up over its first half hour (no step at the hour)
            into_h = (ts_ns[row] - slots[j] * _HOUR_NS).astype(np.float64) / _HOUR_NS
            onset = np.where(k == 0, np.clip(into_h / 0.5, 0.0, 1.0), 1.0)
            r = intensity[j] * patch * onset
            since_h = np.maximum(
                (ts_ns[row] - (slots[j] + 1) * _HOUR_NS).astype(np.float64) / _HOUR_NS, 0.0
            )
            np.maximum.at(washout, row, r * np.exp(-since_h / 3.0))
            np.maximum.at(wet, row, r * np.exp(-since_h / 1.5))
            now = k == 0
            rain[row[now]] = r[now]
        return WeatherColumns(field=field, rain=rain, washout=washout, wet=wet)

    def _noise(self, key: NDArray[np.uint64], n: int) -> _F64:
        return _noise(key, n) if self.noise else np.zeros(key.shape[0])

    @property
    def free_flow_kmh(self) -> _F64:
        """Free-flow speed per stream (km/h; meaningful for traffic lanes): the
        speed at zero occupancy, before noise and rain."""
        return self._v_free

    def _keys(self, stream: NDArray[np.intp], ts_ns: _I64) -> NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            t = (ts_ns // 1_000_000).astype(np.uint64) * _TS_MUL
        return mix64(self._fleet.stream_key[stream] ^ t)

    def _weather(self, stream: NDArray[np.intp], ts_ns: _I64) -> tuple[_F64, _F64]:
        days = ts_ns.astype(np.float64) / _DAY_NS
        w1 = np.sin(2 * np.pi * days / 3.3 + self._wx_phase1[stream])
        w2 = np.sin(2 * np.pi * days / 1.7 + self._wx_phase2[stream])
        return w1, w2

    def air(
        self,
        stream: NDArray[np.intp],
        ts_ns: _I64,
        *,
        gases: NDArray[np.bool_] | None = None,
    ) -> AirColumns:
        """Values of air streams ``stream`` (indices into the fleet) at ``ts_ns``.

        Gas columns are computed only for rows where ``gases`` is true (default:
        all rows) and are NaN elsewhere.
        """
        key = self._keys(stream, ts_ns)
        week_min = _minute_of_week(ts_ns)
        day_min = week_min % 1440
        w1, w2 = self._weather(stream, ts_ns)

        t_dev = _T_DEV[day_min]
        temperature = self._t_mean[stream] + t_dev + 0.5 * w2 + 0.3 * self._noise(key, 1)
        rh = 78.0 - 3.6 * t_dev + 3.0 * w1 + 2.0 * self._noise(key, 2)
        weather = 1.0 + 0.2 * w1 + 0.1 * w2
        pm25 = (
            self._pm_base[stream]
            * _PM_WEEK[week_min]
            * weather
            * np.exp(0.15 * self._noise(key, 3))
        )
        if self.dynamics:
            met = self.weather(stream, ts_ns)
            temperature -= 0.5 * met.wet * np.maximum(temperature - 24.0, 0.0)
            rh += 0.7 * met.wet * np.maximum(96.0 - rh, 0.0)
            pm25 *= np.exp(0.2 * met.field) * (1.0 - 0.55 * met.washout)
        temperature = np.clip(temperature, 20.0, 36.0)
        rh = np.clip(rh, 45.0, 99.5)
        humid = np.maximum(rh - 75.0, 0.0) * (1.0 / 25.0)
        pm25 *= np.where(self._low_cost[stream], 1.0 + 0.5 * humid * humid, 1.0)
        pm25 = np.clip(pm25, 1.0, 999.9)
        ratio = np.clip(self._pm10_ratio[stream] + 0.05 * self._noise(key, 4), 1.3, 1.8)
        pm10 = np.minimum(pm25 * ratio, 1999.9)

        n = stream.shape[0]
        no2, o3, co, so2 = (np.full(n, np.nan) for _ in range(4))
        idx = np.arange(n) if gases is None else np.flatnonzero(gases)
        if idx.shape[0]:
            s, k, wm, dm = stream[idx], key[idx], week_min[idx], day_min[idx]
            rush = _DEMAND_WEEK[wm]
            wx = weather[idx]
            no2[idx] = self._no2_base[s] * (0.6 + 0.9 * rush) * wx * np.exp(0.2 * self._noise(k, 5))
            o3[idx] = np.clip(
                8.0
                + self._o3_peak[s] * _PHOTO[dm] * (1.0 + 0.1 * w2[idx])
                + 3.0 * self._noise(k, 6),
                1.0,
                None,
            )
            co[idx] = self._co_base[s] * (0.5 + 0.8 * rush) * wx * np.exp(0.2 * self._noise(k, 7))
            so2[idx] = self._so2_base[s] * _SO2_DAY[dm] * np.exp(0.2 * self._noise(k, 8))
        return AirColumns(
            pm25=pm25,
            pm10=pm10,
            no2=no2,
            o3=o3,
            co=co,
            so2=so2,
            temperature=temperature,
            relative_humidity=rh,
        )

    def traffic(self, stream: NDArray[np.intp], ts_ns: _I64) -> TrafficColumns:
        """Values of traffic lane streams ``stream`` at ``ts_ns``."""
        key = self._keys(stream, ts_ns)
        w1, _ = self._weather(stream, ts_ns)
        demand = _DEMAND_WEEK[_minute_of_week(ts_ns)] * self._lane_scale[stream] * (1.0 + 0.05 * w1)
        slow = np.ones(ts_ns.shape[0])
        if self.dynamics:
            met = self.weather(stream, ts_ns)
            demand = demand * (1.0 + 0.05 * met.field)
            slow = 1.0 - 0.12 * met.rain
        demand = np.clip(demand, 0.0, 1.0)
        mean = demand * self._capacity_per_s[stream] * self._period_s[stream]
        intensity = np.rint(np.maximum(mean + np.sqrt(mean) * self._noise(key, 1), 0.0)).astype(
            np.int64
        )
        occ = (
            (0.13 * demand + 0.9 * np.maximum(demand - 0.55, 0.0) ** 1.5)
            * self._occ_scale[stream]
            * np.exp(0.1 * self._noise(key, 2))
        )
        occ = np.where(intensity == 0, 0.0, np.clip(occ, 0.0, 0.95))
        speed = (
            self._v_free[stream] * (1.0 - occ / 0.75) * np.exp(0.05 * self._noise(key, 3)) * slow
        )
        speed = np.clip(speed, 3.0, None)
        return TrafficColumns(intensity=intensity, occupancy=occ, average_vehicle_speed=speed)


def _minute_of_week(ts_ns: _I64) -> _I64:
    """Minutes since Monday 00:00 WIB (1970-01-01 was a Thursday)."""
    return ((ts_ns + _WIB_OFFSET_NS) // 60_000_000_000 + 3 * 1440) % (7 * 1440)


# Profiles sampled per minute (the value functions look them up instead of
# evaluating exponentials per message).
_DAY_HOURS: Final = np.arange(1440, dtype=np.float64) / 60.0
_WEEK_HOURS: Final = np.tile(_DAY_HOURS, 7)
_WEEKEND: Final = np.arange(7 * 1440) >= 5 * 1440
_T_DEV: Final = 4.0 * np.cos(2 * np.pi * (_DAY_HOURS - 14.5) / 24.0)
_PHOTO: Final = np.maximum(np.sin(np.pi * (_DAY_HOURS - 6.5) / 12.0), 0.0) ** 1.5
_SO2_DAY: Final = 0.8 + 0.3 * _bump(_DAY_HOURS, 10.0, 3.0)
_DEMAND_WEEK: Final = traffic_demand(_WEEK_HOURS, _WEEKEND)
_PM_WEEK: Final = pm_diurnal_factor(_WEEK_HOURS) * np.where(_WEEKEND, 0.88, 1.0)
