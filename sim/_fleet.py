"""A deterministic fleet of simulated sensors.

Every attribute of a sensor (district, model, lanes, phase, position) is derived
by hashing ``(seed, kind, sensor index)``, so a fleet is *prefix-stable*: the
first 10 air sensors of a 100-sensor fleet are the sensors of a 10-sensor
fleet with the same seed. Changing ``n_air`` never changes ``aq-...-0007``.

Traffic: one loop-detector station is one sensor id; a station has 1 or 2
lanes and reports one message per lane (FIWARE ``laneId`` 1 or 2) on the
station's topic, both with the same timestamp. A fleet is therefore a list of
*streams* (one per air sensor, one per traffic lane); the per-stream columns
below are indexed by stream.

Positions are plausible, not surveyed: each district gets a pseudo-random
centre within a few km of the city centre (derived from its name) and each
sensor a jitter of up to ~1 km around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from urbanpulse._errors import ConfigError
from urbanpulse._schema import Kind

__all__ = [
    "AIR_MODELS",
    "CITIES",
    "MODEL_LOOP",
    "MODEL_LOW_COST",
    "MODEL_NAMES",
    "MODEL_REFERENCE",
    "CityInfo",
    "Fleet",
    "SensorInfo",
]

#: Model codes (``Fleet.model`` column) and their names.
MODEL_LOW_COST: Final = 0
MODEL_REFERENCE: Final = 1
MODEL_LOOP: Final = 2
MODEL_NAMES: Final[tuple[str, ...]] = ("SDS011+BME280", "reference", "loop")
#: Air models: a low-cost optical PM node with a BME280 (pm25, pm10,
#: temperature, relativeHumidity) and a reference station (all eight fields).
AIR_MODELS: Final[tuple[str, ...]] = MODEL_NAMES[:2]

_U64 = NDArray[np.uint64]
_MASK64: Final = (1 << 64) - 1
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_SALT_MUL: Final = 0xD1B54A32D192ED03


def mix64(x: _U64) -> _U64:
    """SplitMix64 finaliser, elementwise (a counter-based hash, wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def salt(n: int) -> np.uint64:
    """A well-spread 64-bit constant for salt number ``n``."""
    return np.uint64((n * _SALT_MUL + 0x632BE59BD9B4E019) & _MASK64)


def derive(key: _U64, n: int) -> _U64:
    """Independent hash stream ``n`` of each key."""
    return mix64(key ^ salt(n))


def unit_uniform(h: _U64) -> NDArray[np.float64]:
    """Map 64-bit hashes to floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def seed_key(seed: int) -> np.uint64:
    return np.uint64(mix64(np.array([seed & _MASK64], dtype=np.uint64))[0])


def entity_keys(seed: int, kind: NDArray[np.uint8], index: NDArray[np.int64]) -> _U64:
    """Hash keys of ``(seed, kind, sensor index)``."""
    raw = (kind.astype(np.uint64) << np.uint64(56)) | index.astype(np.uint64)
    return mix64(raw ^ seed_key(seed))


@dataclass(frozen=True, slots=True)
class CityInfo:
    name: str
    lat: float
    lon: float
    #: Kecamatan (district) slugs; used in topics and sensor ids.
    districts: tuple[str, ...]


CITIES: Final[dict[str, CityInfo]] = {
    "bandung": CityInfo(
        "bandung",
        -6.9175,
        107.6191,
        (
            "andir",
            "antapani",
            "arcamanik",
            "astanaanyar",
            "babakan-ciparay",
            "bandung-kidul",
            "bandung-kulon",
            "bandung-wetan",
            "batununggal",
            "bojongloa-kaler",
            "bojongloa-kidul",
            "buahbatu",
            "cibeunying-kaler",
            "cibeunying-kidul",
            "cibiru",
            "cicendo",
            "cidadap",
            "cinambo",
            "coblong",
            "gedebage",
            "kiaracondong",
            "lengkong",
            "mandalajati",
            "panyileukan",
            "rancasari",
            "regol",
            "sukajadi",
            "sukasari",
            "sumur-bandung",
            "ujungberung",
        ),
    ),
    "surabaya": CityInfo(
        "surabaya",
        -7.2575,
        112.7521,
        (
            "genteng",
            "tegalsari",
            "bubutan",
            "simokerto",
            "gubeng",
            "wonokromo",
            "sawahan",
            "tambaksari",
            "rungkut",
            "sukolilo",
            "mulyorejo",
            "wiyung",
        ),
    ),
    "yogyakarta": CityInfo(
        "yogyakarta",
        -7.7956,
        110.3695,
        (
            "gondokusuman",
            "danurejan",
            "gedongtengen",
            "jetis",
            "tegalrejo",
            "wirobrajan",
            "mantrijeron",
            "kraton",
            "mergangsan",
            "umbulharjo",
            "kotagede",
            "gondomanan",
            "pakualaman",
            "ngampilan",
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class SensorInfo:
    """One physical sensor (a traffic station with two lanes is one SensorInfo)."""

    sensor_id: str
    kind: Kind
    district: str
    model: str
    lanes: int
    interval_s: float
    phase_s: float
    lat: float
    lon: float


def _slug_ok(text: str) -> bool:
    return bool(text) and all(c.isascii() and (c.isalnum() or c == "-") for c in text)


@dataclass(frozen=True, slots=True, eq=False)
class Fleet:
    """Sensors of one city as struct-of-arrays over streams (air sensors first, then lanes)."""

    seed: int
    city: str
    districts: tuple[str, ...]
    #: ``Kind`` value per stream.
    kind: NDArray[np.uint8]
    #: Index of the sensor within its kind (0-based; ids count from 1).
    sensor_index: NDArray[np.int64]
    #: FIWARE ``laneId`` (1, 2) for traffic streams, 0 for air.
    lane: NDArray[np.int64]
    #: Model code (``MODEL_*``).
    model: NDArray[np.uint8]
    district_index: NDArray[np.int64]
    #: Nominal reporting interval and phase (offset from the epoch, in ms steps).
    interval_ns: NDArray[np.int64]
    phase_ns: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    sensor_id: tuple[str, ...]
    #: Hash key of each stream (seed, kind, sensor, lane): seeds the values.
    stream_key: NDArray[np.uint64]
    #: Hash key of each stream's sensor (shared by the lanes of a station).
    sensor_key: NDArray[np.uint64]
    #: Road corridor of each traffic stream (index into ``corridors``), -1 for air.
    corridor: NDArray[np.int64]
    #: Position along the corridor in km; traffic flows towards larger positions,
    #: so "upstream" of a station means a smaller position on the same corridor.
    corridor_pos_km: NDArray[np.float64]
    corridors: tuple[str, ...] = ()

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        n_air: int,
        n_traffic: int,
        city: str = "bandung",
        districts: tuple[str, ...] | None = None,
        air_interval_s: float = 60.0,
        traffic_interval_s: float = 30.0,
        reference_fraction: float = 0.2,
        two_lane_fraction: float = 0.6,
    ) -> Fleet:
        if n_air < 0 or n_traffic < 0 or n_air + n_traffic == 0:
            raise ConfigError(f"need sensors: n_air={n_air}, n_traffic={n_traffic}")
        if not _slug_ok(city):
            raise ConfigError(f"city {city!r} must be a slug (ascii letters, digits, '-')")
        info = CITIES.get(city)
        if districts is None:
            if info is None:
                raise ConfigError(
                    f"unknown city {city!r}: pass districts= or use one of {sorted(CITIES)}"
                )
            districts = info.districts
        if not districts or not all(_slug_ok(d) for d in districts):
            raise ConfigError(f"districts must be non-empty slugs, got {districts!r}")
        for name, interval in (("air", air_interval_s), ("traffic", traffic_interval_s)):
            if not interval >= 0.001:
                raise ConfigError(f"{name}_interval_s must be >= 0.001, got {interval}")
        if not 0.0 <= reference_fraction <= 1.0 or not 0.0 <= two_lane_fraction <= 1.0:
            raise ConfigError("reference_fraction and two_lane_fraction must be in [0, 1]")
        centre_lat, centre_lon = (info.lat, info.lon) if info else (0.0, 0.0)

        # Per-sensor attributes, hashed from (seed, kind, index): prefix-stable.
        air_idx = np.arange(n_air, dtype=np.int64)
        trf_idx = np.arange(n_traffic, dtype=np.int64)
        air_keys = entity_keys(seed, np.full(n_air, Kind.AIR, np.uint8), air_idx)
        trf_keys = entity_keys(seed, np.full(n_traffic, Kind.TRAFFIC, np.uint8), trf_idx)
        # Districts: a seeded permutation, dealt round-robin so that n sensors
        # cover min(n, n_districts) districts evenly.
        perm = np.random.default_rng(seed & _MASK64).permutation(len(districts))
        air_district = perm[(air_idx + 0) % len(districts)]
        trf_district = perm[(trf_idx + len(districts) // 2) % len(districts)]
        air_model = np.where(
            unit_uniform(derive(air_keys, 1)) < reference_fraction, MODEL_REFERENCE, MODEL_LOW_COST
        ).astype(np.uint8)
        lanes = np.where(unit_uniform(derive(trf_keys, 1)) < two_lane_fraction, 2, 1)

        air_interval_ns = round(air_interval_s * 1000) * 1_000_000
        trf_interval_ns = round(traffic_interval_s * 1000) * 1_000_000
        air_phase = _phase_ns(air_keys, air_interval_ns)
        trf_phase = _phase_ns(trf_keys, trf_interval_ns)

        names = np.array(districts, dtype=object)
        d_lat, d_lon = _district_centres(districts, centre_lat, centre_lon)
        air_lat = d_lat[air_district] + _jitter(air_keys, 3)
        air_lon = d_lon[air_district] + _jitter(air_keys, 4)
        trf_lat = d_lat[trf_district] + _jitter(trf_keys, 3)
        trf_lon = d_lon[trf_district] + _jitter(trf_keys, 4)
        air_ids = [f"aq-{d}-{i + 1:04d}" for i, d in enumerate(names[air_district].tolist())]
        trf_ids = [f"tc-{d}-{i + 1:04d}" for i, d in enumerate(names[trf_district].tolist())]

        # Expand traffic stations to lanes.
        rep = np.repeat(trf_idx, lanes)
        lane_no = np.arange(rep.shape[0], dtype=np.int64) - np.repeat(
            np.cumsum(lanes) - lanes, lanes
        )
        lane_no += 1
        n_lanes = rep.shape[0]
        kind = np.concatenate(
            [np.full(n_air, Kind.AIR, np.uint8), np.full(n_lanes, Kind.TRAFFIC, np.uint8)]
        )
        lane_col = np.concatenate([np.zeros(n_air, np.int64), lane_no])
        sensor_key = np.concatenate([air_keys, trf_keys[rep]])
        stream_key = mix64(sensor_key ^ (lane_col.astype(np.uint64) * salt(7)))
        # Built-in cities have no road map: each district's stations form one
        # corridor along a bearing derived from the district name.
        bearing = _district_bearings(districts)[trf_district]
        along = (trf_lat - d_lat[trf_district]) * np.cos(bearing) + (
            trf_lon - d_lon[trf_district]
        ) * np.sin(bearing)
        return cls(
            seed=seed,
            city=city,
            districts=tuple(districts),
            kind=kind,
            sensor_index=np.concatenate([air_idx, rep]),
            lane=lane_col,
            model=np.concatenate([air_model, np.full(n_lanes, MODEL_LOOP, np.uint8)]),
            district_index=np.concatenate([air_district, trf_district[rep]]).astype(np.int64),
            interval_ns=np.concatenate(
                [np.full(n_air, air_interval_ns, np.int64), np.full(n_lanes, trf_interval_ns)]
            ).astype(np.int64),
            phase_ns=np.concatenate([air_phase, trf_phase[rep]]),
            lat=np.round(np.concatenate([air_lat, trf_lat[rep]]), 6),
            lon=np.round(np.concatenate([air_lon, trf_lon[rep]]), 6),
            sensor_id=tuple(air_ids) + tuple(trf_ids[i] for i in rep.tolist()),
            stream_key=stream_key,
            sensor_key=sensor_key,
            corridor=np.concatenate([np.full(n_air, -1, np.int64), trf_district[rep]]).astype(
                np.int64
            ),
            corridor_pos_km=np.concatenate([np.zeros(n_air), along[rep] * _KM_PER_DEG]),
            corridors=tuple(districts),
        )

    @property
    def n_streams(self) -> int:
        return int(self.kind.shape[0])

    def district(self, stream: int) -> str:
        return self.districts[int(self.district_index[stream])]

    def topics(self, prefix: str) -> list[str]:
        """MQTT topic of each stream: ``<prefix>/<city>/<district>/<kind>/<sensor_id>``."""
        labels = [Kind(k).label for k in range(len(Kind))]
        return [
            f"{prefix}/{self.city}/{self.districts[d]}/{labels[k]}/{sid}"
            for d, k, sid in zip(
                self.district_index.tolist(), self.kind.tolist(), self.sensor_id, strict=True
            )
        ]

    def sensors(self) -> list[SensorInfo]:
        """One record per physical sensor, in stream order (air first)."""
        out: list[SensorInfo] = []
        for s in range(self.n_streams):
            if self.lane[s] > 1:
                prev = out[-1]
                out[-1] = SensorInfo(
                    prev.sensor_id,
                    prev.kind,
                    prev.district,
                    prev.model,
                    int(self.lane[s]),
                    prev.interval_s,
                    prev.phase_s,
                    prev.lat,
                    prev.lon,
                )
                continue
            out.append(
                SensorInfo(
                    sensor_id=self.sensor_id[s],
                    kind=Kind(int(self.kind[s])),
                    district=self.district(s),
                    model=MODEL_NAMES[int(self.model[s])],
                    lanes=max(int(self.lane[s]), 1) if self.kind[s] == Kind.TRAFFIC else 0,
                    interval_s=int(self.interval_ns[s]) / 1e9,
                    phase_s=int(self.phase_ns[s]) / 1e9,
                    lat=float(self.lat[s]),
                    lon=float(self.lon[s]),
                )
            )
        return out


def _phase_ns(keys: _U64, interval_ns: int) -> NDArray[np.int64]:
    steps = interval_ns // 1_000_000
    ms = np.floor(unit_uniform(derive(keys, 2)) * steps).astype(np.int64)
    return ms * 1_000_000


def _jitter(keys: _U64, n: int) -> NDArray[np.float64]:
    """Up to about +-1 km in degrees near the equator."""
    return (unit_uniform(derive(keys, n)) - 0.5) * 0.018


_KM_PER_DEG: Final = 111.32


def _name_keys(names: tuple[str, ...]) -> _U64:
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
            for d in names
        ],
        dtype=np.uint64,
    )


def _district_bearings(districts: tuple[str, ...]) -> NDArray[np.float64]:
    """A fixed road bearing (radians from north) per district."""
    return unit_uniform(derive(_name_keys(districts), 8)) * np.pi


def _district_centres(
    districts: tuple[str, ...], lat: float, lon: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pseudo-random but fixed district centres within ~6 km of the city centre."""
    keys = _name_keys(districts)
    return (
        lat + (unit_uniform(derive(keys, 5)) - 0.5) * 0.11,
        lon + (unit_uniform(derive(keys, 6)) - 0.5) * 0.11,
    )
