"""The web server next to a running pipeline fed through a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from servers import MosquittoServer

from ingest._mqtt import MqttClient, MqttOptions
from sim import SimOptions, Simulator, bundled_cities
from urbanpulse._app import MqttPublisher, NullWriter
from urbanpulse._clock import SystemClock
from urbanpulse._pipeline import Pipeline, PipelineOptions
from web import WebOptions, WebServer

CITY = bundled_cities()["sindangraja"]


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def _next_update(reader: asyncio.StreamReader) -> dict[str, object]:
    while True:
        block = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        if block.startswith(b"event: update"):
            doc: dict[str, object] = json.loads(block.split(b"data: ", 1)[1])
            return doc


def test_ready_with_a_broker_and_live_over_mqtt(mosquitto: MosquittoServer) -> None:
    clock = SystemClock()
    opts = PipelineOptions(subscribe_qos=1, stats_interval_s=3600, index_interval_s=0)
    pipeline = Pipeline(opts, writer=NullWriter(), clock=clock)
    pipeline.attach_mqtt(
        MqttClient(MqttOptions(port=mosquitto.port), subscriptions=pipeline.subscription)
    )
    server = WebServer(WebOptions(port=0, sensors_file=CITY), pipeline)
    sim = Simulator(SimOptions(city_file=str(CITY), start_ns=clock.now_ns() - 600 * 10**9), clock)
    msgs = sim.messages(200)
    latencies: list[float] = []

    async def go() -> None:
        web_task = asyncio.create_task(server.serve())
        pipe_task = asyncio.create_task(pipeline.run())
        publisher = MqttClient(MqttOptions(port=mosquitto.port))
        pub_task = asyncio.create_task(publisher.run())
        try:
            assert pipeline.mqtt is not None
            await pipeline.mqtt.wait_connected(10)
            await publisher.wait_connected(10)
            while not server.listening:
                await asyncio.sleep(0.01)
            port = server.port
            status, body = await _get(port, "/readyz")
            assert status == 200, body
            await asyncio.sleep(0.3)  # SUBACK
            out = MqttPublisher(publisher)
            for topic, payload in msgs:
                await out.publish(topic, payload, qos=1)
            await out.flush()
            deadline = time.monotonic() + 20
            while pipeline.buffer.received < len(msgs) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"event: snapshot")
            await reader.readuntil(b"\n\n")
            topic = "urbanpulse/sindangraja/cikaso/air/aq-cikaso-01"
            for i in range(3):
                pm = 40.0 + i
                doc = {"dateObserved": time.time(), "pm25": pm}
                started = time.perf_counter()
                await out.publish(topic, json.dumps(doc).encode(), qos=1)
                while True:
                    upd = await _next_update(reader)
                    live = upd["live"]
                    assert isinstance(live, dict)
                    if "aq-cikaso-01" in live["id"]:
                        row = live["id"].index("aq-cikaso-01")
                        if live["values"]["pm25"][row] == pm:
                            break
                latencies.append(time.perf_counter() - started)
            writer.close()
            status, body = await _get(port, "/api/sensors/aq-cikaso-01")
            assert status == 200
            assert json.loads(body)["values"]["pm25"] == 42.0
            status, body = await _get(port, "/metrics")
            assert f"urbanpulse_messages_received_total {len(msgs) + 3}" in body.decode()
            assert "urbanpulse_mqtt_connected 1" in body.decode()
        finally:
            await publisher.stop()
            await pub_task
            pipeline.request_stop()
            await pipe_task
            web_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await web_task

    asyncio.run(go())
    # publish -> broker -> micro-batch -> process -> next tick (0.5 s) -> client
    assert max(latencies) < 1.0, latencies
    print(f"MQTT publish -> SSE update, s: {[round(x, 3) for x in latencies]}")
