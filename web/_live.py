"""Live state for the dashboard: last values per sensor, indices, open conditions.

``LiveState.observe(batch)`` folds a processed ``ReadingBatch`` into
struct-of-arrays state indexed by a dense sensor row (one row per sensor id;
the lanes of a traffic station share a row). A series is mapped to its row once,
when first seen; the per-reading work is numpy only. ``take_dirty()`` returns
the rows changed since the last call, so the server-sent-event stream sends each
changed sensor once per tick however many readings arrived.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors._indices import (
    AQI_CATEGORIES,
    ISPU_CATEGORIES,
    LOS_LETTERS,
    IndexTracker,
    level_of_service,
)
from urbanpulse._batch import ReadingBatch, SeriesRegistry
from urbanpulse._clock import Clock
from urbanpulse._events import Event, Severity
from urbanpulse._schema import METRIC_INFO, N_METRICS, Kind, Metric
from web._registry import SensorDirectory

__all__ = ["LiveOptions", "LiveState", "OpenConditions", "event_json"]

_I64_MIN = np.iinfo(np.int64).min
_FIELDS = tuple(METRIC_INFO[Metric(m)].field for m in range(N_METRICS))


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveOptions:
    #: A sensor not heard from for this long is shown dead.
    dead_after_s: float = 300.0
    #: Free-flow speed for the traffic level of service (no per-road value is known).
    free_flow_kmh: float = 50.0
    #: Events kept for the feed.
    feed_size: int = 200


def _category(cats: Any, code: int) -> dict[str, str] | None:
    if code < 0:
        return None
    c = cats[code]
    return {"name": c.name, "name_en": c.name_en, "colour": c.colour}


class OpenConditions:
    """Conditions opened by events and not yet cleared, plus the recent-event feed.

    ``start`` opens a condition, ``end`` clears it; an index ``change`` opens (or
    updates) one when its severity is warning or worse and clears it otherwise.
    The key is (detector, city, district, sensor id, lane, metric).
    """

    def __init__(self, feed_size: int) -> None:
        self.open: dict[tuple[str, str, str, str, int, str], Event] = {}
        self.feed: deque[Event] = deque(maxlen=feed_size)

    def apply(self, events: Iterable[Event]) -> None:
        for e in events:
            self.feed.append(e)
            key = (e.detector, e.city, e.district, e.sensor_id, e.lane, e.metric)
            opening = e.state == "start" or (e.state == "change" and e.severity >= Severity.WARNING)
            if opening:
                self.open[key] = e
            else:
                self.open.pop(key, None)

    def by_district(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for e in self.open.values():
            k = (e.city, e.district)
            counts[k] = counts.get(k, 0) + 1
        return counts


def event_json(e: Event) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return x if np.isfinite(x) else None

    return {
        "detector": e.detector,
        "state": e.state,
        "severity": e.severity.label,
        "kind": e.kind,
        "city": e.city,
        "district": e.district,
        "sensor_id": e.sensor_id,
        "lane": e.lane,
        "metric": e.metric,
        "value": num(e.value),
        "score": num(e.score),
        "event_ns": e.event_ns,
        "detected_ns": e.detected_ns,
        "message": e.message,
        "labels": dict(e.labels),
    }


class LiveState:
    def __init__(
        self,
        options: LiveOptions,
        *,
        series: SeriesRegistry,
        directory: SensorDirectory,
        clock: Clock,
    ) -> None:
        self.options = options
        self.series = series
        self.directory = directory
        self.clock = clock
        self.conditions = OpenConditions(options.feed_size)
        self.ids: list[str] = []
        self.city: list[str] = []
        self.district: list[str] = []
        self.kind: list[str] = []
        self._row_of: dict[str, int] = {}
        self._sid_row: NDArray[np.int32] = np.empty(0, np.int32)
        n = 0
        self.values = np.full((n, N_METRICS), np.nan)
        self.value_ts = np.full((n, N_METRICS), _I64_MIN, np.int64)
        self.last_ts_ns = np.full(n, _I64_MIN, np.int64)
        self.last_seen_ns = np.full(n, _I64_MIN, np.int64)
        self.air_sid = np.full(n, -1, np.int64)
        self.ispu = np.full(n, np.nan)
        self.ispu_cat = np.full(n, -1, np.int8)
        self.ispu_dom = np.full(n, -1, np.int8)
        self.aqi = np.full(n, np.nan)
        self.aqi_cat = np.full(n, -1, np.int8)
        self.dirty = np.zeros(n, np.bool_)
        self.ispu_pollutants: tuple[str, ...] = ()
        self._was_dead: NDArray[np.bool_] = np.empty(0, np.bool_)
        for rec in directory.sensors.values():
            self._row(rec.sensor_id, "", rec.district, rec.kind)

    def __len__(self) -> int:
        return len(self.ids)

    # -- rows

    def _grow(self, n: int) -> None:
        have = self.values.shape[0]
        if n <= have:
            return
        n = max(n, have + have // 2, 64)

        def grow(a: NDArray[Any], fill: Any) -> NDArray[Any]:
            out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
            out[:have] = a
            return out

        self.values = grow(self.values, np.nan)
        self.value_ts = grow(self.value_ts, _I64_MIN)
        self.last_ts_ns = grow(self.last_ts_ns, _I64_MIN)
        self.last_seen_ns = grow(self.last_seen_ns, _I64_MIN)
        self.air_sid = grow(self.air_sid, -1)
        self.ispu = grow(self.ispu, np.nan)
        self.ispu_cat = grow(self.ispu_cat, -1)
        self.ispu_dom = grow(self.ispu_dom, -1)
        self.aqi = grow(self.aqi, np.nan)
        self.aqi_cat = grow(self.aqi_cat, -1)
        self.dirty = grow(self.dirty, False)

    def _row(self, sensor_id: str, city: str, district: str, kind: str) -> int:
        row = self._row_of.get(sensor_id)
        if row is None:
            row = len(self.ids)
            self._row_of[sensor_id] = row
            self.ids.append(sensor_id)
            self.city.append(city)
            self.district.append(district)
            self.kind.append(kind)
            self._grow(row + 1)
        return row

    def row_of(self, sensor_id: str) -> int | None:
        return self._row_of.get(sensor_id)

    def _map_series(self) -> None:
        """Rows of series the registry gained since the last call (once per series)."""
        have, n = self._sid_row.shape[0], len(self.series)
        if n <= have:
            return
        grown = np.empty(n, np.int32)
        grown[:have] = self._sid_row
        for sid in range(have, n):
            key = self.series.key(sid)
            row = self._row(key.sensor_id, key.city, key.district, key.kind.label)
            # the topic is the truth for where a reading came from
            self.city[row] = key.city
            if not self.district[row]:
                self.district[row] = key.district
            if key.kind == Kind.AIR:
                self.air_sid[row] = sid
            grown[sid] = row
        self._sid_row = grown

    # -- updates

    def observe(self, batch: ReadingBatch) -> None:
        """Fold a batch in: newest value per (sensor, metric) by event time."""
        if not len(batch):
            return
        self._map_series()
        rows = self._sid_row[batch.sid].astype(np.int64)
        key = rows * N_METRICS + batch.metric.astype(np.int64)
        order = np.lexsort((batch.ts_ns, key))
        k = key[order]
        last = np.ones(k.shape[0], np.bool_)
        last[:-1] = k[1:] != k[:-1]
        pick = order[last]
        r, m = rows[pick], batch.metric[pick].astype(np.int64)
        ts = batch.ts_ns[pick]
        newer = ts >= self.value_ts[r, m]
        r, m, ts = r[newer], m[newer], ts[newer]
        self.values[r, m] = batch.value[pick][newer]
        self.value_ts[r, m] = ts
        np.maximum.at(self.last_ts_ns, r, ts)
        touched = np.unique(rows)
        self.last_seen_ns[touched] = self.clock.now_ns()
        self.dirty[touched] = True

    def refresh_indices(self, tracker: IndexTracker, rows: NDArray[np.int64]) -> None:
        """ISPU and AQI of the air sensors among ``rows`` (``IndexTracker.compute``)."""
        self.ispu_pollutants = tracker.ispu_pollutants
        rows = rows[self.air_sid[rows] >= 0]
        if not rows.shape[0]:
            return
        r_ispu, r_aqi = tracker.compute(self.air_sid[rows])
        self.ispu[rows], self.ispu_cat[rows] = r_ispu.index, r_ispu.category
        self.ispu_dom[rows] = r_ispu.dominant
        self.aqi[rows], self.aqi_cat[rows] = r_aqi.index, r_aqi.category

    def take_dirty(self) -> NDArray[np.int64]:
        """Rows changed since the last call: new readings, or gone dead / come back."""
        n = len(self.ids)
        dead = self.dead()
        was = np.zeros(n, np.bool_)
        m = min(n, self._was_dead.shape[0])
        was[:m] = self._was_dead[:m]
        rows = np.flatnonzero(self.dirty[:n] | (dead != was)).astype(np.int64)
        self.dirty[rows] = False
        self._was_dead = dead
        return rows

    # -- views

    def dead(self) -> NDArray[np.bool_]:
        n = len(self.ids)
        limit = self.clock.now_ns() - int(self.options.dead_after_s * 1e9)
        seen = self.last_seen_ns[:n]
        out: NDArray[np.bool_] = (seen == _I64_MIN) | (seen < limit)
        return out

    def los(self) -> NDArray[np.int8]:
        n = len(self.ids)
        speed = self.values[:n, int(Metric.AVERAGE_VEHICLE_SPEED)]
        return level_of_service(speed, self.options.free_flow_kmh)

    def static_columns(self, start: int, stop: int | None = None) -> dict[str, list[Any]]:
        """What rarely changes (identity, place, registry data) of rows ``start:stop``."""
        stop = len(self.ids) if stop is None else stop
        recs = [self.directory.sensors.get(i) for i in self.ids[start:stop]]
        return {
            "id": self.ids[start:stop],
            "kind": self.kind[start:stop],
            "city": self.city[start:stop],
            "district": self.district[start:stop],
            "registered": [r is not None for r in recs],
            "lat": [r.lat if r else None for r in recs],
            "lon": [r.lon if r else None for r in recs],
            "model": [r.model if r else "" for r in recs],
            "install_date": [
                r.install_date.isoformat() if r and r.install_date else None for r in recs
            ],
        }

    def live_columns(self, rows: NDArray[np.int64]) -> dict[str, Any]:
        """What changes, of ``rows``, as columns (NaN and missing codes are null/-1).

        Columnar so that 10,000 changed sensors cost list conversions, not 10,000
        Python dicts; the page turns the columns back into per-sensor objects.
        """
        vals = self.values[rows]
        present = np.isfinite(vals).any(axis=0)
        ts = self.last_ts_ns[rows]

        def floats(a: NDArray[np.float64]) -> list[float | None]:
            obj = a.astype(object)
            obj[~np.isfinite(a)] = None
            out: list[float | None] = obj.tolist()
            return out

        return {
            "id": [self.ids[i] for i in rows.tolist()],
            "dead": self.dead()[rows].tolist(),
            "last_ts_ns": np.where(ts == _I64_MIN, 0, ts).tolist(),
            "ispu": floats(self.ispu[rows]),
            "ispu_cat": self.ispu_cat[rows].tolist(),
            "ispu_dom": self.ispu_dom[rows].tolist(),
            "aqi": floats(self.aqi[rows]),
            "aqi_cat": self.aqi_cat[rows].tolist(),
            "los": self.los()[rows].tolist(),
            "values": {
                _FIELDS[m]: floats(vals[:, m]) for m in range(N_METRICS) if bool(present[m])
            },
        }

    def sensor_rows(self, rows: Iterable[int] | None = None) -> list[dict[str, Any]]:
        n = len(self.ids)
        idx = range(n) if rows is None else rows
        dead, los = self.dead(), self.los()
        out: list[dict[str, Any]] = []
        for i in idx:
            out.append(self._sensor_json(int(i), bool(dead[i]), int(los[i])))
        return out

    def _sensor_json(self, i: int, dead: bool, los: int) -> dict[str, Any]:
        rec = self.directory.sensors.get(self.ids[i])
        vals = self.values[i]
        values = {_FIELDS[m]: float(vals[m]) for m in range(N_METRICS) if np.isfinite(vals[m])}
        ispu_dom = int(self.ispu_dom[i])
        last_ts = int(self.last_ts_ns[i])
        return {
            "id": self.ids[i],
            "kind": self.kind[i],
            "city": self.city[i],
            "district": self.district[i],
            "registered": rec is not None,
            "lat": rec.lat if rec else None,
            "lon": rec.lon if rec else None,
            "model": rec.model if rec else "",
            "install_date": rec.as_json()["install_date"] if rec else None,
            "values": values,
            "last_ts_ns": last_ts if last_ts != _I64_MIN else None,
            "dead": dead,
            "ispu": float(self.ispu[i]) if np.isfinite(self.ispu[i]) else None,
            "ispu_category": _category(ISPU_CATEGORIES, int(self.ispu_cat[i])),
            "ispu_dominant": self.ispu_pollutants[ispu_dom] if ispu_dom >= 0 else None,
            "aqi": float(self.aqi[i]) if np.isfinite(self.aqi[i]) else None,
            "aqi_category": _category(AQI_CATEGORIES, int(self.aqi_cat[i])),
            "los": LOS_LETTERS[los] if los >= 0 else None,
        }

    def district_rows(
        self, alert_counts: dict[tuple[str, str], int] | None = None
    ) -> list[dict[str, Any]]:
        """Per (city, district): max ISPU / AQI over its live air sensors (the
        dominant pollutant of the sensor with the max), traffic congestion as the
        share of live traffic stations at LOS E or F, open alerts (``alert_counts``
        by (city, district), else the open conditions of the event feed)."""
        n = len(self.ids)
        alerts = self.conditions.by_district() if alert_counts is None else alert_counts
        names = sorted(
            {(self.city[i], self.district[i]) for i in range(n)}
            | {("", d) for d in self.directory.districts}
            | {k for k, v in alerts.items() if v and k[1]}
        )
        merged: dict[str, tuple[str, str]] = {}
        for c, d in names:  # a district known from both the registry and topics
            if c or d not in merged:
                merged[d] = (c, d)
        keys = sorted(merged.values())
        index = {d: j for j, (_, d) in enumerate(keys)}
        nd = len(keys)
        did = np.array([index[self.district[i]] for i in range(n)], np.int64)
        live = ~self.dead()
        ispu = np.where(live, self.ispu[:n], np.nan)
        aqi = np.where(live, self.aqi[:n], np.nan)
        d_ispu = np.full(nd, np.nan)
        np.fmax.at(d_ispu, did, ispu)
        d_aqi = np.full(nd, np.nan)
        np.fmax.at(d_aqi, did, aqi)
        los = self.los()
        traffic = live & (los >= 0)
        n_traffic = np.bincount(did[traffic], minlength=nd)
        n_jam = np.bincount(did[traffic & (los >= 4)], minlength=nd)
        n_live = np.bincount(did[live], minlength=nd)
        n_all = np.bincount(did, minlength=nd)
        out: list[dict[str, Any]] = []
        for j, (city, name) in enumerate(keys):
            members = np.flatnonzero((did == j) & np.isfinite(ispu))
            dom = None
            cat = None
            if members.shape[0]:
                top = int(members[np.argmax(ispu[members])])
                code = int(self.ispu_dom[top])
                dom = self.ispu_pollutants[code] if code >= 0 else None
                cat = _category(ISPU_CATEGORIES, int(self.ispu_cat[top]))
            a = d_aqi[j]
            aqi_members = np.flatnonzero((did == j) & np.isfinite(aqi))
            aqi_cat = None
            if aqi_members.shape[0]:
                top_a = int(aqi_members[np.argmax(aqi[aqi_members])])
                aqi_cat = _category(AQI_CATEGORIES, int(self.aqi_cat[top_a]))
            out.append(
                {
                    "city": city,
                    "district": name,
                    "sensors": int(n_all[j]),
                    "live_sensors": int(n_live[j]),
                    "ispu": float(d_ispu[j]) if np.isfinite(d_ispu[j]) else None,
                    "ispu_category": cat,
                    "ispu_dominant": dom,
                    "aqi": float(a) if np.isfinite(a) else None,
                    "aqi_category": aqi_cat,
                    "congestion": (float(n_jam[j] / n_traffic[j]) if n_traffic[j] else None),
                    "traffic_stations": int(n_traffic[j]),
                    "open_alerts": sum(
                        n
                        for (a_city, a_name), n in alerts.items()
                        if a_name == name and (a_city == city or "" in (a_city, city))
                    ),
                }
            )
        return out
