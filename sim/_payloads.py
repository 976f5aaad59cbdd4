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

Other payload formats (``SimOptions.payload_format``)
-----------------------------------------------------
Air sensors can also speak the formats commodity sensors send (see
docs/codecs.md); traffic lanes always send native JSON (loop detectors sit on
the city's own controllers; none of these formats is used for them). Values
carry the native encoder's resolution, so they decode to the native numbers
(SenML gases exactly up to the ppb rounding, see :data:`PPB_PER_UGM3`).

* ``"senml"`` (RFC 8428), every air sensor, on
  ``senml/<city>/<district>/air/<sensor_id>``; base name
  ``urn:dev:urbanpulse:<sensor_id>:``, ``bt`` = the timestamp (epoch s), base
  unit ``ug/m3`` for PM, gases in ``ppb`` (3 decimals), ``temp`` in ``Cel``,
  ``hum`` in ``%RH``::

      [{"bn":"urn:dev:urbanpulse:aq-x-0001:","bt":1763892000.123,"bu":"ug/m3",
        "n":"pm2_5","v":17.2},{"n":"pm10","v":24.4},{"n":"no2","u":"ppb","v":16.0},
       ...,{"n":"temp","u":"Cel","v":29.5},{"n":"hum","u":"%RH","v":81.0}]

* ``"airrohr"`` (Sensor.Community firmware), low-cost nodes only (the firmware
  has no gas sensors: reference stations keep native JSON on their native
  topic), on ``airrohr/<city>/<district>``; the id is in the payload
  (``esp8266id``, a chip number derived from the sensor, see
  :func:`airrohr_chip_ids`), so the pipeline sees the sensor as
  ``esp8266-<chip>``. Values are strings; **no timestamp** (the pipeline uses
  the receive time)::

      {"esp8266id":"4519223","software_version":"NRZ-2020-133","sensordatavalues":[
       {"value_type":"SDS_P1","value":"24.40"},{"value_type":"SDS_P2","value":"17.20"},
       {"value_type":"BME280_temperature","value":"29.50"},
       {"value_type":"BME280_humidity","value":"81.00"},{"value_type":"signal","value":"-71"}]}

* ``"ttn"`` (The Things Stack v3 uplink), every air sensor, on
  ``v3/<city>-<district>@ttn/devices/<sensor_id>/up`` (one application per
  district); ``decoded_payload`` keys ``pm2_5 pm10 no2 o3 co so2 temperature
  humidity battery`` (battery in volts, low during a ``power`` fault); one
  gateway in ``rx_metadata``; ``received_at`` is the *network's* receive time,
  i.e. the reading time without the device's clock skew. No ``frm_payload``
  or ``f_cnt`` (nothing reads them).

:func:`codec_rules_for` gives the ``[[ingest.codecs]]`` rules that decode them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from sim._fleet import MODEL_LOW_COST, Fleet, derive, unit_uniform
from sim._values import AirColumns, TrafficColumns
from urbanpulse._errors import ConfigError
from urbanpulse._schema import Kind

__all__ = [
    "PAYLOAD_FORMATS",
    "PPB_PER_UGM3",
    "PayloadFormat",
    "TimestampFormat",
    "airrohr_chip_ids",
    "codec_rules_for",
    "codec_rules_toml",
    "encode_air",
    "encode_air_airrohr",
    "encode_air_senml",
    "encode_air_ttn",
    "encode_traffic",
    "format_fixed",
    "format_streams",
    "format_timestamps",
    "format_topics",
    "object_array",
    "radio_noise",
    "wire_sensor_ids",
]

TimestampFormat = Literal["epoch_s", "iso"]
PayloadFormat = Literal["native", "senml", "airrohr", "ttn"]
PAYLOAD_FORMATS: Final[tuple[PayloadFormat, ...]] = ("native", "senml", "airrohr", "ttn")

#: ppb per ug/m3 of each gas at 25 C and 1 atm (molar volume 24.45 L/mol over
#: the molar mass), the conversion docs/codecs.md states for the decoder.
PPB_PER_UGM3: Final[dict[str, float]] = {
    "no2": 24.45 / 46.0055,
    "o3": 24.45 / 47.997,
    "co": 24.45 / 28.010,
    "so2": 24.45 / 64.066,
}

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
    return _split_full(
        full, lambda idx, gases: _air_lines(ts_ns, values, idx, ts_format, gases=gases)
    )


def object_array(items: Sequence[str] | Sequence[bytes]) -> NDArray[np.object_]:
    """A 1-D object array of ``items`` (``np.array`` would make a fixed-width string array)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _air_lines(
    ts_ns: NDArray[np.int64],
    values: AirColumns,
    idx: NDArray[np.intp],
    ts_format: TimestampFormat,
    *,
    gases: bool,
) -> list[str]:
    def col(c: NDArray[np.float64], decimals: int) -> list[str]:
        return format_fixed(c[idx], decimals)

    ts = format_timestamps(ts_ns[idx], ts_format)
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


# -- other payload formats (air sensors) ---------------------------------------------------

_AIRROHR_SOFTWARE: Final = "NRZ-2020-133"
_CHIP_SPACE: Final = 1 << 24  # ESP8266 chip ids are the MAC's last 3 bytes
_CHIP_MIN: Final = 1_000_000  # 7-8 digits, like the ids on the Sensor.Community map


@functools.cache
def _table_frac(decimals: int) -> NDArray[np.object_]:
    return np.array([f"{i:0{decimals}d}" for i in range(10**decimals)], dtype=object)


def _format_wide(values: NDArray[np.float64], decimals: int) -> list[str]:
    """Non-negative values with ``decimals`` decimals, any magnitude, by table lookup."""
    scale = 10**decimals
    q = np.rint(values * float(scale)).astype(np.int64)
    if bool((q < 0).any()):
        raise ValueError("_format_wide takes non-negative values")
    whole = format_fixed(q // scale, 0)
    frac = _table_frac(decimals)[q % scale].tolist()
    return [f"{w}.{f}" for w, f in zip(whole, frac, strict=True)]


def format_streams(fleet: Fleet, payload_format: PayloadFormat) -> NDArray[np.bool_]:
    """Which streams send ``payload_format`` (the others send native JSON).

    Air sensors, except for airrohr, whose firmware has no gas sensors: there only
    the low-cost nodes; reference stations and traffic lanes stay native.
    """
    if payload_format not in PAYLOAD_FORMATS:
        raise ConfigError(f"unknown payload format {payload_format!r}")
    air: NDArray[np.bool_] = np.asarray(fleet.kind == Kind.AIR, dtype=np.bool_)
    if payload_format == "native":
        return np.zeros(fleet.n_streams, dtype=np.bool_)
    if payload_format == "airrohr":
        return air & np.asarray(fleet.model == MODEL_LOW_COST, dtype=np.bool_)
    return air


def airrohr_chip_ids(fleet: Fleet) -> list[str]:
    """Per stream: a unique 24-bit ESP8266 chip number (decimal) hashed from the sensor,
    or "" for streams that do not send airrohr. Collisions move to the next free number."""
    used = format_streams(fleet, "airrohr")
    span = _CHIP_SPACE - _CHIP_MIN
    raw = (derive(fleet.sensor_key, 901) % np.uint64(span)).astype(np.int64).tolist()
    taken: set[int] = set()
    out: list[str] = []
    for i, hashed in enumerate(raw):
        if not used[i]:
            out.append("")
            continue
        slot = hashed
        while slot in taken:
            slot = (slot + 1) % span
        taken.add(slot)
        out.append(str(_CHIP_MIN + slot))
    return out


def wire_sensor_ids(fleet: Fleet, payload_format: PayloadFormat) -> list[str]:
    """Per stream: the sensor id the pipeline will see (``esp8266-<chip>`` for airrohr)."""
    if payload_format != "airrohr":
        return list(fleet.sensor_id)
    chips = airrohr_chip_ids(fleet)
    return [f"esp8266-{c}" if c else sid for c, sid in zip(chips, fleet.sensor_id, strict=True)]


def _ttn_app(city: str, district: str) -> str:
    return f"{city}-{district}"


def format_topics(fleet: Fleet, payload_format: PayloadFormat, prefix: str) -> list[str]:
    """MQTT topic of each stream (native ``<prefix>/...`` for streams not in the format)."""
    topics = fleet.topics(prefix)
    used = format_streams(fleet, payload_format).tolist()
    city = fleet.city
    for i in np.flatnonzero(used).tolist():
        district, sid = fleet.district(i), fleet.sensor_id[i]
        if payload_format == "senml":
            topics[i] = f"senml/{city}/{district}/air/{sid}"
        elif payload_format == "airrohr":
            topics[i] = f"airrohr/{city}/{district}"
        else:
            topics[i] = f"v3/{_ttn_app(city, district)}@ttn/devices/{sid}/up"
    return topics


def codec_rules_for(
    payload_format: PayloadFormat, city: str, districts: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The ``[[ingest.codecs]]`` rules decoding what the simulator sends in ``payload_format``.

    Each rule is a dict of ``CodecRule`` fields (``topic_filter``, ``codec``,
    ``topic_pattern``, ``tags``, ``names``), ready for a TOML file or
    ``CodecRule(**rule)``. Native needs none; TTN needs one rule per district
    (the topic names the application, not the district), so ``districts`` is
    required for it. Native topics keep working next to these rules.
    """
    if payload_format == "native":
        return []
    if payload_format == "senml":
        return [
            {
                "topic_filter": f"senml/{city}/+/air/+",
                "codec": "senml",
                "topic_pattern": "senml/{city}/{district}/{kind}/{sensor_id}",
            }
        ]
    if payload_format == "airrohr":
        return [
            {
                "topic_filter": f"airrohr/{city}/+",
                "codec": "airrohr",
                "topic_pattern": "airrohr/{city}/{district}",
                "tags": {"kind": "air"},
            }
        ]
    if payload_format == "ttn":
        if not districts:
            raise ConfigError("codec_rules_for('ttn', ...) needs the districts (a rule each)")
        return [
            {
                "topic_filter": f"v3/{_ttn_app(city, d)}@ttn/devices/+/up",
                "codec": "ttn",
                "topic_pattern": "v3/{_}/devices/{sensor_id}/up",
                "tags": {"city": city, "district": d, "kind": "air"},
                "names": {"battery": ""},
            }
            for d in districts
        ]
    raise ConfigError(f"unknown payload format {payload_format!r}")


def codec_rules_toml(rules: Sequence[dict[str, Any]]) -> str:
    """``rules`` (from :func:`codec_rules_for`) as ``[[ingest.codecs]]`` TOML tables."""

    def text(v: str) -> str:
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string

    out: list[str] = []
    for rule in rules:
        out.append("[[ingest.codecs]]")
        for key, value in rule.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{text(k)} = {text(v)}" for k, v in value.items())
                out.append(f"{key} = {{ {inner} }}" if inner else f"{key} = {{}}")
            else:
                out.append(f"{key} = {text(str(value))}")
        out.append("")
    return "\n".join(out)


def _split_full(
    full: NDArray[np.bool_],
    make: Callable[[NDArray[np.intp], bool], list[str]],
) -> list[bytes]:
    """Lines of full rows (with gases) and partial rows, merged back in row order."""
    n = full.shape[0]
    full_idx = np.flatnonzero(full)
    if full_idx.shape[0] == n:
        return _encode_lines(make(np.arange(n, dtype=np.intp), True))
    if full_idx.shape[0] == 0:
        return _encode_lines(make(np.arange(n, dtype=np.intp), False))
    lines = np.empty(n, dtype=object)
    part_idx = np.flatnonzero(~full)
    lines[full_idx] = object_array(make(full_idx, True))
    lines[part_idx] = object_array(make(part_idx, False))
    return _encode_lines(lines.tolist())


def encode_air_senml(
    ts_ns: NDArray[np.int64],
    values: AirColumns,
    *,
    full: NDArray[np.bool_],
    base_names: Sequence[str],
) -> list[bytes]:
    """SenML packs (RFC 8428) of air readings; ``base_names[i]`` is row i's ``bn``."""

    def make(idx: NDArray[np.intp], gases: bool) -> list[str]:
        bn = [base_names[i] for i in idx.tolist()]
        bt = format_timestamps(ts_ns[idx], "epoch_s")
        pm25 = format_fixed(values.pm25[idx], 1)
        pm10 = format_fixed(values.pm10[idx], 1)
        temp = format_fixed(values.temperature[idx], 2)
        rh = format_fixed(values.relative_humidity[idx], 1)
        if not gases:
            return [
                f'[{{"bn":"{n}","bt":{t},"bu":"ug/m3","n":"pm2_5","v":{a}}},'
                f'{{"n":"pm10","v":{b}}},{{"n":"temp","u":"Cel","v":{c}}},'
                f'{{"n":"hum","u":"%RH","v":{d}}}]'
                for n, t, a, b, c, d in zip(bn, bt, pm25, pm10, temp, rh, strict=True)
            ]

        def ppb(col: NDArray[np.float64], gas: str) -> list[str]:
            # The device's ug/m3 at the native resolution, expressed in ppb.
            return _format_wide(np.round(col[idx], 1) * PPB_PER_UGM3[gas], 3)

        no2, o3 = ppb(values.no2, "no2"), ppb(values.o3, "o3")
        co, so2 = ppb(values.co, "co"), ppb(values.so2, "so2")
        return [
            f'[{{"bn":"{n}","bt":{t},"bu":"ug/m3","n":"pm2_5","v":{a}}},'
            f'{{"n":"pm10","v":{b}}},{{"n":"no2","u":"ppb","v":{e}}},'
            f'{{"n":"o3","u":"ppb","v":{f}}},{{"n":"co","u":"ppb","v":{g}}},'
            f'{{"n":"so2","u":"ppb","v":{h}}},{{"n":"temp","u":"Cel","v":{c}}},'
            f'{{"n":"hum","u":"%RH","v":{d}}}]'
            for n, t, a, b, e, f, g, h, c, d in zip(
                bn, bt, pm25, pm10, no2, o3, co, so2, temp, rh, strict=True
            )
        ]

    return _split_full(full, make)


def encode_air_airrohr(
    values: AirColumns,
    *,
    chip_ids: Sequence[str],
    signal_dbm: NDArray[np.int64],
) -> list[bytes]:
    """Sensor.Community (airrohr firmware) bodies: SDS011 + BME280 values as strings,
    no timestamp; ``signal_dbm`` is the WiFi RSSI (negative)."""

    def two(col: NDArray[np.float64], decimals: int) -> list[str]:
        # The native resolution, written with the firmware's two decimals.
        return format_fixed(np.round(col, decimals), 2)

    pm10, pm25 = two(values.pm10, 1), two(values.pm25, 1)
    temp, rh = two(values.temperature, 2), two(values.relative_humidity, 1)
    sig = format_fixed(np.abs(signal_dbm), 0)
    sw = _AIRROHR_SOFTWARE
    return _encode_lines(
        [
            f'{{"esp8266id":"{c}","software_version":"{sw}","sensordatavalues":['
            f'{{"value_type":"SDS_P1","value":"{b}"}},{{"value_type":"SDS_P2","value":"{a}"}},'
            f'{{"value_type":"BME280_temperature","value":"{t}"}},'
            f'{{"value_type":"BME280_humidity","value":"{h}"}},'
            f'{{"value_type":"signal","value":"-{s}"}}]}}'
            for c, b, a, t, h, s in zip(chip_ids, pm10, pm25, temp, rh, sig, strict=True)
        ]
    )


def encode_air_ttn(
    ts_ns: NDArray[np.int64],
    values: AirColumns,
    *,
    full: NDArray[np.bool_],
    device_ids: Sequence[str],
    application_ids: Sequence[str],
    dev_euis: Sequence[str],
    gateway_ids: Sequence[str],
    battery_v: NDArray[np.float64],
    rssi_dbm: NDArray[np.int64],
    snr_db: NDArray[np.float64],
) -> list[bytes]:
    """The Things Stack v3 uplink messages; ``ts_ns`` is the network's receive time."""
    iso = format_timestamps(ts_ns, "iso")
    bat = format_fixed(battery_v, 2)
    rssi = format_fixed(np.abs(rssi_dbm), 0)
    snr = format_fixed(np.abs(snr_db), 1)
    snr_sign = np.where(np.rint(snr_db * 10.0) < 0, "-", "").tolist()

    def make(idx: NDArray[np.intp], gases: bool) -> list[str]:
        ix = idx.tolist()
        pm25 = format_fixed(values.pm25[idx], 1)
        pm10 = format_fixed(values.pm10[idx], 1)
        temp = format_fixed(values.temperature[idx], 2)
        rh = format_fixed(values.relative_humidity[idx], 1)
        if gases:
            gas = [
                f'"no2":{e},"o3":{f},"co":{g},"so2":{h},'
                for e, f, g, h in zip(
                    format_fixed(values.no2[idx], 1),
                    format_fixed(values.o3[idx], 1),
                    format_fixed(values.co[idx], 1),
                    format_fixed(values.so2[idx], 1),
                    strict=True,
                )
            ]
        else:
            gas = [""] * len(ix)
        return [
            f'{{"end_device_ids":{{"device_id":"{device_ids[i]}","application_ids":'
            f'{{"application_id":"{application_ids[i]}"}},"dev_eui":"{dev_euis[i]}"}},'
            f'"received_at":{iso[i]},"uplink_message":{{"f_port":1,"decoded_payload":'
            f'{{"pm2_5":{a},"pm10":{b},{g}"temperature":{c},"humidity":{d},'
            f'"battery":{bat[i]}}},"rx_metadata":[{{"gateway_ids":{{"gateway_id":'
            f'"{gateway_ids[i]}"}},"rssi":-{rssi[i]},"channel_rssi":-{rssi[i]},'
            f'"snr":{snr_sign[i]}{snr[i]}}}],"received_at":{iso[i]}}}}}'
            for i, a, b, g, c, d in zip(ix, pm25, pm10, gas, temp, rh, strict=True)
        ]

    return _split_full(full, make)


def radio_noise(
    fleet: Fleet, stream: NDArray[np.intp], ts_ns: NDArray[np.int64]
) -> NDArray[np.float64]:
    """A deterministic uniform [0, 1) per (stream, reading ms), for radio fluctuations."""
    with np.errstate(over="ignore"):
        key = fleet.stream_key[stream] ^ (ts_ns // 1_000_000).astype(np.uint64)
    return unit_uniform(derive(key, 907))
