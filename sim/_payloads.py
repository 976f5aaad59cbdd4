"""Native UrbanPulse payloads, built in bulk.

Numbers are rounded in numpy and turned into text by table lookup (a cached
table of the strings ``"0.0" ... "6553.5"`` per resolution), then assembled
with one f-string per message and encoded in one go; out-of-table values fall
back to ``format``. Measured here: ~2.4x faster than ``"%.1f" %`` per field;
``json.dumps`` per message alone (no values computed) manages ~160k msg/s, the
whole simulator 400k-700k msg/s.

Air payload (fields a low-cost node lacks are omitted)::

    {"dateObserved":1763892000.123,"pm25":17.2,"pm10":24.4,"no2":30.1,"o3":40.2,
     "co":600.0,"so2":10.0,"temperature":29.50,"relativeHumidity":81.0}

Traffic payload::

    {"dateObserved":1763892000.123,"laneId":1,"intensity":12,"occupancy":0.120,
     "averageVehicleSpeed":43.5}

``dateObserved`` is epoch seconds with millisecond precision (``"epoch_s"``) or
an ISO 8601 UTC string ``"2025-11-23T10:00:00.123Z"`` (``"iso"``); the
timestamp is truncated to the millisecond.
"""

from __future__ import annotations

import functools
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from sim._values import AirColumns, TrafficColumns

__all__ = [
    "TimestampFormat",
    "encode_air",
    "encode_traffic",
    "format_fixed",
    "format_timestamps",
]

TimestampFormat = Literal["epoch_s", "iso"]

_TABLE_SIZE: Final = 65_536


@functools.cache
def _table(decimals: int) -> NDArray[np.object_]:
    scale = 10**decimals
    if decimals == 0:
        text = [str(i) for i in range(_TABLE_SIZE)]
    else:
        text = [f"{i // scale}.{i % scale:0{decimals}d}" for i in range(_TABLE_SIZE)]
    return np.array(text, dtype=object)


def format_fixed(values: NDArray[np.float64] | NDArray[np.int64], decimals: int) -> list[str]:
    """Each value as a fixed-point JSON number with ``decimals`` decimals."""
    if values.dtype.kind in "iu" and decimals == 0:
        q = values.astype(np.int64)
    else:
        q = np.rint(values * float(10**decimals)).astype(np.int64)
    inside = (q >= 0) & (q < _TABLE_SIZE)
    if bool(inside.all()):
        out: list[str] = _table(decimals)[q].tolist()
        return out
    out = _table(decimals)[np.where(inside, q, 0)].tolist()
    for i in np.flatnonzero(~inside).tolist():
        v = float(values[i])
        if not np.isfinite(v):
            raise ValueError(f"cannot encode non-finite value {v!r}")
        text = f"{v:.{decimals}f}"
        out[i] = "0" if decimals == 0 and text == "-0" else text
    return out


def format_timestamps(ts_ns: NDArray[np.int64], ts_format: TimestampFormat) -> list[str]:
    """``dateObserved`` JSON values (already quoted for ``"iso"``), truncated to ms."""
    ms = ts_ns // 1_000_000
    if ts_format == "epoch_s":
        frac = _table_ms()[ms % 1000].tolist()
        return [f"{s}.{f}" for s, f in zip((ms // 1000).tolist(), frac, strict=True)]
    if ts_format == "iso":
        text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms").tolist()
        return [f'"{t}Z"' for t in text]
    raise ValueError(f"unknown timestamp format {ts_format!r} (expected 'epoch_s' or 'iso')")


@functools.cache
def _table_ms() -> NDArray[np.object_]:
    return np.array([f"{i:03d}" for i in range(1000)], dtype=object)


def _encode_lines(lines: list[str]) -> list[bytes]:
    # One encode for the whole batch, then split: faster than encoding each.
    if not lines:
        return []
    return "\n".join(lines).encode("ascii").split(b"\n")


def encode_air(
    ts_ns: NDArray[np.int64],
    values: AirColumns,
    *,
    full: NDArray[np.bool_],
    ts_format: TimestampFormat = "epoch_s",
) -> list[bytes]:
    """Payloads of air messages; ``full`` rows carry all gases, the others PM + T/RH only."""
    n = ts_ns.shape[0]
    full_idx = np.flatnonzero(full)
    if full_idx.shape[0] == n:
        return _encode_lines(_air_lines(ts_ns, values, None, ts_format, gases=True))
    if full_idx.shape[0] == 0:
        return _encode_lines(_air_lines(ts_ns, values, None, ts_format, gases=False))
    lines = np.empty(n, dtype=object)
    part_idx = np.flatnonzero(~full)
    lines[full_idx] = _objects(_air_lines(ts_ns, values, full_idx, ts_format, gases=True))
    lines[part_idx] = _objects(_air_lines(ts_ns, values, part_idx, ts_format, gases=False))
    return _encode_lines(lines.tolist())


def _objects(items: list[str]) -> NDArray[np.object_]:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _air_lines(
    ts_ns: NDArray[np.int64],
    values: AirColumns,
    idx: NDArray[np.intp] | None,
    ts_format: TimestampFormat,
    *,
    gases: bool,
) -> list[str]:
    def col(c: NDArray[np.float64], decimals: int) -> list[str]:
        return format_fixed(c if idx is None else c[idx], decimals)

    ts = format_timestamps(ts_ns if idx is None else ts_ns[idx], ts_format)
    pm25 = col(values.pm25, 1)
    pm10 = col(values.pm10, 1)
    temp = col(values.temperature, 2)
    rh = col(values.relative_humidity, 1)
    if not gases:
        return [
            f'{{"dateObserved":{t},"pm25":{a},"pm10":{b},"temperature":{c},"relativeHumidity":{d}}}'
            for t, a, b, c, d in zip(ts, pm25, pm10, temp, rh, strict=True)
        ]
    no2 = col(values.no2, 1)
    o3 = col(values.o3, 1)
    co = col(values.co, 1)
    so2 = col(values.so2, 1)
    return [
        f'{{"dateObserved":{t},"pm25":{a},"pm10":{b},"no2":{e},"o3":{f},"co":{g},"so2":{h},'
        f'"temperature":{c},"relativeHumidity":{d}}}'
        for t, a, b, e, f, g, h, c, d in zip(
            ts, pm25, pm10, no2, o3, co, so2, temp, rh, strict=True
        )
    ]


def encode_traffic(
    ts_ns: NDArray[np.int64],
    values: TrafficColumns,
    *,
    lane: NDArray[np.int64],
    ts_format: TimestampFormat = "epoch_s",
) -> list[bytes]:
    """Payloads of traffic lane messages."""
    ts = format_timestamps(ts_ns, ts_format)
    lanes = format_fixed(lane, 0)
    intensity = format_fixed(values.intensity, 0)
    occ = format_fixed(values.occupancy, 3)
    speed = format_fixed(values.average_vehicle_speed, 1)
    return _encode_lines(
        [
            f'{{"dateObserved":{t},"laneId":{ln},"intensity":{i},"occupancy":{o},'
            f'"averageVehicleSpeed":{v}}}'
            for t, ln, i, o, v in zip(ts, lanes, intensity, occ, speed, strict=True)
        ]
    )
