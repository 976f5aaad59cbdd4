"""City models from files (TOML or JSON): districts with outlines, corridors, sensors.

A city file describes geometry and sensors; :func:`city_fleet` turns it into a
:class:`~sim.Fleet` (the same struct-of-arrays the built-in ``CITIES`` give).
Sensors are listed one by one (``[[sensors]]``), generated from a seed inside
the district outlines (``[generate]``: counts, shares), or both::

    name = "sindangraja"
    [[districts]]
    name = "kaler"
    outline = [[-6.80, 107.90], [-6.80, 107.93], [-6.83, 107.93], [-6.83, 107.90]]
    [[corridors]]                    # a road; traffic flows from the first point on
    name = "jalan-raya"
    path = [[-6.81, 107.90], [-6.81, 107.95]]
    [[sensors]]
    id = "aq-kaler-01"
    kind = "air"                     # or "traffic"
    lat = -6.81
    lon = 107.91
    model = "reference"              # air: "SDS011+BME280" (default) or "reference"
    interval_s = 60                  # default: the file's air_interval_s / traffic_interval_s
    [generate]
    seed = 1
    n_air = 700
    n_traffic = 300                  # stations, placed along the corridors

Coordinates are ``[lat, lon]`` in degrees. A sensor's district is the outline
that contains it (or ``district = "..."``, which must then contain it). A
traffic station on a corridor is placed at its projection on the road: its
``corridor_pos_km`` orders stations so that incidents propagate upstream.
Generated positions depend only on the file (its ``generate.seed``); the
simulator's seed only changes values.

Bundled fictional cities: :func:`bundled_cities` (``sindangraja``: 50 sensors,
listed; ``tirtamaya``: 1,000 generated, JSON; ``nusapura``: 10,000 generated).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Final, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim._fleet import (
    MODEL_LOOP,
    MODEL_LOW_COST,
    MODEL_NAMES,
    MODEL_REFERENCE,
    Fleet,
    derive,
    mix64,
    salt,
    seed_key,
    unit_uniform,
)
from urbanpulse._errors import ConfigError
from urbanpulse._schema import Kind

__all__ = [
    "CityModel",
    "CorridorSpec",
    "DistrictSpec",
    "GenerateSpec",
    "SensorSpec",
    "bundled_cities",
    "city_fleet",
    "load_city",
    "points_in_polygon",
]

_F64 = NDArray[np.float64]
_KM_PER_DEG: Final = 111.32
_CITIES_DIR: Final = Path(__file__).parent / "cities"

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
SensorId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)]
Lat = Annotated[float, Field(ge=-90.0, le=90.0)]
Lon = Annotated[float, Field(ge=-180.0, le=180.0)]
Point = tuple[Lat, Lon]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistrictSpec(_Model):
    name: Slug
    #: Polygon vertices ``[lat, lon]`` (closed implicitly).
    outline: Annotated[list[Point], Field(min_length=3)]
    #: Relative share of generated sensors (default equal per district).
    weight: Annotated[float, Field(ge=0.0)] = 1.0

    @model_validator(mode="after")
    def _area(self) -> Self:
        if _polygon_area(self.outline) <= 0.0:
            raise ValueError(f"district {self.name!r}: outline has no area")
        return self


class CorridorSpec(_Model):
    name: Slug
    #: Polyline ``[lat, lon]``; traffic flows from the first point to the last.
    path: Annotated[list[Point], Field(min_length=2)]


class SensorSpec(_Model):
    id: SensorId
    kind: Literal["air", "traffic"]
    lat: Lat
    lon: Lon
    district: Slug | None = None
    model: Literal["SDS011+BME280", "reference", "loop"] | None = None
    interval_s: Annotated[float, Field(ge=0.001)] | None = None
    lanes: Annotated[int, Field(ge=1, le=2)] = 1
    corridor: Slug | None = None

    @model_validator(mode="after")
    def _kind(self) -> Self:
        if self.kind == "air":
            if self.model == "loop":
                raise ValueError(f"sensor {self.id!r}: an air sensor cannot be model 'loop'")
            if self.lanes != 1 or self.corridor is not None:
                raise ValueError(f"sensor {self.id!r}: lanes/corridor are for traffic sensors")
        elif self.model not in (None, "loop"):
            raise ValueError(f"sensor {self.id!r}: a traffic sensor must be model 'loop'")
        return self


class GenerateSpec(_Model):
    seed: int = 0
    n_air: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    #: Traffic stations (1 or 2 lanes each).
    n_traffic: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    reference_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    two_lane_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.6


class CityModel(_Model):
    name: Slug
    description: str = ""
    air_interval_s: Annotated[float, Field(ge=0.001)] = 60.0
    traffic_interval_s: Annotated[float, Field(ge=0.001)] = 30.0
    districts: Annotated[list[DistrictSpec], Field(min_length=1)]
    corridors: list[CorridorSpec] = []
    sensors: list[SensorSpec] = []
    generate: GenerateSpec | None = None

    @model_validator(mode="after")
    def _references(self) -> Self:
        _unique("district", [d.name for d in self.districts])
        _unique("corridor", [c.name for c in self.corridors])
        _unique("sensor id", [s.id for s in self.sensors])
        corridors = {c.name for c in self.corridors}
        districts = {d.name: d for d in self.districts}
        for s in self.sensors:
            if s.corridor is not None and s.corridor not in corridors:
                raise ValueError(f"sensor {s.id!r}: unknown corridor {s.corridor!r}")
            if s.district is not None:
                d = districts.get(s.district)
                if d is None:
                    raise ValueError(f"sensor {s.id!r}: unknown district {s.district!r}")
                if not points_in_polygon(np.array([s.lat]), np.array([s.lon]), d.outline)[0]:
                    raise ValueError(
                        f"sensor {s.id!r} at ({s.lat}, {s.lon}) is outside district {s.district!r}"
                    )
        located = _locate(
            self, np.array([s.lat for s in self.sensors]), [s.lon for s in self.sensors]
        )
        for s, d in zip(self.sensors, located.tolist(), strict=True):
            if s.district is None and d < 0:
                raise ValueError(
                    f"sensor {s.id!r} at ({s.lat}, {s.lon}) is inside no district outline"
                )
        gen = self.generate
        if not self.sensors and (gen is None or gen.n_air + gen.n_traffic == 0):
            raise ValueError("the city has no sensors: list [[sensors]] or set [generate] counts")
        if (
            gen is not None
            and gen.n_air + gen.n_traffic
            and not any(d.weight > 0 for d in self.districts)
        ):
            raise ValueError("every district has weight 0: nowhere to generate sensors")
        return self

    @property
    def centre(self) -> tuple[float, float]:
        pts = np.array([p for d in self.districts for p in d.outline])
        return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"duplicate {what} {n!r}")
        seen.add(n)


def _polygon_area(outline: list[tuple[float, float]]) -> float:
    pts = np.array(outline, dtype=np.float64)
    x, y = pts[:, 1], pts[:, 0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def points_in_polygon(
    lat: _F64, lon: _F64, outline: list[tuple[float, float]]
) -> NDArray[np.bool_]:
    """Even-odd ray casting, vectorised over points (``outline`` is ``[lat, lon]`` vertices)."""
    poly = np.asarray(outline, dtype=np.float64)
    y0, x0 = poly[:, 0][None, :], poly[:, 1][None, :]
    y1, x1 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    py, px = lat[:, None], lon[:, None]
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    hits = crosses & (px < x_at)
    return np.asarray(np.count_nonzero(hits, axis=1) % 2 == 1)


def _locate(city: CityModel, lat: _F64, lon: _F64 | list[float]) -> NDArray[np.int64]:
    """Index of the first district containing each point, -1 if none."""
    lon_a = np.asarray(lon, dtype=np.float64)
    out = np.full(lat.shape[0], -1, dtype=np.int64)
    for i, d in enumerate(city.districts):
        inside = points_in_polygon(lat, lon_a, d.outline) & (out < 0)
        out[inside] = i
    return out


def load_city(path: str | Path) -> CityModel:
    """Read and validate a city file (``.toml`` or ``.json``); errors name the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read city file {p}: {exc}") from exc
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        elif p.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(f"city file {p}: expected a .toml or .json file")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"city file {p} is not valid {p.suffix[1:].upper()}: {exc}") from exc
    try:
        return CityModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"city file {p}: {_errors(exc)}") from exc


