"""Codec rules end to end: the pipeline subscribes to each rule's filter and stores
what a TTN uplink and an airrohr node send through real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from servers import MosquittoServer

from ingest._codecs import CodecRule
from ingest._decode import DecodeOptions
from ingest._mqtt import MqttClient, MqttOptions
from urbanpulse._pipeline import Pipeline, PipelineOptions

pytestmark = pytest.mark.integration


class ListWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: bytes) -> None:
        self.lines.extend(lines.decode().split("\n"))

    def close(self) -> None:
        return None


RULES = (
    CodecRule(
        topic_filter="v3/+/devices/+/up",
        codec="ttn",
        topic_pattern="v3/{_}/devices/{sensor_id}/up",
        tags={"city": "bandung", "district": "dago", "kind": "air"},
    ),
    CodecRule(
        topic_filter="airrohr/+/+",
        codec="airrohr",
        topic_pattern="airrohr/{city}/{district}",
        tags={"kind": "air"},
    ),
)


def test_ttn_and_airrohr_payloads_flow_through_the_broker(mosquitto: MosquittoServer) -> None:
    now = time.time()
    ttn = {
        "end_device_ids": {"device_id": "aq-bdg-07", "application_ids": {"application_id": "a"}},
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 5)),
        "uplink_message": {
            "f_port": 1,
            "decoded_payload": {"pm25": 17.2, "pm10": 24.4, "temperature": 29.5, "humidity": 81},
            "rx_metadata": [{"gateway_ids": {"gateway_id": "gw"}, "rssi": -97, "snr": 7.5}],
        },
    }
    airrohr = {
        "esp8266id": "12331981",
        "software_version": "NRZ-2020-129",
        "sensordatavalues": [
            {"value_type": "SDS_P1", "value": "24.40"},
            {"value_type": "SDS_P2", "value": "17.20"},
            {"value_type": "BME280_temperature", "value": "29.47"},
            {"value_type": "BME280_humidity", "value": "81.02"},
            {"value_type": "BME280_pressure", "value": "100613.25"},
        ],
    }
    writer = ListWriter()
    pipeline = Pipeline(
        PipelineOptions(decode=DecodeOptions(codecs=RULES), stats_interval_s=3600),
        writer=writer,
    )
    assert [f for f, _ in pipeline.subscription] == [
        "urbanpulse/+/+/+/+",
        "v3/+/devices/+/up",
        "airrohr/+/+",
    ]
    pipeline.attach_mqtt(
        MqttClient(MqttOptions(port=mosquitto.port), subscriptions=pipeline.subscription)
    )

    async def go() -> None:
        task = asyncio.create_task(pipeline.run())
        pub = MqttClient(MqttOptions(port=mosquitto.port))
        pub_task = asyncio.create_task(pub.run())
        assert pipeline.mqtt is not None
        await pipeline.mqtt.wait_connected(10)
        await pub.wait_connected(10)
        await asyncio.sleep(0.3)
        pub.publish("v3/kota-bandung-aq@ttn/devices/aq-bdg-07/up", json.dumps(ttn).encode(), qos=1)
        pub.publish("airrohr/bandung/coblong", json.dumps(airrohr).encode(), qos=1)
        deadline = time.monotonic() + 10
        while pipeline.buffer.received < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await pub.stop()
        await pub_task
        pipeline.request_stop()
        await task

    asyncio.run(go())
    raw = [line for line in writer.lines if line.startswith("air,")]
    assert len(raw) == 2, writer.lines
    by_sensor = {line.split("sensor_id=")[1].split(" ")[0]: line for line in raw}
    assert "pm25=17.2,pm10=24.4,temperature=29.5,relativeHumidity=81.0" in by_sensor["aq-bdg-07"]
    assert "district=dago" in by_sensor["aq-bdg-07"]
    line = by_sensor["esp8266-12331981"]
    assert "district=coblong" in line
    assert "pm25=17.2,pm10=24.4,temperature=29.47,relativeHumidity=81.02" in line
    flags = int(line.split("flags=")[1].split("i")[0])
    assert flags & 1  # airrohr sends no time: receive time, flagged
    assert flags & 2  # and RH 81 % marks the PM reading as a likely humid over-read
    assert pipeline.deadletters.total == 0
