"""The sensor registry: which sensors exist, where, and what they are.

Loaded from a CSV file (columns ``id, kind, district, lat, lon, model,
install_date``), a GeoJSON FeatureCollection of Points (same names as
properties), or a city file of the simulator (its listed and generated sensors
and its district outlines). Readings from sensors missing from the registry are
still shown, marked unregistered.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim._cities import city_fleet, load_city
from sim._fleet import Fleet
from urbanpulse._errors import ConfigError

__all__ = [
    "DistrictOutline",
    "SensorDirectory",
    "SensorRecord",
    "directory_of_fleet",
    "load_sensor_directory",
]

_CSV_COLUMNS = ("id", "kind", "district", "lat", "lon")


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorRecord:
    sensor_id: str
    kind: str
    district: str
    lat: float
    lon: float
    model: str = ""
    install_date: dt.date | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.sensor_id,
            "kind": self.kind,
            "district": self.district,
            "lat": self.lat,
            "lon": self.lon,
            "model": self.model,
            "install_date": self.install_date.isoformat() if self.install_date else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DistrictOutline:
    name: str
    #: Polygon vertices ``(lat, lon)``, closed implicitly.
    outline: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class SensorDirectory:
    """Registered sensors by id, and district outlines by name (may be empty)."""

    sensors: Mapping[str, SensorRecord]
    districts: Mapping[str, DistrictOutline]

    @classmethod
    def empty(cls) -> SensorDirectory:
        return cls({}, {})

    @classmethod
    def of(
        cls, sensors: Iterable[SensorRecord], districts: Iterable[DistrictOutline] = ()
    ) -> SensorDirectory:
        by_id: dict[str, SensorRecord] = {}
        for s in sensors:
            if s.sensor_id in by_id:
                raise ConfigError(f"sensor registry: duplicate sensor id {s.sensor_id!r}")
            by_id[s.sensor_id] = s
        return cls(by_id, {d.name: d for d in districts})

    def merged(self, other: SensorDirectory) -> SensorDirectory:
        """This directory with ``other``'s sensors and outlines added (other wins)."""
        return SensorDirectory(
            {**self.sensors, **other.sensors}, {**self.districts, **other.districts}
        )


def _record(row: Mapping[str, Any], where: str) -> SensorRecord:
    try:
        sensor_id = str(row["id"]).strip()
        kind = str(row["kind"]).strip()
        lat, lon = float(row["lat"]), float(row["lon"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"sensor registry {where}: {exc!r}") from exc
    if not sensor_id:
        raise ConfigError(f"sensor registry {where}: empty id")
    if kind not in ("air", "traffic"):
        raise ConfigError(f"sensor registry {where}: kind must be air or traffic, got {kind!r}")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ConfigError(f"sensor registry {where}: coordinates out of range ({lat}, {lon})")
    raw_date = str(row.get("install_date") or "").strip()
    try:
        installed = dt.date.fromisoformat(raw_date) if raw_date else None
    except ValueError as exc:
        raise ConfigError(f"sensor registry {where}: install_date {raw_date!r}") from exc
    return SensorRecord(
        sensor_id=sensor_id,
        kind=kind,
        district=str(row.get("district") or "").strip(),
        lat=lat,
        lon=lon,
        model=str(row.get("model") or "").strip(),
        install_date=installed,
    )


def _load_csv(path: Path, text: str) -> SensorDirectory:
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ConfigError(f"sensor registry {path}: missing columns {missing}")
    return SensorDirectory.of(_record(row, f"{path}:{n}") for n, row in enumerate(reader, start=2))


def _load_geojson(path: Path, text: str) -> SensorDirectory:
    try:
        doc = json.loads(text)
        features = doc["features"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"sensor registry {path}: not a GeoJSON FeatureCollection") from exc
    records: list[SensorRecord] = []
    outlines: list[DistrictOutline] = []
    for n, feat in enumerate(features):
        where = f"{path} feature {n}"
        geom = feat.get("geometry") or {}
        props = dict(feat.get("properties") or {})
        if geom.get("type") == "Point":
            lon, lat = geom["coordinates"][:2]
            records.append(_record({**props, "lat": lat, "lon": lon}, where))
        elif geom.get("type") == "Polygon" and "district" in props:
            ring = geom["coordinates"][0]
            outlines.append(
                DistrictOutline(
                    name=str(props["district"]),
                    outline=tuple((float(p[1]), float(p[0])) for p in ring),
                )
            )
        else:
            raise ConfigError(f"{where}: expected a Point sensor or a Polygon with 'district'")
    return SensorDirectory.of(records, outlines)


def directory_of_fleet(fleet: Fleet) -> SensorDirectory:
    """The simulator fleet's sensors as a registry (no outlines: built-in cities have none)."""
    return SensorDirectory.of(_fleet_records(fleet))


def _fleet_records(fleet: Fleet) -> list[SensorRecord]:
    return [
        SensorRecord(
            sensor_id=s.sensor_id,
            kind=s.kind.label,
            district=s.district,
            lat=s.lat,
            lon=s.lon,
            model=s.model,
        )
        for s in fleet.sensors()
    ]


def _load_city(path: Path) -> SensorDirectory:
    city = load_city(path)
    records = _fleet_records(city_fleet(city, seed=0))
    outlines = [
        DistrictOutline(name=d.name, outline=tuple((p[0], p[1]) for p in d.outline))
        for d in city.districts
    ]
    return SensorDirectory.of(records, outlines)


def load_sensor_directory(path: str | Path) -> SensorDirectory:
    """A registry from ``.csv``, ``.geojson``/``.json`` (GeoJSON) or a ``.toml`` city file.

    A ``.json`` file holding a FeatureCollection is GeoJSON; any other ``.json``
    is read as a simulator city file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read sensor registry {p}: {exc}") from exc
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p, text)
    if suffix == ".geojson" or (suffix == ".json" and '"FeatureCollection"' in text):
        return _load_geojson(p, text)
    if suffix in (".toml", ".json"):
        return _load_city(p)
    raise ConfigError(f"sensor registry {p}: expected .csv, .geojson or a city .toml/.json")
