"""Offline reference for end-to-end tests: what the pipeline should have stored.

Computed from the published payloads with ``json.loads`` and plain Python, not
with any of the pipeline's own code, so that a shared bug cannot hide.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["Reading", "WindowStats", "expected_readings", "expected_windows", "window_label"]

AIR_FIELDS = ("pm25", "pm10", "no2", "o3", "co", "so2", "temperature", "relativeHumidity")
TRAFFIC_FIELDS = ("intensity", "occupancy", "averageVehicleSpeed")


@dataclass(frozen=True, slots=True)
class Reading:
    kind: str
    sensor_id: str
    lane: int
    field: str
    ts_ns: int
    value: float


@dataclass(frozen=True, slots=True)
class WindowStats:
    count: int
    mean: float
    min: float
    max: float
    std: float  # sample stddev, NaN when count < 2
    first: float
    last: float


def window_label(window_ms: int) -> str:
    for unit_ms, unit in ((3_600_000, "h"), (60_000, "m"), (1000, "s")):
        if window_ms % unit_ms == 0:
            return f"{window_ms // unit_ms}{unit}"
    return f"{window_ms}ms"


def _ts_ns(value: float | int) -> int:
    # The exact instant the sensor meant (epoch seconds with a decimal fraction).
    return int(Decimal(repr(value)) * 1_000_000_000)


def expected_readings(messages: list[tuple[str, bytes]]) -> list[Reading]:
    out: list[Reading] = []
    for topic, payload in messages:
        _prefix, _city, _district, kind, sensor_id = topic.split("/")
        body = json.loads(payload)
        ts = _ts_ns(body["dateObserved"])
        lane = int(body.get("laneId", 0))
        fields = AIR_FIELDS if kind == "air" else TRAFFIC_FIELDS
        for name in fields:
            if name in body:
                out.append(Reading(kind, sensor_id, lane, name, ts, float(body[name])))
    return out


def expected_windows(
    readings: list[Reading], *, window_ms: int, grace_ms: int, idle_ms: int
) -> dict[tuple[str, str, int, int], dict[str, WindowStats]]:
    """Closed windows after all readings: key (kind, sensor_id, lane, start_ns)."""
    window_ns = window_ms * 1_000_000
    series_max: dict[tuple[str, str, int], int] = defaultdict(int)
    for r in readings:
        key = (r.kind, r.sensor_id, r.lane)
        series_max[key] = max(series_max[key], r.ts_ns)
    global_max = max(series_max.values())
    groups: dict[tuple[str, str, int, int, str], list[tuple[int, int, float]]] = defaultdict(list)
    for order, r in enumerate(readings):
        start = r.ts_ns // window_ns * window_ns
        groups[(r.kind, r.sensor_id, r.lane, start, r.field)].append((r.ts_ns, order, r.value))
    out: dict[tuple[str, str, int, int], dict[str, WindowStats]] = defaultdict(dict)
    for (kind, sensor_id, lane, start, name), items in groups.items():
        end = start + window_ns
        horizon = max(
            series_max[(kind, sensor_id, lane)] - grace_ms * 1_000_000,
            global_max - (grace_ms + idle_ms) * 1_000_000,
        )
        if end > horizon:
            continue  # still open
        values = [v for _, _, v in items]
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        first = min(items, key=lambda t: (t[0], t[1]))[2]
        last = max(items, key=lambda t: (t[0], t[1]))[2]
        out[(kind, sensor_id, lane, start)][name] = WindowStats(
            n, mean, min(values), max(values), std, first, last
        )
    return dict(out)
