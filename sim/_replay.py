"""Replay recorded readings (CSV or InfluxDB line protocol) as native payloads, paced.

A :class:`Recording` is readings as columns (one row per message, sorted by
event time, stable for ties); a :class:`Replayer` turns it into ``(topic,
payload)`` messages with the :class:`~sim.MessageSource` interface, so
:func:`run_replay` publishes them through the same pacing loop as
``run_simulation`` (``speed`` x event time, bounded catch-up).

CSV: a header row; columns ``sensor_id``, ``kind`` (air/traffic), ``district``,
a time column, optional ``city`` and ``lane`` (or ``laneId``), and metric
columns named by their FIWARE field (``pm25``, ``relativeHumidity``,
``intensity``, ...). Time: ``ts_ns`` (integer ns), or ``ts`` / ``dateObserved``
holding ISO 8601 with an offset (or ``Z``) or epoch seconds. Empty cells are
missing values; other columns are ignored.

Line protocol: as this project writes raw readings, measurement ``air`` or
``traffic``, tags ``city``, ``district``, ``sensor_id`` (and ``lane``),
fields named by metric (``flags`` and unknown fields are ignored), a ns
timestamp. Other measurements (the ``air_1m`` aggregates, ...) are skipped
and counted.

Payloads carry ``dateObserved`` as epoch seconds with milliseconds (or ISO,
``ts_format="iso"``): sub-millisecond parts of recorded times are truncated,
as in the simulator. Values are written with ``repr`` (exact round trip);
``intensity`` and ``laneId`` as integers when integral.
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from sim._payloads import TimestampFormat, format_timestamps
from sim._runner import Message, Publisher, SimProgress, SimStats, SleepFn, pace
from sim._scenario import aware_ns
from urbanpulse._batch import SeriesKey
from urbanpulse._clock import Clock
from urbanpulse._errors import ConfigError
from urbanpulse._schema import METRIC_BY_FIELD, METRIC_INFO, N_METRICS, Kind, Metric

__all__ = ["Recording", "Replayer", "read_csv", "read_line_protocol", "run_replay"]

_INT_FIELDS: Final = frozenset({Metric.INTENSITY})


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """Recorded readings: one row per message, sorted by ``ts_ns`` (stable)."""

    series: tuple[SeriesKey, ...]
    #: Index into ``series`` per row.
    sid: NDArray[np.int64]
    ts_ns: NDArray[np.int64]
    #: ``(rows, N_METRICS)``, NaN where the message had no such field.
    values: NDArray[np.float64]
    #: Lines or rows skipped (other measurements, comments).
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def from_rows(
        cls,
        keys: list[SeriesKey],
        ts_ns: list[int],
        values: list[list[float]],
        skipped: int = 0,
    ) -> Recording:
        index: dict[SeriesKey, int] = {}
        sid = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
        ts = np.array(ts_ns, dtype=np.int64)
        vals = np.array(values, dtype=np.float64).reshape(len(keys), N_METRICS)
        order = np.argsort(ts, kind="stable")
        return cls(
            series=tuple(index),
            sid=sid[order],
            ts_ns=ts[order],
            values=vals[order],
            skipped=skipped,
        )


def _parse_time(text: str, where: str) -> int:
    t = text.strip()
    try:
        seconds = Decimal(t)  # exact: "1763964001.6" is 1763964001600000000 ns
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite():
            raise ConfigError(f"{where}: time {text!r} is not finite")
        return int((seconds * 1_000_000_000).to_integral_value(rounding=ROUND_HALF_EVEN))
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot read time {text!r}") from exc
    if dt.tzinfo is None:
        raise ConfigError(f"{where}: time {text!r} has no UTC offset")
    return aware_ns(dt)


def _key(city: str, district: str, kind: str, sensor_id: str, lane: int, where: str) -> SeriesKey:
    for name, part in (("city", city), ("district", district), ("sensor_id", sensor_id)):
        if not part or any(c in part for c in "/+#") or part.startswith("_"):
            raise ConfigError(f"{where}: {name} {part!r} cannot be a topic segment")
    try:
        k = Kind.parse(kind)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if lane < 0 or (lane and k is not Kind.TRAFFIC):
        raise ConfigError(f"{where}: lane {lane} is only for traffic sensors (>= 1)")
    return SeriesKey(city=city, district=district, kind=k, sensor_id=sensor_id, lane=lane)


def read_csv(path: str | Path, *, city: str = "replay") -> Recording:
    """Readings from a CSV file (see the module docstring); ``city`` when no column gives it."""
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        cols = reader.fieldnames or []
        for need in ("sensor_id", "kind", "district"):
            if need not in cols:
                raise ConfigError(f"{p}: missing column {need!r} (have {cols})")
        time_col = next((c for c in ("ts_ns", "ts", "dateObserved") if c in cols), None)
        if time_col is None:
            raise ConfigError(f"{p}: no time column (ts_ns, ts or dateObserved)")
        metric_cols = [(c, int(METRIC_BY_FIELD[c])) for c in cols if c in METRIC_BY_FIELD]
        if not metric_cols:
            raise ConfigError(f"{p}: no metric columns (e.g. pm25, intensity)")
        lane_col = "lane" if "lane" in cols else ("laneId" if "laneId" in cols else None)
        keys: list[SeriesKey] = []
        times: list[int] = []
        values: list[list[float]] = []
        for n, row in enumerate(reader, 2):
            where = f"{p}:{n}"
            lane_text = (row.get(lane_col) or "").strip() if lane_col else ""
            try:
                lane = int(lane_text) if lane_text else 0
                raw_t = row[time_col] or ""
                ts = int(raw_t) if time_col == "ts_ns" else _parse_time(raw_t, where)
                vals = [math.nan] * N_METRICS
                for c, m in metric_cols:
                    cell = (row.get(c) or "").strip()
                    if cell:
                        vals[m] = float(cell)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            keys.append(
                _key(
                    (row.get("city") or city).strip(),
                    (row["district"] or "").strip(),
                    (row["kind"] or "").strip(),
                    (row["sensor_id"] or "").strip(),
                    lane,
                    where,
                )
            )
            times.append(ts)
            values.append(vals)
    return Recording.from_rows(keys, times, values)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside backslash escapes and double-quoted strings."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def read_line_protocol(path: str | Path) -> Recording:
    """Raw ``air``/``traffic`` points from a line-protocol file (see the module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc
    keys: list[SeriesKey] = []
    times: list[int] = []
    values: list[list[float]] = []
    skipped = 0
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{p}:{n}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = _split(line, " ")
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected 'measurement,tags fields timestamp'")
        head = _split(parts[0], ",")
        measurement = _unescape(head[0])
        if measurement not in ("air", "traffic"):
            skipped += 1
            continue
        tags: dict[str, str] = {}
        for pair in head[1:]:
            k, _, v = pair.partition("=")
            tags[_unescape(k)] = _unescape(v)
        vals = [math.nan] * N_METRICS
        try:
            for pair in _split(parts[1], ","):
                k, _, v = pair.partition("=")
                m = METRIC_BY_FIELD.get(_unescape(k))
                if m is None or v.startswith('"'):
                    continue
                vals[m] = float(v[:-1] if v[-1:] in ("i", "u") else v)
            ts = int(parts[2])
            lane = int(tags.get("lane", "0"))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        keys.append(
            _key(
                tags.get("city", ""),
                tags.get("district", ""),
                measurement,
                tags.get("sensor_id", ""),
                lane,
                where,
            )
        )
        times.append(ts)
        values.append(vals)
    return Recording.from_rows(keys, times, values, skipped)


def _number(v: float, integer: bool) -> str:
    if integer and v == math.floor(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


class Replayer:
    """A recording as a paced message schedule (``MessageSource``).

    ``shift_ns`` is added to every timestamp (e.g. to replay an old recording
    as if it were happening now: ``clock.now_ns() - recording.ts_ns[0]``).
    """

    def __init__(
        self,
        recording: Recording,
        *,
        prefix: str = "urbanpulse",
        speed: float = 1.0,
        shift_ns: int = 0,
        ts_format: TimestampFormat = "epoch_s",
    ) -> None:
        if len(recording) == 0:
            raise ConfigError("the recording holds no readings")
        if not (0 < speed < math.inf):
            raise ConfigError(f"speed must be positive, got {speed}")
        self.recording = recording
        self._speed = speed
        self._ts_format: TimestampFormat = ts_format
        self._ts = recording.ts_ns + shift_ns
        self._pos = 0
        self._topics = [
            f"{prefix}/{k.city}/{k.district}/{k.kind.label}/{k.sensor_id}" for k in recording.series
        ]
        self._lanes = [k.lane for k in recording.series]
        self.start_ns: int = int(self._ts[0])
        self.last_event_ns: int = 0
        self.emitted = 0

    @property
    def nominal_rate_per_s(self) -> float:
        span_s = (int(self._ts[-1]) - self.start_ns) / 1e9
        return len(self.recording) / span_s * self._speed if span_s > 0 else math.inf

    def next_event_ns(self) -> int | None:
        return int(self._ts[self._pos]) if self._pos < self._ts.shape[0] else None

    def next_batch(self, until_ns: int) -> list[Message]:
        """Every not yet replayed reading with event time < ``until_ns``, in order."""
        end = int(np.searchsorted(self._ts, until_ns, side="left"))
        if end <= self._pos:
            return []
        rows = np.arange(self._pos, end)
        self._pos = end
        self.emitted += rows.shape[0]
        self.last_event_ns = int(self._ts[end - 1])
        return self._encode(rows)

    def messages(self) -> list[Message]:
        """Everything not yet replayed."""
        return self.next_batch(int(self._ts[-1]) + 1)

    def _encode(self, rows: NDArray[np.int64]) -> list[Message]:
        rec = self.recording
        stamps = format_timestamps(self._ts[rows], self._ts_format)
        vals = rec.values[rows]
        present = np.isfinite(vals)
        sids = rec.sid[rows].tolist()
        fields = [(int(m), METRIC_INFO[m].field, m in _INT_FIELDS) for m in Metric]
        out: list[Message] = []
        value_rows = vals.tolist()
        present_rows = present.tolist()
        for sid, stamp, v, ok in zip(sids, stamps, value_rows, present_rows, strict=True):
            parts = [f'"dateObserved":{stamp}']
            lane = self._lanes[sid]
            if lane:
                parts.append(f'"laneId":{lane}')
            parts.extend(
                f'"{name}":{_number(v[m], integer)}' for m, name, integer in fields if ok[m]
            )
            out.append((self._topics[sid], ("{" + ",".join(parts) + "}").encode()))
        return out


async def run_replay(
    recording: Recording,
    publisher: Publisher,
    clock: Clock,
    progress: Callable[[SimProgress], None] | None = None,
    *,
    speed: float = 1.0,
    qos: int = 0,
    prefix: str = "urbanpulse",
    shift_ns: int = 0,
    ts_format: TimestampFormat = "epoch_s",
    sleep: SleepFn = asyncio.sleep,
    tick_s: float = 0.01,
    max_lag_s: float = 0.5,
    progress_interval_s: float = 1.0,
    stop: asyncio.Event | None = None,
) -> SimStats:
    """Publish a recording at ``speed`` x its event time through ``publisher`` (see ``pace``)."""
    source = Replayer(recording, prefix=prefix, speed=speed, shift_ns=shift_ns, ts_format=ts_format)
    return await pace(
        source,
        publisher,
        clock,
        progress,
        qos=qos,
        speed=speed,
        sleep=sleep,
        tick_s=tick_s,
        max_lag_s=max_lag_s,
        progress_interval_s=progress_interval_s,
        stop=stop,
    )