def _errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def bundled_cities() -> dict[str, Path]:
    """Name -> path of the example cities shipped in ``sim/cities``."""
    return {
        p.stem: p for p in sorted(_CITIES_DIR.iterdir()) if p.suffix.lower() in (".toml", ".json")
    }


def _id_keys(seed: int, kind: NDArray[np.uint8], ids: list[str]) -> NDArray[np.uint64]:
    raw = np.array(
        [
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
            for i in ids
        ],
        dtype=np.uint64,
    )
    return mix64(raw ^ (kind.astype(np.uint64) * salt(21)) ^ seed_key(seed))


def _sample_in(
    rng: np.random.Generator, outline: list[tuple[float, float]], n: int
) -> tuple[_F64, _F64]:
    poly = np.asarray(outline, dtype=np.float64)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    lat: list[_F64] = []
    lon: list[_F64] = []
    have = 0
    while have < n:
        m = max(2 * (n - have), 16)
        cand = lo + (hi - lo) * rng.random((m, 2))
        ok = points_in_polygon(cand[:, 0], cand[:, 1], outline)
        lat.append(cand[ok, 0])
        lon.append(cand[ok, 1])
        have += int(ok.sum())
    return np.concatenate(lat)[:n], np.concatenate(lon)[:n]


class _Rows:
    """Sensors as lists before they become the fleet's columns."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.kind: list[int] = []
        self.district: list[int] = []
        self.model: list[int] = []
        self.interval_s: list[float] = []
        self.lanes: list[int] = []
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.corridor: list[int] = []
        self.pos_km: list[float] = []


def _polyline(path: list[tuple[float, float]], lat0: float) -> tuple[_F64, _F64, _F64]:
    """Vertices in km (x east, y north) and cumulative length."""
    pts = np.asarray(path, dtype=np.float64)
    y = pts[:, 0] * _KM_PER_DEG
    x = pts[:, 1] * _KM_PER_DEG * math.cos(math.radians(lat0))
    seg = np.hypot(np.diff(x), np.diff(y))
    return x, y, np.concatenate([[0.0], np.cumsum(seg)])


def _project(
    path: list[tuple[float, float]], lat0: float, lat: _F64, lon: _F64
) -> NDArray[np.float64]:
    """Arc length (km) of each point's nearest point on the polyline."""
    x, y, cum = _polyline(path, lat0)
    px = lon[:, None] * _KM_PER_DEG * math.cos(math.radians(lat0))
    py = lat[:, None] * _KM_PER_DEG
    dx, dy = np.diff(x)[None, :], np.diff(y)[None, :]
    length2 = np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip(((px - x[None, :-1]) * dx + (py - y[None, :-1]) * dy) / length2, 0.0, 1.0)
    d2 = (x[None, :-1] + t * dx - px) ** 2 + (y[None, :-1] + t * dy - py) ** 2
    best = np.argmin(d2, axis=1)
    rows = np.arange(lat.shape[0])
    return np.asarray(cum[best] + t[rows, best] * np.sqrt(length2[0, best]))


