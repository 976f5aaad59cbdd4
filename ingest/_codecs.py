"""Payload codecs: SenML JSON, Sensor.Community (airrohr) JSON, The Things Stack v3.

A codec turns one parsed JSON payload into the decoder's internal row form (see
:class:`CodecRow`): native field names, raw values, a unit code per value, the
reading time (or None for the receive time) and optionally a sensor id found
in the payload. It converts nothing and checks no ranges: the decoder reuses the
native path for that (pydantic validation, unit normalisation on columns, hard
limits, clock skew, dead letters), so a reading has the same fate whatever
format it arrived in. A codec refuses a payload by raising
:class:`~urbanpulse._errors.DecodeError` with a reason from :data:`CODEC_REASONS`
or from the native reasons it shares (``not_object``, ``wrong_type``,
``unknown_field``, ``bad_timestamp``, ``not_finite``, ``no_metrics``).

Which codec reads a topic is configured by :class:`CodecRule` (first matching
MQTT topic filter wins; no match: native JSON). See docs/codecs.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from ingest._models import UnknownFields
from ingest._topics import (
    MAX_SEGMENT,
    TopicError,
    TopicInfo,
    TopicPattern,
    check_tag,
    split_pattern,
)
from ingest._units import UNIT_SYMBOLS, Unit, convertible, parse_unit
from urbanpulse._errors import DecodeError
from urbanpulse._schema import METRIC_BY_FIELD, METRIC_INFO, Kind

__all__ = [
    "AIRROHR_NAMES",
    "CODECS",
    "CODEC_REASONS",
    "SENML_NAMES",
    "TTN_NAMES",
    "CodecName",
    "CodecRow",
    "CodecRule",
    "CompiledRule",
    "NameMap",
    "RulePattern",
    "compile_rules",
    "topic_matches",
    "validate_topic_filter",
]

CodecName = Literal["native", "senml", "airrohr", "ttn"]
CODECS: Final[tuple[CodecName, ...]] = ("native", "senml", "airrohr", "ttn")

#: Reasons only the codecs (and unit normalisation) produce; appended to REASONS.
CODEC_REASONS: Final = (
    "no_sensor_id",
    "unit_unknown",
    "unit_mismatch",
    "duplicate_metric",
    "senml_bad_pack",
    "senml_unknown_label",
    "senml_bad_name",
    "senml_unknown_name",
    "senml_unsupported",
    "airrohr_bad_shape",
    "airrohr_unknown_value_type",
    "airrohr_bad_value",
    "ttn_not_uplink",
    "ttn_no_decoded_payload",
)


#: Name maps: payload name -> ``"<field>"``, ``"<field>[<unit symbol>]"`` (the unit the
#: device sends when the payload does not say), or ``""`` (known, deliberately ignored).
NameMap = Mapping[str, str]

_NATIVE_SELF: Final[dict[str, str]] = {f: f for f in METRIC_BY_FIELD}

SENML_NAMES: Final[dict[str, str]] = {
    **_NATIVE_SELF,
    "pm2_5": "pm25",
    "pm2.5": "pm25",
    "temp": "temperature",
    "hum": "relativeHumidity",
    "humidity": "relativeHumidity",
    "rh": "relativeHumidity",
}

TTN_NAMES: Final[dict[str, str]] = {
    **_NATIVE_SELF,
    "pm2_5": "pm25",
    "pm2.5": "pm25",
    "temp": "temperature",
    "hum": "relativeHumidity",
    "humidity": "relativeHumidity",
}

#: airrohr firmware ``value_type`` names. P1 is PM10 and P2 is PM2.5 for every PM
#: sensor (SDS011, PMS x003, SPS30, Honeywell HPM); P0 (PM1) and P4 (PM4) have no
#: UrbanPulse metric. Plain ``temperature``/``humidity`` are the DHT22's.
AIRROHR_NAMES: Final[dict[str, str]] = {
    "SDS_P1": "pm10",
    "SDS_P2": "pm25",
    "PMS_P1": "pm10",
    "PMS_P2": "pm25",
    "SPS30_P1": "pm10",
    "SPS30_P2": "pm25",
    "HPM_P1": "pm10",
    "HPM_P2": "pm25",
    "BME280_temperature": "temperature",
    "BME280_humidity": "relativeHumidity",
    "SHT3X_temperature": "temperature",
    "SHT3X_humidity": "relativeHumidity",
    "HTU21D_temperature": "temperature",
    "HTU21D_humidity": "relativeHumidity",
    "temperature": "temperature",  # DHT22
    "humidity": "relativeHumidity",  # DHT22
    # Known, not UrbanPulse metrics: ignored.
    "BME280_pressure": "",
    "BMP280_pressure": "",
    "BMP280_temperature": "",  # inside the case next to the MCU; use BME280/DHT22/SHT3x
    "BMP_pressure": "",
    "BMP_temperature": "",
    "PMS_P0": "",
    "SPS30_P0": "",
    "SPS30_P4": "",
    "SPS30_N05": "",
    "SPS30_N1": "",
    "SPS30_N25": "",
    "SPS30_N4": "",
    "SPS30_N10": "",
    "SPS30_TS": "",
    "signal": "",
    "samples": "",
    "min_micro": "",
    "max_micro": "",
    "interval": "",
    "GPS_lat": "",
    "GPS_lon": "",
    "GPS_height": "",
    "GPS_timestamp": "",
}

_DEFAULT_NAMES: Final[dict[CodecName, dict[str, str]]] = {
    "native": {},
    "senml": SENML_NAMES,
    "airrohr": AIRROHR_NAMES,
    "ttn": TTN_NAMES,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecRule:
    """Topics matching ``topic_filter`` (MQTT wildcards ``+`` and ``#``) use ``codec``.

    ``names`` is merged over the codec's default name map. ``topic_pattern``
    (same syntax as ``mqtt.topic_pattern``; None: the global pattern) parses the
    tags; captures it lacks among city, district and kind must be given in
    ``tags``. When it lacks ``{sensor_id}`` the id comes from the payload: SenML
    ``bn``, airrohr ``esp8266-<esp8266id>``, TTN ``end_device_ids.device_id``.
    """

    topic_filter: str
    codec: CodecName
    names: Mapping[str, str] = field(default_factory=dict)
    topic_pattern: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def validate_topic_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT topic filter."""
    if not topic_filter:
        raise ValueError("empty topic filter")
    levels = topic_filter.split("/")
    for i, lvl in enumerate(levels):
        if "#" in lvl and (lvl != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in lvl and lvl != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 5 matching: ``+`` one level, ``#`` the rest (including the parent level);
    wildcards in the first level never match topics starting with ``$``."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, lvl in enumerate(f):
        if lvl == "#":
            return True
        if i >= len(t) or (lvl != "+" and lvl != t[i]):
            return False
    return len(t) == len(f)


_TAGS: Final = ("city", "district", "kind")


@dataclass(frozen=True, slots=True)
class RulePattern:
    """A rule's topic pattern: like :class:`TopicPattern`, but captures may be
    replaced by constants and ``{sensor_id}`` may be absent (id from the payload)."""

    pattern: str
    levels: tuple[str | None, ...]
    captures: tuple[tuple[int, str], ...]
    constants: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, pattern: str, tags: Mapping[str, str]) -> RulePattern:
        levels, captures = split_pattern(pattern)
        names = [n for _, n in captures]
        if len(set(names)) != len(names):
            raise ValueError(f"topic pattern {pattern!r} captures a name twice")
        unknown = set(tags) - set(_TAGS)
        if unknown:
            raise ValueError(f"tags may set only city, district, kind; got {sorted(unknown)}")
        both = set(tags) & set(names)
        if both:
            raise ValueError(f"topic pattern {pattern!r} captures {sorted(both)} also in tags")
        missing = [t for t in _TAGS if t not in names and t not in tags]
        if missing:
            raise ValueError(f"topic pattern {pattern!r} lacks {missing}: set them in tags")
        for name, value in tags.items():
            try:
                check_tag(name, value)
            except TopicError as exc:
                raise ValueError(f"tags.{name}: {exc.detail}") from None
        if "kind" in tags:
            Kind.parse(tags["kind"])
        return cls(pattern, levels, captures, tuple(sorted(tags.items())))

    @property
    def sensor_from_payload(self) -> bool:
        return all(name != "sensor_id" for _, name in self.captures)

    def parse(self, topic: str) -> TopicInfo:
        """Tags of ``topic``; ``sensor_id`` is "" when it comes from the payload."""
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            raise TopicError(
                "topic_mismatch",
                f"{len(parts)} levels, pattern {self.pattern!r} has {len(self.levels)}",
            )
        for i, (lvl, part) in enumerate(zip(self.levels, parts, strict=True)):
            if lvl is not None and lvl != part:
                raise TopicError("topic_mismatch", f"expected {lvl!r}, got {part!r}")
            if lvl is None and part.startswith("_"):
                raise TopicError("topic_reserved", f"level {i + 1} {part!r} starts with '_'")
        values = dict(self.constants)
        for i, name in self.captures:
            check_tag(name, parts[i])
            values[name] = parts[i]
        try:
            kind = Kind.parse(values["kind"])
        except ValueError as exc:
            raise TopicError("topic_unknown_kind", str(exc)) from None
        return TopicInfo(values["city"], values["district"], kind, values.get("sensor_id", ""))


# -- the internal row form ---------------------------------------------------------------


class CodecRow:
    """One reading time of one sensor: native field -> raw value and its unit."""

    __slots__ = ("fields", "radio", "sensor_id", "ts_ns", "units")

    def __init__(
        self,
        fields: dict[str, float],
        units: dict[str, Unit],
        ts_ns: int | None,
        sensor_id: str | None = None,
        radio: tuple[float, float, int] | None = None,
    ) -> None:
        self.fields = fields
        #: Unit per field; absent: the metric's canonical unit.
        self.units = units
        #: ns since the epoch; None: the receive time (flag RECEIVE_TIME).
        self.ts_ns = ts_ns
        #: The id from the payload, when the topic pattern has no {sensor_id}.
        self.sensor_id = sensor_id
        #: (rssi_dbm, snr_db, gateways) of the best gateway (TTN), else None.
        self.radio = radio


@dataclass(frozen=True, slots=True)
class _Target:
    field: str
    unit: Unit  # CANONICAL: none stated by the map


def _compile_names(defaults: Mapping[str, str], names: Mapping[str, str]) -> dict[str, _Target]:
    out: dict[str, _Target] = {}
    for key, spec in {**defaults, **names}.items():
        if not spec:
            out[key] = _Target("", Unit.CANONICAL)
            continue
        name, unit = spec, Unit.CANONICAL
        if spec.endswith("]") and "[" in spec:
            name, _, symbol = spec[:-1].partition("[")
            parsed = parse_unit(symbol)
            if parsed is None:
                raise ValueError(f"names.{key}: unknown unit {symbol!r}")
            unit = parsed
        if name not in METRIC_BY_FIELD:
            raise ValueError(
                f"names.{key}: {name!r} is not a metric ({', '.join(METRIC_BY_FIELD)})"
            )
        if not convertible(METRIC_BY_FIELD[name], unit):
            raise ValueError(f"names.{key}: unit {spec!r} cannot express {name}")
        out[key] = _Target(name, unit)
    return out


@dataclass(frozen=True, slots=True)
class _Context:
    """What a codec needs besides the payload."""

    kind: Kind
    recv_ns: int
    need_sensor: bool


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CANONICAL: Final = Unit.CANONICAL  # a global: enum attribute access is slow in 3.11
_US: Final = timedelta(microseconds=1)
_MAX_US: Final = 9_000_000_000_000_000
_SENML_ABSOLUTE_S: Final = 2**28


def _is_number(v: object) -> bool:
    return type(v) is float or type(v) is int


def _seconds_to_ns(seconds: float, what: str) -> int:
    us = seconds * 1e6
    if not (0 <= us < _MAX_US):  # also false for NaN
        raise DecodeError("bad_timestamp", f"{what}={seconds!r} is outside 1970..2262")
    return round(us) * 1000


def _iso_to_ns(text: object, what: str) -> int:
    if not isinstance(text, str):
        raise DecodeError("bad_timestamp", f"{what} is not an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError("bad_timestamp", f"{what}={text!r:.64}") from None
    if dt.tzinfo is None:
        raise DecodeError("bad_timestamp", f"{what}={text!r:.64} has no UTC offset")
    ns = ((dt - _EPOCH) // _US) * 1000
    if not 0 <= ns < _MAX_US * 1000:
        raise DecodeError("bad_timestamp", f"{what}={text!r:.64} is outside 1970..2262")
    return ns


def _put(row: CodecRow, target: _Target, value: float, unit: Unit, source: str) -> None:
    if target.field in row.fields:
        raise DecodeError("duplicate_metric", f"{source}: {target.field} given twice")
    row.fields[target.field] = value
    if unit is not _CANONICAL:
        row.units[target.field] = unit


def _metric_of(target: _Target, kind: Kind) -> bool:
    return METRIC_INFO[METRIC_BY_FIELD[target.field]].kind is kind


# -- SenML -------------------------------------------------------------------------------

_SENML_LABELS: Final = frozenset(
    ("bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut")
)
_SENML_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*")
_SENML_VERSION: Final = 10
_SENML_SEPARATORS: Final = ":/._-"


def _senml_number(rec: dict[str, Any], label: str, k: int) -> float:
    v = rec[label]
    if not _is_number(v):
        raise DecodeError("wrong_type", f"record {k}: {label} is not a number")
    return float(v)


def _senml_string(rec: dict[str, Any], label: str, k: int) -> str:
    v = rec[label]
    if not isinstance(v, str):
        raise DecodeError("wrong_type", f"record {k}: {label} is not a string")
    return v


_BASE_LABELS: Final = frozenset(("bn", "bt", "bu", "bv", "bs", "bver", "ut"))
_NAME_CACHE_MAX: Final = 50_000
#: Resolved SenML names already checked and looked up, per name map (names repeat).
_BAD_NAME: Final = _Target("\x00bad", Unit.CANONICAL)


def _senml_lookup(
    names: dict[str, _Target], cache: dict[str, _Target | None], name: str
) -> _Target | None:
    """The target of a resolved name (full name, else the part after the last ':' or
    '/'); None if unknown; raises senml_bad_name if the name breaks RFC 8428 4.5.1."""
    if name in cache:
        target = cache[name]
    else:
        if _SENML_NAME.fullmatch(name) is None:
            target = _BAD_NAME
        else:
            target = names.get(name)
            if target is None:
                cut = max(name.rfind(":"), name.rfind("/"))
                if cut >= 0:
                    target = names.get(name[cut + 1 :])
        if len(cache) >= _NAME_CACHE_MAX:
            cache.clear()
        cache[name] = target
    if target is _BAD_NAME:
        raise DecodeError("senml_bad_name", f"name {name!r:.80}")
    return target


def _senml_base(rec: dict[str, Any], k: int) -> None:
    """Type checks of the base labels that do not carry forward a value we use."""
    if "bver" in rec:
        ver = rec["bver"]
        if type(ver) is not int:
            raise DecodeError("wrong_type", f"record {k}: bver is not an integer")
        if ver > _SENML_VERSION:
            raise DecodeError("senml_unsupported", f"record {k}: bver {ver} > 10")
    if "bs" in rec:
        _senml_number(rec, "bs", k)
    if "ut" in rec:
        _senml_number(rec, "ut", k)


def _decode_senml(
    obj: Any,
    ctx: _Context,
    names: dict[str, _Target],
    unknown: UnknownFields,
    cache: dict[str, _Target | None],
) -> list[CodecRow]:
    if type(obj) is not list or not obj:
        raise DecodeError("senml_bad_pack", "a SenML pack is a non-empty JSON array of records")
    bn, bt, bv = "", 0.0, 0.0
    bu: str | None = None
    rows: dict[tuple[str, int], CodecRow] = {}
    for k, rec in enumerate(obj):
        if type(rec) is not dict:
            raise DecodeError("senml_bad_pack", f"record {k} is not an object")
        keys = rec.keys()
        if not keys <= _SENML_LABELS:
            for label in keys:
                if label not in _SENML_LABELS and (unknown == "reject" or label.endswith("_")):
                    raise DecodeError("senml_unknown_label", f"record {k}: {label!r:.40}")
        if not keys.isdisjoint(_BASE_LABELS):
            _senml_base(rec, k)
            if "bn" in rec:
                bn = _senml_string(rec, "bn", k)
            if "bt" in rec:
                bt = _senml_number(rec, "bt", k)
            if "bu" in rec:
                bu = _senml_string(rec, "bu", k)
            if "bv" in rec:
                bv = _senml_number(rec, "bv", k)
        n = rec.get("n", "")
        if type(n) is not str:
            raise DecodeError("wrong_type", f"record {k}: n is not a string")
        name = bn + n
        target = _senml_lookup(names, cache, name)
        v = rec.get("v")
        n_values = ("v" in rec) + ("vs" in rec) + ("vb" in rec) + ("vd" in rec)
        if n_values > 1:
            raise DecodeError("senml_bad_pack", f"record {k}: more than one value")
        has_sum = "s" in rec
        if not n_values and not has_sum:
            raise DecodeError("senml_bad_pack", f"record {k}: no value and no sum")
        if has_sum:
            _senml_number(rec, "s", k)
        if target is None or (target.field and not _metric_of(target, ctx.kind)):
            if unknown == "reject":
                what = "unknown" if target is None else f"not an {ctx.kind.label} metric"
                raise DecodeError("senml_unknown_name", f"record {k}: {name!r:.80} ({what})")
            continue
        if not target.field:
            continue
        if "v" not in rec:
            got = next((lbl for lbl in ("vs", "vb", "vd") if lbl in rec), "s")
            raise DecodeError("senml_unsupported", f"record {k}: {name} has {got}, not v")
        if type(v) is not float and type(v) is not int:
            raise DecodeError("wrong_type", f"record {k}: v is not a number")
        value = bv + v
        t = bt
        if "t" in rec:
            t += _senml_number(rec, "t", k)
        if not math.isfinite(t):
            raise DecodeError("bad_timestamp", f"record {k}: time {t!r}")
        if t < _SENML_ABSOLUTE_S:
            ts_ns = ctx.recv_ns + _seconds_to_ns(abs(t), "t") * (1 if t >= 0 else -1)
            if ts_ns < 0:
                raise DecodeError("bad_timestamp", f"record {k}: relative time {t!r} before 1970")
        else:
            ts_ns = _seconds_to_ns(t, f"record {k}: time")
        unit = target.unit
        symbol = rec.get("u", bu)
        if "u" in rec and type(symbol) is not str:
            raise DecodeError("wrong_type", f"record {k}: u is not a string")
        if symbol is not None:
            parsed = UNIT_SYMBOLS.get(symbol)
            if parsed is None:
                raise DecodeError("unit_unknown", f"record {k}: unit {symbol!r:.40}")
            unit = parsed
        sensor = ""
        if ctx.need_sensor:
            sensor = bn.rstrip(_SENML_SEPARATORS)
            if not sensor:
                raise DecodeError("no_sensor_id", f"record {k}: no bn to name the sensor")
            if len(sensor) > MAX_SEGMENT:
                raise DecodeError("no_sensor_id", f"record {k}: bn longer than 128")
        row = rows.get((sensor, ts_ns))
        if row is None:
            row = rows[(sensor, ts_ns)] = CodecRow({}, {}, ts_ns, sensor or None)
        fields = row.fields
        if target.field in fields:
            raise DecodeError("duplicate_metric", f"record {k} ({name}): {target.field} twice")
        fields[target.field] = float(value)
        if unit is not _CANONICAL:
            row.units[target.field] = unit
    if not rows:
        raise DecodeError("no_metrics", "no record names an UrbanPulse metric")
    return list(rows.values())


# -- Sensor.Community (airrohr) -------------------------------------------------------------


def _decode_airrohr(
    obj: Any,
    ctx: _Context,
    names: dict[str, _Target],
    unknown: UnknownFields,
    cache: dict[str, _Target | None],
) -> list[CodecRow]:
    del cache  # only SenML resolves names
    if not isinstance(obj, dict):
        raise DecodeError("not_object", "an airrohr payload is a JSON object")
    values = obj.get("sensordatavalues")
    if not isinstance(values, list):
        raise DecodeError("airrohr_bad_shape", "sensordatavalues is not a list")
    sensor: str | None = None
    if ctx.need_sensor:
        chip = obj.get("esp8266id")
        if type(chip) is int and chip >= 0:
            chip = str(chip)
        if not isinstance(chip, str) or not chip or not chip.isalnum() or len(chip) > 64:
            raise DecodeError("no_sensor_id", "esp8266id is missing or not a chip id")
        sensor = f"esp8266-{chip}"
    row = CodecRow({}, {}, None, sensor)
    for k, item in enumerate(values):
        if not isinstance(item, dict) or "value_type" not in item or "value" not in item:
            raise DecodeError("airrohr_bad_shape", f"sensordatavalues[{k}] lacks value_type/value")
        vtype, raw = item["value_type"], item["value"]
        if not isinstance(vtype, str):
            raise DecodeError("airrohr_bad_shape", f"sensordatavalues[{k}].value_type")
        target = names.get(vtype)
        if target is None or (target.field and not _metric_of(target, ctx.kind)):
            if unknown == "reject":
                raise DecodeError("airrohr_unknown_value_type", f"{vtype!r:.60}")
            continue
        if not target.field:
            continue
        if isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise DecodeError("airrohr_bad_value", f"{vtype}={raw!r:.40}") from None
            if not math.isfinite(value):
                raise DecodeError("not_finite", f"{vtype}={raw!r:.40}")
        elif _is_number(raw):
            value = float(raw)
        else:
            raise DecodeError("airrohr_bad_value", f"{vtype} is {type(raw).__name__}")
        _put(row, target, value, target.unit, vtype)
    if not row.fields:
        raise DecodeError("no_metrics", "no value_type names an UrbanPulse metric")
    return [row]


# -- The Things Stack v3 ------------------------------------------------------------------


def _best_gateway(meta: object) -> tuple[float, float, int] | None:
    """(rssi, snr, gateways) of the gateway with the strongest RSSI, if any reports one."""
    if not isinstance(meta, list):
        return None
    best: tuple[float, float] | None = None
    count = 0
    for gw in meta:
        if not isinstance(gw, dict):
            continue
        count += 1
        rssi = gw.get("rssi", gw.get("channel_rssi"))
        snr = gw.get("snr")
        if not (type(rssi) is float or type(rssi) is int):
            continue
        pair = (float(rssi), float(snr) if type(snr) is float or type(snr) is int else math.nan)
        if best is None or pair[0] > best[0]:
            best = pair
    return None if best is None else (best[0], best[1], count)


def _decode_ttn(
    obj: Any,
    ctx: _Context,
    names: dict[str, _Target],
    unknown: UnknownFields,
    cache: dict[str, _Target | None],
) -> list[CodecRow]:
    del cache  # only SenML resolves names
    if not isinstance(obj, dict):
        raise DecodeError("not_object", "a TTN message is a JSON object")
    up = obj.get("uplink_message")
    if not isinstance(up, dict):
        raise DecodeError("ttn_not_uplink", "no uplink_message (join, ack or location message?)")
    decoded = up.get("decoded_payload")
    if decoded is None:
        raise DecodeError("ttn_no_decoded_payload", "no payload formatter ran for this uplink")
    if not isinstance(decoded, dict):
        raise DecodeError("wrong_type", "decoded_payload is not an object")
    sensor: str | None = None
    if ctx.need_sensor:
        ids = obj.get("end_device_ids")
        dev = ids.get("device_id") if isinstance(ids, dict) else None
        if not isinstance(dev, str) or not dev or len(dev) > MAX_SEGMENT:
            raise DecodeError("no_sensor_id", "end_device_ids.device_id is missing")
        sensor = dev
    received = obj.get("received_at")
    ts_ns = None if received is None else _iso_to_ns(received, "received_at")
    row = CodecRow({}, {}, ts_ns, sensor, _best_gateway(up.get("rx_metadata")))
    for key, raw in decoded.items():
        target = names.get(key)
        if target is None or (target.field and not _metric_of(target, ctx.kind)):
            if unknown == "reject":
                raise DecodeError("unknown_field", f"decoded_payload.{key:.60}")
            continue
        if not target.field:
            continue
        if not _is_number(raw):
            raise DecodeError("wrong_type", f"decoded_payload.{key} is not a number")
        _put(row, target, float(raw), target.unit, f"decoded_payload.{key}")
    if not row.fields:
        raise DecodeError("no_metrics", "decoded_payload names no UrbanPulse metric")
    return [row]


_Decode = Callable[
    [Any, _Context, dict[str, _Target], UnknownFields, dict[str, _Target | None]], list[CodecRow]
]
_DECODERS: Final[dict[CodecName, _Decode]] = {
    "senml": _decode_senml,
    "airrohr": _decode_airrohr,
    "ttn": _decode_ttn,
}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to use: its topic parser and its bound codec (None: native)."""

    rule: CodecRule
    pattern: RulePattern | None  # None: the global TopicPattern
    names: dict[str, _Target]
    unknown: UnknownFields
    #: SenML: resolved name -> target (validity checked once per distinct name).
    name_cache: dict[str, _Target | None] = field(default_factory=dict)

    @property
    def native(self) -> bool:
        return self.rule.codec == "native"

    def parse_topic(self, topic: str, default: TopicPattern) -> tuple[TopicInfo, bool]:
        """(tags, sensor id from the payload?) or raise TopicError."""
        if self.pattern is None:
            return default.parse(topic), False
        return self.pattern.parse(topic), self.pattern.sensor_from_payload

    def rows(self, obj: Any, kind: Kind, recv_ns: int, need_sensor: bool) -> list[CodecRow]:
        """The payload's rows, or raise DecodeError."""
        decode = _DECODERS[self.rule.codec]
        ctx = _Context(kind, recv_ns, need_sensor)
        return decode(obj, ctx, self.names, self.unknown, self.name_cache)


def compile_rules(rules: Sequence[CodecRule], unknown: UnknownFields) -> tuple[CompiledRule, ...]:
    """Validate and compile rules; raise ValueError naming the offending rule."""
    out = []
    for i, rule in enumerate(rules):
        try:
            if rule.codec not in CODECS:
                raise ValueError(f"unknown codec {rule.codec!r} (one of {', '.join(CODECS)})")
            validate_topic_filter(rule.topic_filter)
            if rule.codec == "native" and rule.names:
                raise ValueError("the native codec takes no name map")
            pattern = None
            if rule.topic_pattern is not None:
                pattern = RulePattern.compile(rule.topic_pattern, rule.tags)
                if rule.codec == "native" and pattern.sensor_from_payload:
                    raise ValueError("the native codec needs {sensor_id} in the topic pattern")
            elif rule.tags:
                raise ValueError("tags need a topic_pattern")
            names = _compile_names(_DEFAULT_NAMES[rule.codec], rule.names)
        except ValueError as exc:
            raise ValueError(f"codecs[{i}] ({rule.topic_filter!r}): {exc}") from None
        out.append(CompiledRule(rule, pattern, names, unknown))
    return tuple(out)
