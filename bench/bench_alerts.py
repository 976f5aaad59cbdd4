"""Alert delivery latency: event published on the bus -> webhook received.

Run ``python bench/bench_alerts.py``. An :class:`AlertDispatcher` runs as its own
asyncio task on an :class:`EventBus` subscription (as in the pipeline), with the
system clock, one signed webhook receiver (``group_wait_s=0``) served by a stdlib
HTTP server in a thread, and the disk outbox with fsync on (tmpfs or disk: see
``--queue-dir``). While ``--alerts`` alert ``start`` events are published (one
every ``--alert-every-s``, each a new sensor in its own district), a background
load of ``--load-eps`` events/s is published in bursts every 10 ms: ISPU
``change`` events below the alert threshold (severity INFO) over ``--load-series``
sensors, i.e. work the engine must do without alerting. Each alert event carries
its publish time; the server records arrival. Prints p50/p99/max latency and the
achieved load rate.

``--e2e``: the whole path instead. A private Mosquitto, the real ``Pipeline``
(default options, detectors on, a writer that discards) fed by ``MqttClient``, the
dispatcher on ``pipeline.bus``; the simulator's messages are published at
``--e2e-rate`` msg/s for ``--e2e-seconds`` by the raw-socket publisher in a
separate process (bench/_load.py), and every 100 ms a second MQTT client in this
process publishes one reading with PM2.5 = 1000 ug/m3 (valid for the decoder, outside the plausible
range: a ``range`` start on the first bad reading) for a new sensor. Latency
= MQTT publish of that reading -> signed webhook received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# _load puts tests/ on sys.path: import it before servers (tests/servers.py).
from _load import (  # type: ignore[import-not-found, unused-ignore]
    LoadPublisher,
    await_probe,
    sim_messages,
    start_mosquitto,
    write_packets,
)
from servers import (  # type: ignore[import-not-found, unused-ignore]
    QuietHandler,
    http_server,
)

from alerts import (
    SIGNATURE_HEADER,
    AlertDispatcher,
    AlertsConfig,
    LifecycleConfig,
    QueueConfig,
    Route,
    WebhookConfig,
    build_receivers,
)
from urbanpulse._events import Event, EventBus, Severity

SECRET = "bench"


def make_handler(
    latencies_ns: list[int], arrivals: list[tuple[str, int]] | None = None
) -> type[QuietHandler]:
    class Hook(QuietHandler):  # type: ignore[misc, unused-ignore]
        def do_POST(self) -> None:  # noqa: N802 - the stdlib handler's name
            now = time.time_ns()
            body = self.rfile.read(int(self.headers["Content-Length"]))
            want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), want)
            self.send_response(200 if ok else 401)
            self.end_headers()
            if ok:
                for alert in json.loads(body)["alerts"]:
                    if alert["status"] != "firing":
                        continue
                    if arrivals is not None:
                        arrivals.append((alert["labels"].get("sensor_id", ""), now))
                    else:
                        latencies_ns.append(now - int(alert["annotations"]["bench_ns"]))

    return Hook


def event(
    sensor: str, district: str, severity: Severity, state: str, labels: dict[str, str]
) -> Event:
    now = time.time_ns()
    return Event(
        detector="ispu" if state == "change" else "haze",
        state=state,  # type: ignore[arg-type]
        severity=severity,
        kind="air",
        city="Jakarta",
        district=district,
        sensor_id=sensor,
        metric="pm25",
        value=80.0,
        event_ns=now,
        detected_ns=now,
        message=f"{state} at {sensor}",
        labels=labels,
    )


async def run(args: argparse.Namespace, queue_dir: str) -> tuple[list[int], float, dict[str, int]]:
    latencies: list[int] = []
    with http_server(make_handler(latencies)) as server:
        cfg = AlertsConfig(
            lifecycle=LifecycleConfig(flap_transitions=0),
            routes=(
                Route(
                    name="all",
                    receivers=("hook",),
                    group_by=("district",),
                    group_wait_s=0,
                    group_interval_s=0,
                ),
            ),
            webhooks=(
                WebhookConfig(
                    name="hook", url=f"http://127.0.0.1:{server.server_port}/", secret=SECRET
                ),
            ),
            queue=QueueConfig(directory=queue_dir, fsync=not args.no_fsync),
            tick_s=0.05,
        )
        bus = EventBus()
        disp = AlertDispatcher(cfg, build_receivers(cfg))
        task = asyncio.create_task(disp.run(bus.subscribe("alerts", maxsize=1_000_000)))
        stop = asyncio.Event()
        load_sent = 0

        async def load() -> None:
            nonlocal load_sent
            per_burst = max(1, int(args.load_eps * 0.01))
            info = {"index": "ispu", "category": "Sedang"}
            i = 0
            start = time.monotonic()
            while not stop.is_set():
                batch = []
                for _ in range(per_burst):
                    sensor = f"load{i % args.load_series}"
                    batch.append(event(sensor, f"d{i % 97}", Severity.INFO, "change", info))
                    i += 1
                bus.publish(batch)
                load_sent += len(batch)
                target = start + load_sent / args.load_eps
                await asyncio.sleep(max(0.0, target - time.monotonic()))

        loader = asyncio.create_task(load())
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        sent0 = load_sent
        for k in range(args.alerts):
            now_ns = time.time_ns()
            bus.publish(
                [
                    event(
                        f"a{k}",
                        f"alert-district-{k}",
                        Severity.WARNING,
                        "start",
                        {"bench_ns": str(now_ns)},
                    )
                ]
            )
            await asyncio.sleep(args.alert_every_s)
        deadline = time.monotonic() + 10
        while len(latencies) < args.alerts and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        rate = (load_sent - sent0) / (time.monotonic() - t0)
        stop.set()
        await loader
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return latencies, rate, disp.counters()


_PIPE_KEYS = ("events", "dead_letters", "overflow", "batches", "messages_ok")


async def run_e2e(args: argparse.Namespace, work: str) -> tuple[list[int], dict[str, Any]]:
    from ingest._mqtt import MqttClient, MqttOptions
    from urbanpulse._app import NullWriter
    from urbanpulse._pipeline import Pipeline, PipelineOptions

    latencies: list[int] = []
    sent_ns: dict[str, int] = {}
    arrivals: list[tuple[str, int]] = []
    with http_server(make_handler(latencies, arrivals)) as server:
        mosq = start_mosquitto(Path(work))
        n = int(args.e2e_rate * args.e2e_seconds)
        messages = sim_messages(n, rate_per_s=args.e2e_rate)
        packets = write_packets(messages, 0, Path(work) / "packets")
        cfg = AlertsConfig(
            lifecycle=LifecycleConfig(flap_transitions=0),
            routes=(
                Route(
                    name="bench",
                    matchers=("alertname=range", "sensor_id=~alertbench-.*"),
                    receivers=("hook",),
                    group_by=("sensor_id",),
                    group_wait_s=0,
                    group_interval_s=0,
                ),
            ),
            webhooks=(
                WebhookConfig(
                    name="hook", url=f"http://127.0.0.1:{server.server_port}/", secret=SECRET
                ),
            ),
            queue=QueueConfig(directory=os.path.join(work, "q")),
            tick_s=0.05,
        )
        pipeline = Pipeline(PipelineOptions(subscribe_qos=0), writer=NullWriter())
        client = MqttClient(MqttOptions(port=mosq.port), subscriptions=pipeline.subscription)
        pipeline.attach_mqtt(client)
        disp = AlertDispatcher(cfg, build_receivers(cfg))
        alerts_task = asyncio.create_task(
            disp.run(pipeline.bus.subscribe("alerts", maxsize=100_000))
        )
        run_task = asyncio.create_task(pipeline.run())
        trigger = MqttClient(MqttOptions(port=mosq.port))
        trigger_task = asyncio.create_task(trigger.run())
        try:
            await client.wait_connected(10)
            await trigger.wait_connected(10)
            await await_probe(mosq.port, lambda: pipeline.buffer.received)
            publisher = LoadPublisher(packets, mosq.port, rate=args.e2e_rate)
            await publisher.astart()
            ok0 = pipeline.stats.messages_ok
            t0 = time.monotonic()
            publisher.go()
            k = 0
            while time.monotonic() - t0 < args.e2e_seconds:
                await asyncio.sleep(0.1)
                sensor = f"alertbench-{k:04d}"
                k += 1
                now = time.time_ns()
                body = json.dumps({"dateObserved": now / 1e9, "pm25": 1000.0}).encode()
                sent_ns[sensor] = time.time_ns()
                trigger.publish(f"urbanpulse/bandung/cibiru/air/{sensor}", body)
            pub = await publisher.aresult()
            deadline = time.monotonic() + 10
            while len(arrivals) < len(sent_ns) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            consumed = pipeline.stats.messages_ok - ok0
        finally:
            pipeline.request_stop()
            await run_task
            alerts_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alerts_task
            await trigger.stop()
            await trigger_task
            mosq.stop()
    got = [t - sent_ns[s] for s, t in arrivals if s in sent_ns]
    return got, {
        "load_rate": round(pub.rate),
        "consumed": consumed,
        "triggers": len(sent_ns),
        "alerts_received": len(got),
        "engine": dataclasses.asdict(disp.engine.stats),
        "pipeline": {k: v for k, v in pipeline.snapshot_stats().items() if k in _PIPE_KEYS},
        **disp.counters(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=300)
    parser.add_argument("--alert-every-s", type=float, default=0.02)
    parser.add_argument("--load-eps", type=float, default=10_000)
    parser.add_argument("--load-series", type=int, default=10_000)
    parser.add_argument("--queue-dir", default="", help="default: a temporary directory")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--e2e", action="store_true", help="full pipeline; see the docstring")
    parser.add_argument("--e2e-rate", type=float, default=10_000)
    parser.add_argument("--e2e-seconds", type=float, default=20)
    args = parser.parse_args()
    if args.e2e:
        with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
            got, info = asyncio.run(run_e2e(args, tmp))
        print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
        print(f"full pipeline: {info}")
        if got:
            ms = np.asarray(got, dtype=np.float64) / 1e6
            p50, p99 = np.percentile(ms, [50, 99])
            print(
                f"MQTT publish -> webhook: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"max {ms.max():.1f} ms (n={len(ms)})"
            )
        return
    with tempfile.TemporaryDirectory(dir=args.queue_dir or None) as tmp:
        latencies, rate, counters = asyncio.run(run(args, os.path.join(tmp, "q")))
    ms = np.asarray(latencies, dtype=np.float64) / 1e6
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"queue fsync: {not args.no_fsync}; background load {rate:,.0f} events/s")
    print(f"alerts delivered: {len(latencies)}/{args.alerts}; counters {counters}")
    if len(ms):
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"publish -> webhook: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms.max():.1f} ms")


if __name__ == "__main__":
    main()