def _point_at(path: list[tuple[float, float]], lat0: float, s_km: _F64) -> tuple[_F64, _F64, _F64]:
    """(lat, lon, bearing) of points at arc lengths ``s_km`` along the polyline."""
    x, y, cum = _polyline(path, lat0)
    seg = np.clip(np.searchsorted(cum, s_km, side="right") - 1, 0, x.shape[0] - 2)
    seg_len = np.maximum(cum[seg + 1] - cum[seg], 1e-12)
    f = (s_km - cum[seg]) / seg_len
    px = x[seg] + f * (x[seg + 1] - x[seg])
    py = y[seg] + f * (y[seg + 1] - y[seg])
    heading = np.arctan2(x[seg + 1] - x[seg], y[seg + 1] - y[seg])
    return py / _KM_PER_DEG, px / (_KM_PER_DEG * math.cos(math.radians(lat0))), heading


def _listed(city: CityModel, rows: _Rows) -> None:
    dnames = {d.name: i for i, d in enumerate(city.districts)}
    cnames = {c.name: i for i, c in enumerate(city.corridors)}
    lat0 = city.centre[0]
    if not city.sensors:
        return
    lat = np.array([s.lat for s in city.sensors])
    lon = np.array([s.lon for s in city.sensors])
    located = _locate(city, lat, lon).tolist()
    for s, where in zip(city.sensors, located, strict=True):
        air = s.kind == "air"
        rows.ids.append(s.id)
        rows.kind.append(int(Kind.AIR if air else Kind.TRAFFIC))
        rows.district.append(dnames[s.district] if s.district is not None else where)
        model = s.model or ("SDS011+BME280" if air else "loop")
        rows.model.append(MODEL_NAMES.index(model))
        rows.interval_s.append(
            s.interval_s or (city.air_interval_s if air else city.traffic_interval_s)
        )
        rows.lanes.append(0 if air else s.lanes)
        rows.lat.append(s.lat)
        rows.lon.append(s.lon)
        c = -1 if s.corridor is None else cnames[s.corridor]
        rows.corridor.append(c)
        pos = 0.0
        if c >= 0:
            pos = float(
                _project(city.corridors[c].path, lat0, np.array([s.lat]), np.array([s.lon]))[0]
            )
        rows.pos_km.append(pos)


