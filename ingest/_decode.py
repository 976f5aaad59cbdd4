"""Native JSON decoding: a micro-batch of raw MQTT messages -> one ReadingBatch.

This is the ingest boundary. Each payload is parsed on its own (orjson, so one
broken payload cannot bleed into its neighbours), the whole micro-batch is then
validated by pydantic-core in a single call, and the validated dicts are turned
straight into numpy columns. Range and clock-skew checks run vectorised on the
columns. Every refused message becomes a :class:`DeadLetter` with a stable,
machine-readable reason; nothing raises out of :meth:`NativeJsonDecoder.decode`.
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

from ingest._models import UnknownFields, payload_model
from ingest._topics import TopicError, TopicInfo, TopicPattern
from urbanpulse._batch import DeadLetter, ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import Clock
from urbanpulse._schema import KIND_METRICS, METRIC_INFO, Kind, ReadingFlag, hard_limit_arrays

__all__ = ["REASONS", "DecodeOptions", "DecodeResult", "NativeJsonDecoder", "TimestampUnit"]

TimestampUnit = Literal["s", "ms", "us", "ns"]

#: Every reason a message can be dead-lettered for (the counter labels).
REASONS: Final = (
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

_NS_PER_UNIT: Final[dict[str, int]] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_MAX_US: Final = 9_000_000_000_000_000  # int64 ns overflows past year 2262
_TOPIC_CACHE_MAX: Final = 200_000

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


@dataclass(frozen=True, slots=True)
class DecodeResult:
    batch: ReadingBatch
    dead: list[DeadLetter]
    messages_ok: int


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


class NativeJsonDecoder:
    """Decodes native JSON payloads into columns; stateful only in its caches."""

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
        self._low, self._high = hard_limit_arrays(options.limits)
        self._naive_tz = ZoneInfo(options.naive_timezone) if options.naive_timezone else None
        self._ns_per_unit = _NS_PER_UNIT[options.timestamp_unit]
        self._topics: dict[str, TopicInfo | TopicError] = {}
        self._sids: dict[tuple[str, int], int] = {}

    # -- topics and series ---------------------------------------------------------
    def _topic(self, topic: str) -> TopicInfo | TopicError:
        info = self._topics.get(topic)
        if info is None:
            try:
                info = self._pattern.parse(topic)
            except TopicError as exc:
                info = exc
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = info
        return info

    def _sid(self, topic: str, info: TopicInfo, lane: int) -> int:
        sid = self._sids.get((topic, lane))
        if sid is None:
            key = SeriesKey(info.city, info.district, info.kind, info.sensor_id, lane)
            sid = self._registry.resolve(key)
            self._sids[(topic, lane)] = sid
        return sid

    # -- the batch ---------------------------------------------------------------------
    def decode(
        self, topics: Sequence[str], payloads: Sequence[bytes], recv_ns: Sequence[int]
    ) -> DecodeResult:
        inbox = _Inbox(topics, payloads, recv_ns, [])
        by_kind: dict[Kind, tuple[list[int], list[TopicInfo], list[Any]]] = {
            kind: ([], [], []) for kind in Kind
        }
        max_bytes = self._opts.max_payload_bytes
        loads = orjson.loads
        for i, topic in enumerate(topics):
            info = self._topic(topic)
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
            idx, infos, objs = by_kind[info.kind]
            idx.append(i)
            infos.append(info)
            objs.append(obj)

        parts: list[ReadingBatch] = []
        ok = 0
        for kind, (idx, infos, objs) in by_kind.items():
            if idx:
                batch, n_ok = self._decode_kind(self._codecs[kind], inbox, idx, infos, objs)
                parts.append(batch)
                ok += n_ok
        return DecodeResult(ReadingBatch.concat(parts), inbox.dead, ok)

    @staticmethod
    def _validate(
        codec: _KindCodec,
        inbox: _Inbox,
        idx: list[int],
        infos: list[TopicInfo],
        objs: list[Any],
    ) -> tuple[list[int], list[TopicInfo], list[dict[str, Any]]]:
        try:
            return idx, infos, codec.adapter.validate_python(objs)
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
            first_error = dict.fromkeys(range(len(objs)), ("invalid_field", "validation failed"))
        for pos, (reason, detail) in first_error.items():
            inbox.reject(idx[pos], reason, detail)
        keep = [pos for pos in range(len(objs)) if pos not in first_error]
        if not keep:
            return [], [], []
        idx = [idx[p] for p in keep]
        infos = [infos[p] for p in keep]
        return idx, infos, codec.adapter.validate_python([objs[p] for p in keep])

    def _decode_kind(
        self,
        codec: _KindCodec,
        inbox: _Inbox,
        idx: list[int],
        infos: list[TopicInfo],
        objs: list[Any],
    ) -> tuple[ReadingBatch, int]:
        idx, infos, rows = self._validate(codec, inbox, idx, infos, objs)
        n = len(rows)
        if n == 0:
            return ReadingBatch.empty(), 0
        nan = math.nan
        values = np.empty((n, len(codec.fields)), dtype=np.float64)
        for j, name in enumerate(codec.fields):
            values[:, j] = [d.get(name, nan) for d in rows]
        ts_ns, ts_bad, flags = self._timestamps(rows, [inbox.recv_ns[i] for i in idx])

        present = ~np.isnan(values)
        low = self._low[codec.codes]
        high = self._high[codec.codes]
        out_of_range = present & ((values < low) | (values > high))
        reject = ts_bad.copy()
        now_ns = self._clock.now_ns()
        future = ts_ns > now_ns + int(self._opts.max_future_s * 1e9)
        past = (
            ts_ns < now_ns - int(self._opts.max_past_s * 1e9)
            if self._opts.max_past_s is not None
            else np.zeros(n, dtype=np.bool_)
        )
        no_metrics: NDArray[np.bool_] = ~np.any(present, axis=1)
        bad_range: NDArray[np.bool_] = np.any(out_of_range, axis=1)
        rejected = reject | future | past | no_metrics | bad_range
        if rejected.any():
            for pos in np.flatnonzero(rejected).tolist():
                if ts_bad[pos]:
                    reason = "bad_timestamp"
                    detail = f"dateObserved={rows[pos].get('dateObserved')!r:.64}"
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
            keep = ~rejected
            present &= keep[:, None]
        # Series ids only for accepted messages: a refused sensor must not take a
        # permanent slot in the registry (and in every per-series state array).
        sids = np.zeros(n, dtype=np.int32)
        traffic = codec.kind is Kind.TRAFFIC
        for pos in np.flatnonzero(~rejected).tolist():
            lane = int(rows[pos].get("laneId", 0)) if traffic else 0
            sids[pos] = self._sid(inbox.topics[idx[pos]], infos[pos], lane)
        r, c = np.nonzero(present)  # row-major: one message's readings stay together
        batch = ReadingBatch(
            sid=sids[r],
            metric=codec.codes[c],
            ts_ns=ts_ns[r],
            value=values[r, c],
            flags=flags[r],
        )
        return batch, int(n - np.count_nonzero(rejected))

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
