"""Payload decoding: a micro-batch of raw MQTT messages -> one ReadingBatch.

This is the ingest boundary. Each payload is parsed on its own (orjson, so one
broken payload cannot bleed into its neighbours). The codec configured for its
topic (``DecodeOptions.codecs``; native JSON by default, or SenML, airrohr, The
Things Stack: ``ingest._codecs``) turns it into rows of native field names; the
whole micro-batch is then validated by pydantic-core in a single call per kind,
and the validated dicts are turned straight into numpy columns. Unit
normalisation, range and clock-skew checks run vectorised on the columns. Every
refused message becomes a :class:`DeadLetter` with a stable, machine-readable
reason; nothing raises out of :meth:`NativeJsonDecoder.decode`. A message is
accepted or refused as a whole, even when it carries several reading times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import TypeAdapter, ValidationError

from ingest._codecs import (
    CODEC_REASONS,
    CodecRow,
    CodecRule,
    CompiledRule,
    compile_rules,
    topic_matches,
)
from ingest._models import UnknownFields, payload_model
from ingest._topics import TopicError, TopicInfo, TopicPattern
from ingest._units import Unit, normalise_units
from urbanpulse._batch import DeadLetter, ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import Clock
from urbanpulse._errors import DecodeError
from urbanpulse._schema import KIND_METRICS, METRIC_INFO, Kind, ReadingFlag, hard_limit_arrays

__all__ = [
    "NATIVE_REASONS",
    "REASONS",
    "DecodeOptions",
    "DecodeResult",
    "NativeJsonDecoder",
    "RadioBatch",
    "TimestampUnit",
]

TimestampUnit = Literal["s", "ms", "us", "ns"]

#: The reasons of the native JSON path (names are stable: they are counter labels).
NATIVE_REASONS: Final = (
    "topic_mismatch",
    "topic_reserved",
    "topic_bad_segment",
    "topic_unknown_kind",
    "payload_too_large",
    "not_json",
    "not_object",
    "unknown_field",
    "wrong_type",
    "not_finite",
    "invalid_field",
    "no_metrics",
    "bad_timestamp",
    "timestamp_future",
    "timestamp_too_old",
    "out_of_range",
)

#: Every reason a message can be dead-lettered for (the counter labels).
GUARD_REASONS: Final = ("cardinality_limit", "cardinality_rate")
REASONS: Final = (*NATIVE_REASONS, *CODEC_REASONS, *GUARD_REASONS)

_NS_PER_UNIT: Final[dict[str, int]] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_MAX_US: Final = 9_000_000_000_000_000  # int64 ns overflows past year 2262
_TOPIC_CACHE_MAX: Final = 200_000
_RADIO_FIELDS: Final = ("sid", "ts_ns", "rssi_dbm", "snr_db", "gateways")

_PYDANTIC_REASON: Final[dict[str, str]] = {
    "extra_forbidden": "unknown_field",
    "finite_number": "not_finite",
    "dict_type": "not_object",
    "model_type": "not_object",
    "float_type": "wrong_type",
    "int_type": "wrong_type",
    "string_type": "wrong_type",
    "float_parsing": "wrong_type",
    "int_parsing": "wrong_type",
    "int_from_float": "wrong_type",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeOptions:
    max_payload_bytes: int = 4096
    unknown_fields: UnknownFields = "reject"
    #: Unit of numeric ``dateObserved`` values. Configured, never guessed.
    timestamp_unit: TimestampUnit = "s"
    #: Zone for ISO timestamps without an offset; None rejects them.
    naive_timezone: str | None = None
    #: Clock-skew policy: readings further ahead of the receive clock are refused.
    max_future_s: float = 300.0
    #: Readings older than this are refused (None: accept any age).
    max_past_s: float | None = 30 * 86400.0
    #: Per-field overrides of the hard physical limits, e.g. {"pm25": (0, 2000)}.
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Codec per MQTT topic filter; the first matching rule wins, no match: native.
    codecs: tuple[CodecRule, ...] = ()
    #: Cardinality guard: at most this many series in total (None: no cap) ...
    max_series: int | None = 100_000
    #: ... and at most this many new series per minute (None: no cap), so a
    #: misconfigured or malicious publisher cannot blow up the database. Messages
    #: of refused new series are dead-lettered (cardinality_limit / _rate).
    max_new_series_per_min: int | None = 5_000


@dataclass(frozen=True, slots=True)
class RadioBatch:
    """Link quality of accepted LoRaWAN (TTN) uplinks, one row per reading time:
    RSSI and SNR of the strongest gateway and how many gateways heard it."""

    sid: NDArray[np.int32]
    ts_ns: NDArray[np.int64]
    rssi_dbm: NDArray[np.float64]
    snr_db: NDArray[np.float64]
    gateways: NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.sid.shape[0])

    @classmethod
    def empty(cls) -> RadioBatch:
        return cls(
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.float64),
            np.empty(0, np.int32),
        )


@dataclass(frozen=True, slots=True)
class DecodeResult:
    batch: ReadingBatch
    dead: list[DeadLetter]
    messages_ok: int
    #: Gateway metadata of the accepted TTN uplinks (not part of ``batch``).
    radio: RadioBatch = field(default_factory=RadioBatch.empty)


@dataclass(frozen=True, slots=True)
class _Inbox:
    """The raw micro-batch being decoded, and where its refusals go."""

    topics: Sequence[str]
    payloads: Sequence[bytes]
    recv_ns: Sequence[int]
    dead: list[DeadLetter]

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.dead.append(
            DeadLetter(self.topics[i], self.payloads[i], reason, detail, self.recv_ns[i])
        )


class _KindCodec:
    """Per-kind validation adapter and column layout."""

    def __init__(self, kind: Kind, unknown_fields: UnknownFields) -> None:
        self.kind = kind
        self.metrics = KIND_METRICS[kind]
        self.fields = tuple(METRIC_INFO[m].field for m in self.metrics)
        self.codes = np.array([int(m) for m in self.metrics], dtype=np.uint8)
        self.adapter: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(
            list[payload_model(kind.label, unknown_fields)]  # type: ignore[misc]
        )


class _KindRows:
    """Rows of one kind in arrival order; one message's rows are contiguous.

    A native message is one row (its parsed object, validated later); a codec
    message is one row per reading time (``CodecRow.fields``, validated the same way).
    """

    __slots__ = ("codec", "idx", "infos", "objs")

    def __init__(self) -> None:
        self.idx: list[int] = []
        self.infos: list[TopicInfo] = []
        self.objs: list[Any] = []
        #: The codec rows by position; native rows have no entry.
        self.codec: dict[int, CodecRow] = {}

    def add_codec(self, i: int, info: TopicInfo, row: CodecRow) -> None:
        self.codec[len(self.idx)] = row
        self.idx.append(i)
        self.infos.append(info)
        self.objs.append(row.fields)

    def keep(self, positions: list[int]) -> None:
        self.idx = [self.idx[p] for p in positions]
        self.infos = [self.infos[p] for p in positions]
        self.objs = [self.objs[p] for p in positions]
        if self.codec:
            old = self.codec
            self.codec = {new: old[p] for new, p in enumerate(positions) if p in old}


_Route = tuple[CompiledRule | None, TopicInfo | TopicError, bool]


class NativeJsonDecoder:
    """Decodes payloads into columns; stateful only in its caches.

    Despite the name (kept for compatibility) it decodes every configured codec:
    native JSON for topics no rule in ``options.codecs`` matches.
    """

    def __init__(
        self,
        options: DecodeOptions,
        *,
        pattern: TopicPattern,
        registry: SeriesRegistry,
        clock: Clock,
    ) -> None:
        self._opts = options
        self._pattern = pattern
        self._registry = registry
        self._clock = clock
        self._codecs = {kind: _KindCodec(kind, options.unknown_fields) for kind in Kind}
        self._rules = compile_rules(options.codecs, options.unknown_fields)
        self._low, self._high = hard_limit_arrays(options.limits)
        self._naive_tz = ZoneInfo(options.naive_timezone) if options.naive_timezone else None
        self._ns_per_unit = _NS_PER_UNIT[options.timestamp_unit]
        self._topics: dict[str, _Route] = {}
        self._sids: dict[tuple[str, str, int], int] = {}
        #: New-series budget of the current minute (monotonic clock).
        self._minute_start_s = clock.monotonic_s()
        self._new_this_minute = 0
        #: Messages refused by the cardinality guard, by reason (monotonic counters).
        self.cardinality_refused: dict[str, int] = dict.fromkeys(GUARD_REASONS, 0)
        self._refusal = ("", "")

    # -- topics and series ---------------------------------------------------------
    def _route(self, topic: str) -> _Route:
        """(rule or None for the default native codec, tags or error, id from payload?)."""
        route = self._topics.get(topic)
        if route is None:
            rule = next((r for r in self._rules if topic_matches(r.rule.topic_filter, topic)), None)
            info: TopicInfo | TopicError
            from_payload = False
            try:
                if rule is None:
                    info = self._pattern.parse(topic)
                else:
                    info, from_payload = rule.parse_topic(topic, self._pattern)
            except TopicError as exc:
                info = exc
            if rule is not None and rule.native:
                rule = None
            route = (rule, info, from_payload)
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = route
        return route

    def _sid(self, topic: str, info: TopicInfo, lane: int) -> int:
        """The series id, or -1 when the cardinality guard refuses a new series."""
        cache_key = (topic, info.sensor_id, lane)
        sid = self._sids.get(cache_key)
        if sid is None:
            key = SeriesKey(info.city, info.district, info.kind, info.sensor_id, lane)
            sid = self._registry.get(key)
            if sid is None:
                if not self._admit_new_series():
                    return -1
                sid = self._registry.resolve(key)
            self._sids[cache_key] = sid
        return sid

    def _admit_new_series(self) -> bool:
        opts = self._opts
        if opts.max_series is not None and len(self._registry) >= opts.max_series:
            self._refusal = ("cardinality_limit", f"{opts.max_series} series already")
            return False
        if opts.max_new_series_per_min is not None:
            now_s = self._clock.monotonic_s()
            if now_s - self._minute_start_s >= 60.0:
                self._minute_start_s, self._new_this_minute = now_s, 0
            if self._new_this_minute >= opts.max_new_series_per_min:
                self._refusal = (
                    "cardinality_rate",
                    f"more than {opts.max_new_series_per_min} new series this minute",
                )
                return False
            self._new_this_minute += 1
        return True

    # -- the batch ---------------------------------------------------------------------
    def decode(
        self, topics: Sequence[str], payloads: Sequence[bytes], recv_ns: Sequence[int]
    ) -> DecodeResult:
        inbox = _Inbox(topics, payloads, recv_ns, [])
        by_kind = {kind: _KindRows() for kind in Kind}
        max_bytes = self._opts.max_payload_bytes
        loads = orjson.loads
        for i, topic in enumerate(topics):
            rule, info, from_payload = self._route(topic)
            if isinstance(info, TopicError):
                inbox.reject(i, info.reason, info.detail)
                continue
            payload = payloads[i]
            if len(payload) > max_bytes:
                inbox.reject(
                    i, "payload_too_large", f"{len(payload)} bytes > max_payload_bytes {max_bytes}"
                )
                continue
            try:
                obj = loads(payload)
            except orjson.JSONDecodeError as exc:
                inbox.reject(i, "not_json", str(exc))
                continue
            group = by_kind[info.kind]
            if rule is None:
                group.idx.append(i)
                group.infos.append(info)
                group.objs.append(obj)
                continue
            try:
                rows = rule.rows(obj, info.kind, recv_ns[i], from_payload)
            except DecodeError as exc:
                inbox.reject(i, exc.reason, exc.detail)
                continue
            except (ValueError, TypeError, OverflowError) as exc:  # pragma: no cover - defensive
                inbox.reject(i, "invalid_field", f"{type(exc).__name__}: {exc}")
                continue
            for row in rows:
                row_info = info
                if row.sensor_id is not None:
                    row_info = TopicInfo(info.city, info.district, info.kind, row.sensor_id)
                group.add_codec(i, row_info, row)

        parts: list[ReadingBatch] = []
        radios: list[RadioBatch] = []
        ok = 0
        for kind, group in by_kind.items():
            if group.idx:
                batch, radio, n_ok = self._decode_kind(self._codecs[kind], inbox, group)
                parts.append(batch)
                if len(radio):
                    radios.append(radio)
                ok += n_ok
        radio_all = RadioBatch.empty()
        if radios:
            radio_all = RadioBatch(
                *(np.concatenate([getattr(r, f) for r in radios]) for f in _RADIO_FIELDS)
            )
        return DecodeResult(ReadingBatch.concat(parts), inbox.dead, ok, radio_all)

    @staticmethod
    def _validate(codec: _KindCodec, inbox: _Inbox, group: _KindRows) -> list[dict[str, Any]]:
        """Validated dicts of ``group`` (which loses the rows of refused messages)."""
        try:
            return codec.adapter.validate_python(group.objs)
        except ValidationError as exc:
            first_error: dict[int, tuple[str, str]] = {}
            for err in exc.errors(include_url=False):
                loc = err["loc"]
                pos = loc[0] if loc and isinstance(loc[0], int) else -1
                if pos < 0 or pos in first_error:
                    continue
                reason = _PYDANTIC_REASON.get(err["type"], "invalid_field")
                where = ".".join(str(x) for x in loc[1:2])
                first_error[pos] = (reason, f"{where}: {err['msg']}" if where else err["msg"])
        if not first_error:  # pragma: no cover - pydantic always locates list items
            first_error = dict.fromkeys(
                range(len(group.objs)), ("invalid_field", "validation failed")
            )
        refused: set[int] = set()
        for pos in sorted(first_error):
            i = group.idx[pos]
            if i not in refused:
                refused.add(i)
                inbox.reject(i, *first_error[pos])
        group.keep([p for p, i in enumerate(group.idx) if i not in refused])
        if not group.idx:
            return []
        return codec.adapter.validate_python(group.objs)

    def _decode_kind(
        self, codec: _KindCodec, inbox: _Inbox, group: _KindRows
    ) -> tuple[ReadingBatch, RadioBatch, int]:
        dicts = self._validate(codec, inbox, group)
        n = len(dicts)
        if n == 0:
            return ReadingBatch.empty(), RadioBatch.empty(), 0
        idx = group.idx
        nan = math.nan
        values = np.empty((n, len(codec.fields)), dtype=np.float64)
        for j, name in enumerate(codec.fields):
            values[:, j] = [d.get(name, nan) for d in dicts]
        ts_ns, ts_bad, flags = self._row_timestamps(dicts, group, inbox.recv_ns)

        unit_bad = np.zeros(n, dtype=np.bool_)
        coded = [(p, row.units) for p, row in group.codec.items() if row.units]
        if coded:
            units = np.zeros(values.shape, dtype=np.uint8)
            col = {name: j for j, name in enumerate(codec.fields)}
            for p, row_units in coded:
                for name, unit in row_units.items():
                    units[p, col[name]] = unit
            values, mismatch = normalise_units(values, codec.codes, units)
            unit_bad = np.any(mismatch, axis=1)

        present = ~np.isnan(values)
        low = self._low[codec.codes]
        high = self._high[codec.codes]
        out_of_range = present & ((values < low) | (values > high))
        now_ns = self._clock.now_ns()
        future = ts_ns > now_ns + int(self._opts.max_future_s * 1e9)
        past = (
            ts_ns < now_ns - int(self._opts.max_past_s * 1e9)
            if self._opts.max_past_s is not None
            else np.zeros(n, dtype=np.bool_)
        )
        no_metrics: NDArray[np.bool_] = ~np.any(present, axis=1)
        bad_range: NDArray[np.bool_] = np.any(out_of_range, axis=1)
        rejected = ts_bad | unit_bad | future | past | no_metrics | bad_range

        # A message is refused as a whole: rows are grouped by message (contiguous).
        if group.codec:
            msg = np.asarray(idx, dtype=np.int64)
            starts = np.flatnonzero(np.concatenate(([True], msg[1:] != msg[:-1])))
            counts = np.diff(np.append(starts, n))
            msg_rejected = np.logical_or.reduceat(rejected, starts)
        else:  # native only: one row per message
            starts = np.arange(n)
            counts = np.ones(n, dtype=np.int64)
            msg_rejected = rejected
        if msg_rejected.any():
            for g in np.flatnonzero(msg_rejected).tolist():
                first = int(starts[g])
                pos = first + int(np.argmax(rejected[first : first + int(counts[g])]))
                if ts_bad[pos]:
                    reason = "bad_timestamp"
                    detail = f"dateObserved={dicts[pos].get('dateObserved')!r:.64}"
                elif unit_bad[pos]:
                    reason = "unit_mismatch"
                    detail = self._mismatch_detail(codec, values, pos, group)
                elif no_metrics[pos]:
                    reason, detail = "no_metrics", f"none of {', '.join(codec.fields)}"
                elif bad_range[pos]:
                    cols = np.flatnonzero(out_of_range[pos]).tolist()
                    reason = "out_of_range"
                    detail = ", ".join(
                        f"{codec.fields[c]}={float(values[pos, c])!r} "
                        f"outside [{float(low[c]):g}, {float(high[c]):g}]"
                        for c in cols
                    )
                elif future[pos]:
                    reason = "timestamp_future"
                    detail = f"{(ts_ns[pos] - now_ns) / 1e9:.0f} s ahead of the receive clock"
                else:
                    reason = "timestamp_too_old"
                    detail = f"{(now_ns - ts_ns[pos]) / 1e9:.0f} s behind the receive clock"
                inbox.reject(idx[pos], reason, detail)
            rejected = np.repeat(msg_rejected, counts)
            present &= ~rejected[:, None]
        # Series ids only for accepted messages: a refused sensor must not take a
        # permanent slot in the registry (and in every per-series state array).
        sids = np.zeros(n, dtype=np.int32)
        traffic = codec.kind is Kind.TRAFFIC
        topics = inbox.topics
        refused: dict[int, tuple[str, str]] = {}  # message group -> reason
        group_of_row = np.repeat(np.arange(starts.shape[0]), counts)
        for pos in np.flatnonzero(~rejected).tolist():
            lane = int(dicts[pos].get("laneId", 0)) if traffic else 0
            sid = self._sid(topics[idx[pos]], group.infos[pos], lane)
            if sid < 0:
                refused.setdefault(int(group_of_row[pos]), self._refusal)
            sids[pos] = max(sid, 0)
        if refused:
            for g, (reason, detail) in refused.items():
                msg_rejected[g] = True
                self.cardinality_refused[reason] += 1
                inbox.reject(idx[int(starts[g])], reason, detail)
            rejected = np.repeat(msg_rejected, counts)
            present &= ~rejected[:, None]
        r, c = np.nonzero(present)  # row-major: one message's readings stay together
        batch = ReadingBatch(
            sid=sids[r],
            metric=codec.codes[c],
            ts_ns=ts_ns[r],
            value=values[r, c],
            flags=flags[r],
        )
        radio = self._radio(group, sids, ts_ns, rejected)
        return batch, radio, int(np.count_nonzero(~msg_rejected))

    @staticmethod
    def _mismatch_detail(
        codec: _KindCodec, values: NDArray[np.float64], pos: int, group: _KindRows
    ) -> str:
        row = group.codec.get(pos)
        units = row.units if row is not None else {}
        bad = [
            f"{name} cannot be given in {Unit(u).name}"
            for name, u in units.items()
            if np.isnan(values[pos, codec.fields.index(name)])
        ]
        return ", ".join(bad)

    @staticmethod
    def _radio(
        group: _KindRows,
        sids: NDArray[np.int32],
        ts_ns: NDArray[np.int64],
        rejected: NDArray[np.bool_],
    ) -> RadioBatch:
        pos: list[int] = []
        radio: list[tuple[float, float, int]] = []
        for p, row in group.codec.items():
            if row.radio is not None and not rejected[p]:
                pos.append(p)
                radio.append(row.radio)
        if not pos:
            return RadioBatch.empty()
        return RadioBatch(
            sid=sids[pos],
            ts_ns=ts_ns[pos],
            rssi_dbm=np.array([r[0] for r in radio], dtype=np.float64),
            snr_db=np.array([r[1] for r in radio], dtype=np.float64),
            gateways=np.array([r[2] for r in radio], dtype=np.int32),
        )

    def _row_timestamps(
        self, dicts: list[dict[str, Any]], group: _KindRows, recv: Sequence[int]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.uint8]]:
        """Native rows from ``dateObserved``; codec rows from the time their codec
        resolved, or the receive time (flag RECEIVE_TIME) when the payload had none."""
        codec_rows = group.codec
        idx = group.idx
        if not codec_rows:
            return self._timestamps(dicts, [recv[i] for i in idx])
        n = len(idx)
        ts = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=np.bool_)
        flags = np.zeros(n, dtype=np.uint8)
        if len(codec_rows) < n:
            native = [p for p in range(n) if p not in codec_rows]
            nts, nbad, nflags = self._timestamps(
                [dicts[p] for p in native], [recv[idx[p]] for p in native]
            )
            ts[native], bad[native], flags[native] = nts, nbad, nflags
        for p, row in codec_rows.items():
            if row.ts_ns is None:
                ts[p] = recv[idx[p]]
                flags[p] = ReadingFlag.RECEIVE_TIME
            else:
                ts[p] = row.ts_ns
        return ts, bad, flags

    def _timestamps(
        self, rows: list[dict[str, Any]], recv: list[int]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.uint8]]:
        """ts_ns per row, a bad-timestamp mask, and the RECEIVE_TIME flag."""
        n = len(rows)
        raw = [d.get("dateObserved") for d in rows]
        flags = np.zeros(n, dtype=np.uint8)
        if self._ns_per_unit >= 1000 and all(type(v) is float or type(v) is int for v in raw):
            # Fast path: numbers in s/ms/us. Rounded to whole microseconds, the
            # precision a float64 epoch-seconds value actually carries.
            with np.errstate(over="ignore", invalid="ignore"):
                us = np.asarray(raw, dtype=np.float64) * (self._ns_per_unit // 1000)
                bad = ~((us >= 0) & (us < _MAX_US))
            us = np.where(bad, 0.0, us)
            return np.round(us).astype(np.int64) * 1000, bad, flags
        ts = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=np.bool_)
        for k, v in enumerate(raw):
            ns = self._one_timestamp(v)
            if ns is None:
                if v is None:
                    ts[k] = recv[k]
                    flags[k] = ReadingFlag.RECEIVE_TIME
                else:
                    bad[k] = True
            else:
                ts[k] = ns
        return ts, bad, flags

    def _one_timestamp(self, v: object) -> int | None:
        """ns since the epoch, or None if absent or invalid (same rules as the fast path)."""
        if v is None:
            return None
        if type(v) is int:
            ns = v * self._ns_per_unit
            return ns if 0 <= ns < _MAX_US * 1000 else None
        if type(v) is float:
            per_us = self._ns_per_unit / 1000
            us = v * per_us
            # Checked before rounding, exactly like the vectorised path.
            if not (0 <= us < _MAX_US):
                return None
            return round(us) * 1000
        if isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                return None
            if dt.tzinfo is None:
                if self._naive_tz is None:
                    return None
                dt = dt.replace(tzinfo=self._naive_tz)
            ns = ((dt - _EPOCH) // _US) * 1000
            return ns if 0 <= ns < _MAX_US * 1000 else None
        return None