def _generated(city: CityModel, rows: _Rows) -> None:
    gen = city.generate
    if gen is None or gen.n_air + gen.n_traffic == 0:
        return
    rng = np.random.default_rng(gen.seed & ((1 << 64) - 1))
    weights = np.array([d.weight for d in city.districts], dtype=np.float64)
    share = weights / weights.sum()
    lat0 = city.centre[0]
    names = [d.name for d in city.districts]

    # Air: a multinomial split over districts, uniform inside each outline.
    counts = rng.multinomial(gen.n_air, share)
    n = 0
    for d, count in enumerate(counts.tolist()):
        lat, lon = _sample_in(rng, city.districts[d].outline, count)
        ref = rng.random(count) < gen.reference_fraction
        for i in range(count):
            n += 1
            rows.ids.append(f"aq-{names[d]}-{n:05d}")
            rows.kind.append(int(Kind.AIR))
            rows.district.append(d)
            rows.model.append(MODEL_REFERENCE if ref[i] else MODEL_LOW_COST)
            rows.interval_s.append(city.air_interval_s)
            rows.lanes.append(0)
            rows.corridor.append(-1)
            rows.pos_km.append(0.0)
        rows.lat.extend(lat.tolist())
        rows.lon.extend(lon.tolist())

    # Traffic: along the corridors (by length), else scattered in districts.
    m = gen.n_traffic
    if m == 0:
        return
    lanes = np.where(rng.random(m) < gen.two_lane_fraction, 2, 1)
    if city.corridors:
        lengths = np.array([_polyline(c.path, lat0)[2][-1] for c in city.corridors])
        per = rng.multinomial(m, lengths / lengths.sum())
        corridor = np.repeat(np.arange(len(city.corridors)), per)
        pos = np.concatenate(
            [np.sort(rng.random(k)) * lengths[c] for c, k in enumerate(per.tolist())]
        )
        lat = np.empty(m)
        lon = np.empty(m)
        start = 0
        for c, k in enumerate(per.tolist()):
            la, lo, heading = _point_at(city.corridors[c].path, lat0, pos[start : start + k])
            # Stations sit ~15 m beside the carriageway.
            lat[start : start + k] = la - 0.00014 * np.sin(heading)
            lon[start : start + k] = lo + 0.00014 * np.cos(heading)
            start += k
        district = _locate(city, lat, lon)
        outside = district < 0
        if outside.any():
            cent = np.array([np.mean(np.asarray(d.outline), axis=0) for d in city.districts])
            dist = (lat[outside, None] - cent[None, :, 0]) ** 2 + (
                lon[outside, None] - cent[None, :, 1]
            ) ** 2
            district[outside] = np.argmin(dist, axis=1)
    else:
        district = rng.choice(len(names), size=m, p=share)
        lat = np.empty(m)
        lon = np.empty(m)
        for d in range(len(names)):
            sel = np.flatnonzero(district == d)
            lat[sel], lon[sel] = _sample_in(rng, city.districts[d].outline, sel.shape[0])
        corridor = np.full(m, -1)
        pos = np.zeros(m)
    for i, (d, ln) in enumerate(zip(district.tolist(), lanes.tolist(), strict=True)):
        rows.ids.append(f"tc-{names[d]}-{i + 1:05d}")
        rows.kind.append(int(Kind.TRAFFIC))
        rows.district.append(d)
        rows.model.append(MODEL_LOOP)
        rows.interval_s.append(city.traffic_interval_s)
        rows.lanes.append(ln)
    rows.lat.extend(lat.tolist())
    rows.lon.extend(lon.tolist())
    rows.corridor.extend(corridor.tolist())
    rows.pos_km.extend(pos.tolist())


