"""End to end: simulator -> Mosquitto -> Pipeline -> VictoriaMetrics, with a plain baseline.

    python bench/bench_e2e.py [--messages 600000] [--rate 40000] [--no-max] [--no-baseline]
                              [--baseline-messages 100000] [--profile] [--protocol 5|3.1.1]

Every run gets a fresh private Mosquitto-fed VictoriaMetrics (tests/servers.py),
and the raw-socket publisher (bench/_load.py, a separate process) sends the same
pre-generated simulator messages at QoS 0:

* ``pipeline @ rate``: the real ``Pipeline`` (default options: micro-batches of
  5,000 / 200 ms, 1 min and 15 min windows, raw readings written) fed by an
  attached ``MqttClient`` (gmqtt) and writing through ``InfluxV2Writer``
  (influxdb-client, /api/v2/write) in its output stage, with the publisher
  paced at ``--rate`` msg/s (the sustained-rate test);
* ``pipeline @ max``: the same with the publisher unpaced (as fast as the broker
  takes messages): the most the pipeline keeps up with;
* ``baseline``: what one would write without the project: paho-mqtt threaded
  loop, ``json.loads``, one influxdb-client ``Point`` per message (one field per
  reading) and the batching ``write_api`` (batch_size 5,000), same pacing, its own
  fresh VictoriaMetrics, on the first ``--baseline-messages`` (100,000) of the same
  messages: at ~3k msg/s all 600,000 would take over 3 minutes.

Rate = messages / (first publish -> last point written and acknowledged). Loss is
checked in the database: after ``/internal/force_flush`` every raw sample is
exported (``/api/v1/export/csv``, metric name only) and counted per metric
(``air_pm25``, ``traffic_intensity``, ...) against the readings in the payloads.
``pipeline.process only`` is the CPU ceiling of the synchronous core (decode,
windows, line protocol; no broker, no writer) on the same messages.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import json
import pstats
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
from _load import (
    CpuMeter,
    LoadPublisher,
    Message,
    PacketFile,
    VictoriaMetricsServer,
    await_probe,
    loadavg,
    machine_info,
    mosquitto_dropped,
    print_table,
    proc_cpu_s,
    sim_messages,
    start_mosquitto,
    write_packets,
)

from ingest._buffer import RawBatch
from ingest._mqtt import MqttClient, MqttOptions
from outputs._influx import InfluxV2Options, InfluxV2Writer
from urbanpulse._app import NullWriter
from urbanpulse._pipeline import Pipeline, PipelineOptions

ORG = "bench"
BUCKET = "bench"
STALL_S = 5.0
_NOT_READINGS = frozenset({"dateObserved", "laneId"})


def expected_readings(messages: list[Message]) -> collections.Counter[str]:
    """Samples VictoriaMetrics must hold per metric name (``<kind>_<field>``)."""
    out: collections.Counter[str] = collections.Counter()
    for topic, payload in messages:
        kind = topic.split("/")[3]
        for key in orjson.loads(payload):
            if key not in _NOT_READINGS:
                out[f"{kind}_{key}"] += 1
    return out


def stored_readings(vm: VictoriaMetricsServer, names: list[str]) -> collections.Counter[str]:
    """Raw samples stored per metric name (every sample exported, then counted)."""
    vm.force_flush()
    query = urllib.parse.urlencode(
        {
            "match[]": "{__name__=~" + json.dumps("|".join(sorted(names))) + "}",
            "format": "__name__",
            "start": "0",
        }
    )
    with urllib.request.urlopen(f"{vm.url}/api/v1/export/csv?{query}", timeout=120) as resp:
        body: bytes = resp.read()
    return collections.Counter(line.decode() for line in body.splitlines() if line)


def check_stored(
    run: E2ERun, vm: VictoriaMetricsServer, expected: collections.Counter[str]
) -> None:
    stored = stored_readings(vm, list(expected))
    run.stored_readings = sum(stored.values())
    run.mismatched_metrics = sorted(k for k in expected if stored[k] != expected[k])


@dataclass(slots=True)
class E2ERun:
    name: str
    published: int
    #: messages the consumer accepted (decoded ok / handled)
    consumed: int
    expected_readings: int
    #: first publish -> last point written
    seconds: float
    publisher_rate: float
    cpu_s: float
    publisher_cpu_s: float
    broker_cpu_s: float = 0.0
    vm_cpu_s: float = 0.0
    #: other processes' CPU during the run, % of one core
    other_cpu: float = 0.0
    #: filled by check_stored() once the run is over
    stored_readings: int = 0
    mismatched_metrics: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    @property
    def readings_rate(self) -> float:
        return self.stored_readings / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost_readings(self) -> int:
        return self.expected_readings - self.stored_readings


# --------------------------------------------------------------------------- the pipeline


async def run_pipeline(
    name: str,
    packets: PacketFile,
    port: int,
    vm: VictoriaMetricsServer,
    expected: collections.Counter[str],
    *,
    rate: float,
    protocol: Literal["5", "3.1.1"] = "5",
    profile: cProfile.Profile | None = None,
) -> E2ERun:
    writer = InfluxV2Writer(InfluxV2Options(url=vm.url, org=ORG, bucket=BUCKET))
    pipeline = Pipeline(PipelineOptions(subscribe_qos=0), writer=writer)
    client = MqttClient(
        MqttOptions(port=port, protocol=protocol), subscriptions=pipeline.subscription
    )
    pipeline.attach_mqtt(client)
    run_task = asyncio.create_task(pipeline.run())
    n = packets.count
    try:
        await client.wait_connected(10)
        await await_probe(port, lambda: pipeline.buffer.received)
        while pipeline.stats.batches == 0:  # the probe went through (a dead letter)
            await asyncio.sleep(0.01)
        ok0 = pipeline.stats.messages_ok
        publisher = LoadPublisher(packets, port, rate=rate)
        await publisher.astart()
        cpu0 = time.process_time()
        if profile is not None:
            profile.enable()
        publisher.go()
        last_seen, last_change = -1, time.monotonic()
        while pipeline.stats.messages_ok - ok0 < n:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if pipeline.buffer.received != last_seen:
                last_seen, last_change = pipeline.buffer.received, now
            elif now - last_change > STALL_S:
                break
        pipeline.request_stop()  # drain, flush the output stage, close the writer
        await run_task
        t_end = time.monotonic()
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu0
        pub = await publisher.aresult()
    finally:
        if not run_task.done():
            pipeline.request_stop()
            await run_task
    stats = pipeline.snapshot_stats()
    return E2ERun(
        name=name,
        published=pub.sent,
        consumed=pipeline.stats.messages_ok - ok0,
        expected_readings=sum(expected.values()),
        seconds=t_end - pub.t_start,
        publisher_rate=pub.rate,
        cpu_s=cpu,
        publisher_cpu_s=pub.cpu_s,
        notes={
            "points_written": stats["points_written"],
            "aggregates": stats["aggregates"],
            "dead_letters": stats["dead_letters"],
            "overflow": stats["overflow"],
            "write_retries": stats["write_retries"],
            "writes": pipeline.stage.stats.writes,
            "write_s": round(pipeline.stage.stats.write_seconds, 2),
            "process_s": round(pipeline.stats.process_seconds, 2),
            "batches": pipeline.stats.batches,
        },
    )


def process_only(messages: list[Message], batch: int = 5000) -> tuple[float, int]:
    """msg/s of ``Pipeline.process`` alone (decode, windows, line protocol)."""
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter())
    now = time.time_ns()
    t0 = time.perf_counter()
    for i in range(0, len(messages), batch):
        part = messages[i : i + batch]
        pipeline.process(RawBatch([t for t, _ in part], [p for _, p in part], [now] * len(part)))
    return len(messages) / (time.perf_counter() - t0), pipeline.stats.messages_ok


# --------------------------------------------------------------------------- the baseline


async def run_baseline(
    packets: PacketFile,
    port: int,
    vm: VictoriaMetricsServer,
    expected: collections.Counter[str],
    *,
    rate: float,
) -> E2ERun:
    import paho.mqtt.client as mqtt
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write.point import Point
    from influxdb_client.client.write_api import WriteOptions
    from influxdb_client.domain.write_precision import WritePrecision
    from paho.mqtt.enums import CallbackAPIVersion

    influx = InfluxDBClient(url=vm.url, token="", org=ORG)
    write_api = influx.write_api(write_options=WriteOptions(batch_size=5000, flush_interval=1000))
    ns = WritePrecision.NS
    handled = [0]  # only the paho network thread writes it

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[1] == "bench":
            handled[0] += 1  # the probe
            return
        data = json.loads(msg.payload)
        point = (
            Point(parts[3])  # type: ignore[no-untyped-call]
            .tag("city", parts[1])
            .tag("district", parts[2])
            .tag("sensor_id", parts[4])
        )
        lane = data.pop("laneId", None)
        if lane:
            point.tag("lane", str(lane))
        point.time(round(data.pop("dateObserved") * 1000) * 1_000_000, ns)
        for key, value in data.items():
            point.field(key, float(value))
        write_api.write(bucket=BUCKET, record=point)
        handled[0] += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,  # type: ignore[arg-type, unused-ignore]
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("urbanpulse/+/+/+/+", 0)
    client.loop_start()
    n = packets.count
    try:
        await await_probe(port, lambda: handled[0])
        await asyncio.sleep(0.05)
        base = handled[0]
        publisher = LoadPublisher(packets, port, rate=rate)
        await publisher.astart()
        cpu0 = time.process_time()
        publisher.go()
        last_seen, last_change = -1, time.monotonic()
        while handled[0] - base < n:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            if handled[0] != last_seen:
                last_seen, last_change = handled[0], now
            elif now - last_change > STALL_S:
                break
        consumed = handled[0] - base
        client.disconnect()
        client.loop_stop()
        await asyncio.to_thread(write_api.close)  # flushes every batch still queued
        t_end = time.monotonic()
        cpu = time.process_time() - cpu0
        pub = await publisher.aresult()
    finally:
        influx.close()  # type: ignore[no-untyped-call]
    return E2ERun(
        name="baseline: paho + json + Point + batching write_api",
        published=pub.sent,
        consumed=consumed,
        expected_readings=sum(expected.values()),
        seconds=t_end - pub.t_start,
        publisher_rate=pub.rate,
        cpu_s=cpu,
        publisher_cpu_s=pub.cpu_s,
    )


# --------------------------------------------------------------------------- main


def _fresh_vm(work: Path, name: str) -> VictoriaMetricsServer:
    vm: VictoriaMetricsServer = VictoriaMetricsServer(work / name)
    vm.start()
    return vm


async def main_async(args: argparse.Namespace) -> None:
    t_bench = time.monotonic()
    load_before = loadavg()
    messages = sim_messages(args.messages, rate_per_s=args.rate)
    expected = expected_readings(messages)
    print(
        f"{len(messages):,} simulator messages, {sum(expected.values()):,} readings "
        f"in {len(expected)} metrics",
        flush=True,
    )
    meter0 = CpuMeter()
    meter0.start()
    proc_cpu0 = time.process_time()
    proc_rate, proc_ok = process_only(messages)
    proc_other = meter0.other_percent()
    proc_cpu = (time.process_time() - proc_cpu0) / (len(messages) / proc_rate) * 100
    print(
        f"  pipeline.process only  {proc_rate:>10,.0f} msg/s ({proc_ok:,} ok)  "
        f"(other processes {proc_other:.0f}% CPU)",
        flush=True,
    )

    runs: list[E2ERun] = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        packets = write_packets(messages, 0, work / "packets")
        n_base = min(args.baseline_messages or args.messages, args.messages)
        base_packets = (
            packets
            if n_base == args.messages
            else write_packets(messages[:n_base], 0, work / "packets-baseline")
        )
        base_expected = (
            expected if n_base == args.messages else expected_readings(messages[:n_base])
        )
        broker = start_mosquitto(work)
        try:
            plan: list[tuple[str, float]] = [
                (f"pipeline @ {args.rate:,.0f} msg/s paced", args.rate)
            ]
            if not args.no_max:
                plan.append(("pipeline @ max publisher rate", 0.0))
            for name, rate in plan:
                vm = _fresh_vm(work, f"vm-{len(runs)}")
                try:
                    cpu0 = proc_cpu_s(broker.pid), proc_cpu_s(vm.pid)
                    meter = CpuMeter(broker.pid, vm.pid)
                    meter.start()
                    run = await run_pipeline(
                        name, packets, broker.port, vm, expected, rate=rate, protocol=args.protocol
                    )
                    run.broker_cpu_s = proc_cpu_s(broker.pid) - cpu0[0]
                    run.vm_cpu_s = proc_cpu_s(vm.pid) - cpu0[1]
                    run.other_cpu = meter.other_percent()
                    check_stored(run, vm, expected)
                finally:
                    vm.stop()
                runs.append(run)
                _print_run(run)
            if not args.no_baseline:
                vm = _fresh_vm(work, "vm-baseline")
                try:
                    cpu0 = proc_cpu_s(broker.pid), proc_cpu_s(vm.pid)
                    meter = CpuMeter(broker.pid, vm.pid)
                    meter.start()
                    run = await run_baseline(
                        base_packets, broker.port, vm, base_expected, rate=args.rate
                    )
                    run.broker_cpu_s = proc_cpu_s(broker.pid) - cpu0[0]
                    run.vm_cpu_s = proc_cpu_s(vm.pid) - cpu0[1]
                    run.other_cpu = meter.other_percent()
                    check_stored(run, vm, base_expected)
                    run.name += f" @ {args.rate:,.0f} msg/s paced"
                finally:
                    vm.stop()
                runs.append(run)
                _print_run(run)
            if args.profile:
                vm = _fresh_vm(work, "vm-profile")
                profile = cProfile.Profile()
                try:
                    run = await run_pipeline(
                        "pipeline @ max, under cProfile",
                        packets,
                        broker.port,
                        vm,
                        expected,
                        rate=0.0,
                        protocol=args.protocol,
                        profile=profile,
                    )
                    check_stored(run, vm, expected)
                finally:
                    vm.stop()
                _print_run(run)
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(30)
                profile_text = out.getvalue()
            dropped = mosquitto_dropped(broker)
        finally:
            broker.stop()

    rows = [
        [
            "pipeline.process only (no broker, no writer)",
            f"{len(messages):,}",
            f"{proc_rate:,.0f}",
            "-",
            "-",
            "-",
            f"{proc_cpu:.0f}",
            f"{proc_other:.0f}",
            f"{proc_cpu / 100 / proc_rate * 1e6:.1f}",
        ]
    ]
    rows.extend(
        [
            r.name,
            f"{r.published:,}",
            f"{r.rate:,.0f}",
            f"{r.readings_rate:,.0f}",
            f"{r.published - r.consumed:,} msgs, {r.lost_readings:,} readings"
            + (f" ({', '.join(r.mismatched_metrics)})" if r.mismatched_metrics else ""),
            f"{r.seconds:.1f}",
            f"{r.cpu_s / r.seconds * 100:.0f} / {r.broker_cpu_s / r.seconds * 100:.0f} / "
            f"{r.vm_cpu_s / r.seconds * 100:.0f} / {r.publisher_cpu_s / r.seconds * 100:.0f}",
            f"{r.other_cpu:.0f}",
            f"{r.cpu_s / max(r.consumed, 1) * 1e6:.1f}",
        ]
        for r in runs
    )
    print_table(
        "End to end: simulator -> Mosquitto -> consumer -> VictoriaMetrics (QoS 0)",
        [
            "consumer",
            "messages",
            "msg/s end to end",
            "readings/s stored",
            "lost (consumer, database)",
            "seconds",
            "CPU %: consumer / broker / VM / publisher",
            "other processes CPU %",
            "consumer CPU µs/msg",
        ],
        rows,
    )
    print(
        f"msg/s end to end = messages / (first publish -> last point acknowledged by "
        "VictoriaMetrics); CPU % = CPU seconds / those seconds (100 = one core); 'other "
        "processes' is what everything else on the machine used meanwhile; consumer CPU "
        "µs/msg (all its threads) is the figure that other load does not change much. "
        f"Broker 'dropped' notices: {dropped}. Load average before/after: {load_before} / "
        f"{loadavg()}. Bench wall time {time.monotonic() - t_bench:.0f} s."
    )
    if profile_text:
        print("\ncProfile of the pipeline process (event-loop thread), top 30 by own time:\n")
        print(profile_text)


def _print_run(r: E2ERun) -> None:
    print(
        f"  {r.name:52} {r.rate:>9,.0f} msg/s  consumed {r.consumed:,}/{r.published:,}  "
        f"stored {r.stored_readings:,}/{r.expected_readings:,} readings  {r.seconds:.1f} s  "
        f"other processes {r.other_cpu:.0f}% CPU  publisher {r.publisher_rate:,.0f} msg/s  "
        f"{r.notes}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600_000)
    parser.add_argument("--rate", type=float, default=40_000.0, help="paced publish rate, msg/s")
    parser.add_argument("--no-max", action="store_true", help="skip the unpaced pipeline run")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=100_000,
        help="the baseline gets the first N of the messages (it is ~10x slower); 0 = all",
    )
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    parser.add_argument(
        "--protocol", choices=["5", "3.1.1"], default="5", help="MqttOptions.protocol"
    )
    args = parser.parse_args()
    for key, value in machine_info():
        print(f"{key:12} {value}")
    print(flush=True)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
