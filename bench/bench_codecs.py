"""Decode throughput per codec: the same readings encoded as native JSON, SenML,
Sensor.Community (airrohr) and The Things Stack v3 uplinks.

    python bench/bench_codecs.py [--messages 100000] [--batch 5000] [--repeat 3]

Each message carries one air sensor's PM2.5, PM10, temperature and humidity
(SenML "2 times": two reading times, 8 readings). ``NativeJsonDecoder.decode``
runs on micro-batches of ``--batch`` messages with no broker; the figure is the
best of ``--repeat`` passes over all messages (msgs/s and readings/s, where a
reading is one stored (series, metric, time) value). Payload sizes are the mean
bytes per message. Decoding only: no MQTT, windows or output. The CPU columns
(this process's CPU time, best pass) are the figures to trust on a shared,
busy machine, where wall time also counts waiting for a core.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import orjson
from _load import machine_info, print_table

from ingest._codecs import CodecRule
from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._topics import TopicPattern
from urbanpulse._batch import SeriesRegistry
from urbanpulse._clock import SystemClock

PATTERN = TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}")
AIR_TAGS = {"city": "bandung", "district": "dago", "kind": "air"}
RULES = (
    CodecRule(
        topic_filter="senml/#",
        codec="senml",
        topic_pattern="senml/{city}/{district}/{kind}/{sensor_id}",
    ),
    CodecRule(
        topic_filter="airrohr/+",
        codec="airrohr",
        topic_pattern="airrohr/{district}",
        tags={"city": "bandung", "kind": "air"},
    ),
    CodecRule(
        topic_filter="v3/+/devices/+/up",
        codec="ttn",
        topic_pattern="v3/{_}/devices/{sensor_id}/up",
        tags=AIR_TAGS,
        names={"battery": ""},
    ),
)
Message = tuple[str, bytes]
Reading = tuple[int, float, float, float, float, float]  # sensor, time s, pm25, pm10, t, rh


def readings(n: int, n_sensors: int, seed: int) -> list[Reading]:
    rng = random.Random(seed)
    now = time.time() - 120
    return [
        (
            i % n_sensors,
            now - (n - i) * 0.001,
            round(rng.uniform(5, 80), 2),
            round(rng.uniform(10, 120), 2),
            round(rng.uniform(22, 34), 2),
            round(rng.uniform(55, 95), 2),
        )
        for i in range(n)
    ]


def native(r: Reading) -> Message:
    s, t, pm25, pm10, temp, rh = r
    body = {"dateObserved": t, "pm25": pm25, "pm10": pm10, "temperature": temp}
    return f"urbanpulse/bandung/dago/air/aq-{s}", orjson.dumps(body | {"relativeHumidity": rh})


def senml(r: Reading, times: int = 1) -> Message:
    s, t, pm25, pm10, temp, rh = r
    pack: list[dict[str, object]] = []
    for k in range(times):
        dt = -60.0 * k
        first: dict[str, object] = {"n": "pm25", "v": pm25, "t": dt}
        if k == 0:
            first = {"bn": f"urn:dev:mac:0024befffe{s:06x}:", "bt": t, "bu": "ug/m3"} | first
        pack += [
            first,
            {"n": "pm10", "v": pm10, "t": dt},
            {"n": "temp", "u": "Cel", "v": temp, "t": dt},
            {"n": "hum", "u": "%RH", "v": rh, "t": dt},
        ]
    return f"senml/bandung/dago/air/aq-{s}", orjson.dumps(pack)


def airrohr(r: Reading) -> Message:
    s, _, pm25, pm10, temp, rh = r
    values = [
        ("SDS_P1", pm10),
        ("SDS_P2", pm25),
        ("BME280_temperature", temp),
        ("BME280_pressure", 100613.25),
        ("BME280_humidity", rh),
        ("signal", -71),
    ]
    body = {
        "esp8266id": str(12000000 + s),
        "software_version": "NRZ-2020-129",
        "sensordatavalues": [{"value_type": k, "value": f"{v:.2f}"} for k, v in values],
    }
    return "airrohr/dago", orjson.dumps(body)


def ttn(r: Reading) -> Message:
    s, t, pm25, pm10, temp, rh = r
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e3):03d}Z"
    body = {
        "end_device_ids": {
            "device_id": f"aq-{s}",
            "application_ids": {"application_id": "kota-bandung-aq"},
            "dev_eui": f"0004A30B00{s:06X}",
        },
        "received_at": stamp,
        "uplink_message": {
            "f_port": 1,
            "f_cnt": 1042,
            "frm_payload": "AKwA9AEnAVE=",
            "decoded_payload": {
                "pm25": pm25,
                "pm10": pm10,
                "temperature": temp,
                "humidity": rh,
                "battery": 3.61,
            },
            "rx_metadata": [
                {"gateway_ids": {"gateway_id": "gw-dago"}, "rssi": -97, "snr": 7.5},
                {"gateway_ids": {"gateway_id": "gw-coblong"}, "rssi": -104, "snr": 1.25},
            ],
            "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 9}}},
        },
    }
    return f"v3/kota-bandung-aq@ttn/devices/aq-{s}/up", orjson.dumps(body)


FORMATS: dict[str, Callable[[Reading], Message]] = {
    "native JSON": native,
    "SenML": senml,
    "SenML, 2 times": lambda r: senml(r, 2),
    "airrohr": airrohr,
    "TTN v3 uplink": ttn,
}


def measure(msgs: list[Message], batch: int, repeat: int) -> tuple[float, float, int, int]:
    """(best wall seconds, best CPU seconds of this process, readings, dead letters)
    for all messages, with a warm decoder."""
    best = best_cpu = float("inf")
    n_readings = n_dead = 0
    decoder = NativeJsonDecoder(
        DecodeOptions(codecs=RULES, max_payload_bytes=8192),
        pattern=PATTERN,
        registry=SeriesRegistry(),
        clock=SystemClock(),
    )
    for _ in range(repeat + 1):  # the first pass warms the topic and series caches
        n_readings = n_dead = 0
        start = time.perf_counter()
        start_cpu = time.process_time()
        for a in range(0, len(msgs), batch):
            chunk = msgs[a : a + batch]
            recv = [time.time_ns()] * len(chunk)
            result = decoder.decode([t for t, _ in chunk], [p for _, p in chunk], recv)
            n_readings += len(result.batch)
            n_dead += len(result.dead)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, n_readings, n_dead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sensors", type=int, default=2000)
    args = ap.parse_args()

    print_table("machine", ["", ""], machine_info())
    data = readings(args.messages, args.sensors, seed=11)
    rows = []
    for name, encode in FORMATS.items():
        msgs = [encode(r) for r in data]
        size = sum(len(p) for _, p in msgs) / len(msgs)
        seconds, cpu_s, n_readings, n_dead = measure(msgs, args.batch, args.repeat)
        if n_dead:
            raise SystemExit(f"{name}: {n_dead} messages dead-lettered; the bench data is wrong")
        rows.append(
            [
                name,
                f"{size:,.0f}",
                f"{len(msgs) / seconds:,.0f}",
                f"{n_readings / seconds:,.0f}",
                f"{seconds / len(msgs) * 1e6:.1f}",
                f"{len(msgs) / cpu_s:,.0f}",
                f"{cpu_s / len(msgs) * 1e6:.1f}",
            ]
        )
    print_table(
        f"decode throughput ({args.messages:,} messages, {args.sensors:,} sensors, "
        f"batches of {args.batch:,}, best of {args.repeat})",
        ["format", "bytes/msg", "msgs/s", "readings/s", "us/msg", "msgs/CPU-s", "CPU us/msg"],
        rows,
    )


if __name__ == "__main__":
    main()