def city_fleet(city: CityModel, *, seed: int) -> Fleet:
    """The fleet of a city model: listed sensors first, then generated ones.

    Streams are ordered air sensors first, then traffic lanes (as
    :meth:`Fleet.generate`); ``seed`` keys the values (and phases), not positions.
    """
    rows = _Rows()
    _listed(city, rows)
    _generated(city, rows)
    try:
        _unique("sensor id", rows.ids)
    except ValueError as exc:
        raise ConfigError(
            f"city {city.name!r}: {exc} (a listed id clashes with a generated one)"
        ) from exc
    kind = np.array(rows.kind, dtype=np.uint8)
    order = np.argsort(kind, kind="stable")  # air first
    lanes = np.maximum(np.array(rows.lanes, dtype=np.int64)[order], 1)
    is_trf = kind[order] == Kind.TRAFFIC
    n_rep = np.where(is_trf, lanes, 1)
    rep = np.repeat(order, n_rep)
    lane = np.arange(rep.shape[0], dtype=np.int64) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep)
    lane = np.where(np.repeat(is_trf, n_rep), lane + 1, 0)
    k = kind[rep]
    ids = [rows.ids[i] for i in order.tolist()]
    sensor_key_s = _id_keys(seed, kind[order], ids)
    sensor_key = np.repeat(sensor_key_s, n_rep)
    stream_key = mix64(sensor_key ^ (lane.astype(np.uint64) * salt(7)))
    interval_ns = (np.round(np.array(rows.interval_s)[rep] * 1000) * 1_000_000).astype(np.int64)
    steps = interval_ns // 1_000_000
    phase = (np.floor(unit_uniform(derive(sensor_key, 2)) * steps) * 1_000_000).astype(np.int64)
    index_in_kind = np.empty(len(ids), dtype=np.int64)
    sorted_kind = kind[order]
    for kk in (Kind.AIR, Kind.TRAFFIC):
        sel = np.flatnonzero(sorted_kind == kk)
        index_in_kind[sel] = np.arange(sel.shape[0])
    return Fleet(
        seed=seed,
        city=city.name,
        districts=tuple(d.name for d in city.districts),
        kind=k,
        sensor_index=np.repeat(index_in_kind, n_rep),
        lane=lane.astype(np.int64),
        model=np.array(rows.model, dtype=np.uint8)[rep],
        district_index=np.array(rows.district, dtype=np.int64)[rep],
        interval_ns=interval_ns,
        phase_ns=phase,
        lat=np.round(np.array(rows.lat)[rep], 6),
        lon=np.round(np.array(rows.lon)[rep], 6),
        sensor_id=tuple(ids[i] for i in np.repeat(np.arange(len(ids)), n_rep).tolist()),
        stream_key=stream_key,
        sensor_key=sensor_key,
        corridor=np.array(rows.corridor, dtype=np.int64)[rep],
        corridor_pos_km=np.array(rows.pos_km, dtype=np.float64)[rep],
        corridors=tuple(c.name for c in city.corridors),
    )
