"""Line protocol for official indices (``aq_index``), traffic level of service
(``traffic_los``) and detector events (``events``).

Both are small next to raw readings (one row per sensor per evaluation, one
line per event), so a plain loop over rows is fine here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from outputs._lineprotocol import EncodedLines, escape_string_field, escape_tag, tag_set
from processors._indices import (
    AQI_CATEGORIES,
    AQI_POLLUTANTS,
    ISPU_CATEGORIES,
    LOS_LETTERS,
    IndexRows,
)
from urbanpulse._batch import SeriesRegistry
from urbanpulse._events import Event

__all__ = ["encode_events", "encode_index_rows", "encode_los_rows"]


def _num(name: str, value: float) -> str | None:
    return f"{name}={float(value)!r}" if math.isfinite(value) else None


def encode_index_rows(
    rows: IndexRows,
    *,
    registry: SeriesRegistry,
    district_keys: Sequence[tuple[str, str]],
    ispu_pollutants: Sequence[str],
) -> EncodedLines:
    """``aq_index`` points: per sensor (tags city, district, sensor_id, scope=sensor)
    and per district (scope=district), fields ISPU and US AQI with categories
    (official Indonesian name for ISPU), dominant pollutant and sub-indices."""
    lines: list[str] = []
    for i in range(len(rows)):
        sid = int(rows.sid[i])
        if sid >= 0:
            key = registry.key(sid)
            tags = tag_set(
                [("city", key.city), ("district", key.district), ("sensor_id", key.sensor_id),
                 ("scope", "sensor")]
            )  # fmt: skip
        else:
            city, district = district_keys[int(rows.district[i])]
            tags = tag_set([("city", city), ("district", district), ("scope", "district")])
        fields: list[str | None] = []
        ic, ac = int(rows.ispu_category[i]), int(rows.aqi_category[i])
        if math.isfinite(rows.ispu[i]):
            fields.append(f"ispu={round(float(rows.ispu[i]))}i")
            if ic >= 0:
                fields.append(f"ispu_category={escape_string_field(ISPU_CATEGORIES[ic].name)}")
            dom = int(rows.ispu_dominant[i])
            if dom >= 0:
                fields.append(f'ispu_dominant="{ispu_pollutants[dom]}"')
        if math.isfinite(rows.aqi[i]):
            fields.append(f"aqi={round(float(rows.aqi[i]))}i")
            if ac >= 0:
                fields.append(f"aqi_category={escape_string_field(AQI_CATEGORIES[ac].name)}")
            dom = int(rows.aqi_dominant[i])
            if dom >= 0:
                fields.append(f'aqi_dominant="{AQI_POLLUTANTS[dom]}"')
        if sid < 0:
            fields.append(f"n_sensors={int(rows.n_sensors[i])}i")
            fields.append(_num("ispu_mean", rows.ispu_mean[i]))
            fields.append(_num("aqi_mean", rows.aqi_mean[i]))
        for j, name in enumerate(ispu_pollutants):
            fields.append(_num(f"ispu_{name}", rows.ispu_sub[i, j]))
        for j, name in enumerate(AQI_POLLUTANTS):
            fields.append(_num(f"aqi_{name}", rows.aqi_sub[i, j]))
        present = [f for f in fields if f]
        if present:
            lines.append(f"aq_index{tags} {','.join(present)} {int(rows.ts_ns[i])}")
    return EncodedLines("\n".join(lines).encode(), len(lines))


def encode_los_rows(
    *,
    sid: NDArray[np.int64],
    ts_ns: NDArray[np.int64],
    los: NDArray[np.uint8],
    smooth_kmh: NDArray[np.float64],
    free_flow_kmh: NDArray[np.float64],
    registry: SeriesRegistry,
) -> EncodedLines:
    """``traffic_los`` points, one per lane with a known class: tags city, district,
    sensor_id, lane; fields ``los`` (A-F), ``los_class`` (0-5), ``speed_ratio``
    (smoothed speed / free flow), ``smoothed_speed`` and ``free_flow_speed`` (km/h)."""
    lines: list[str] = []
    for i in range(sid.shape[0]):
        c = int(los[i])
        if c >= len(LOS_LETTERS) or not math.isfinite(free_flow_kmh[i]):
            continue
        key = registry.key(int(sid[i]))
        tags = tag_set(
            [("city", key.city), ("district", key.district), ("sensor_id", key.sensor_id),
             ("lane", str(key.lane))]
        )  # fmt: skip
        fields = [
            f'los="{LOS_LETTERS[c]}"',
            f"los_class={c}i",
            _num("speed_ratio", float(smooth_kmh[i] / free_flow_kmh[i])),
            _num("smoothed_speed", float(smooth_kmh[i])),
            _num("free_flow_speed", float(free_flow_kmh[i])),
        ]
        present = [f for f in fields if f]
        lines.append(f"traffic_los{tags} {','.join(present)} {int(ts_ns[i])}")
    return EncodedLines("\n".join(lines).encode(), len(lines))


def encode_events(events: Sequence[Event]) -> EncodedLines:
    """``events`` points, one per event at its event time; ``state`` is a tag so that
    a start and its end at the same time do not overwrite each other."""
    lines = []
    for e in events:
        tags = tag_set(
            [("city", e.city), ("district", e.district), ("sensor_id", e.sensor_id),
             ("kind", e.kind), ("detector", e.detector), ("metric", e.metric),
             ("severity", e.severity.label), ("state", e.state),
             ("lane", str(e.lane) if e.lane else "")]
        )  # fmt: skip
        fields = [
            f"message={escape_string_field(e.message)}",
            f"detected_ns={e.detected_ns}i",
        ]
        for name, value in (("value", e.value), ("score", e.score)):
            f = _num(name, value)
            if f:
                fields.append(f)
        for k, v in sorted(e.labels.items()):
            fields.append(f"label_{escape_tag(k)}={escape_string_field(v)}")
        lines.append(f"events{tags} {','.join(fields)} {e.event_ns}")
    return EncodedLines("\n".join(lines).encode(), len(lines))
