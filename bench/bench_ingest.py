"""Ingest throughput: receive + decode + validate in one process, and decode alone.

    python bench/bench_ingest.py [--messages 300000] [--repeat 3] [--qos1-messages 300000]
                                 [--protocol 5|3.1.1] [--receive fast|gmqtt|both]
                                 [--no-manual-ack]

* decode only: ``NativeJsonDecoder.decode`` on micro-batches of 5,000 of the same
  simulator messages, no broker (orjson per payload, one pydantic-core validation
  per batch and kind, numpy columns, range and clock-skew checks);
* receive + decode: the project's ``MqttClient`` (gmqtt) feeding ``MessageBuffer``
  (the pipeline's own handler, ``buffer.add``), and a consumer task that takes each
  micro-batch and decodes it, in one process and one event loop, exactly as
  ``Pipeline.run`` does minus windows and output. The raw-socket publisher runs in
  a separate process (bench/_load.py) as fast as the broker takes messages. Rate =
  messages decoded / (first publish -> last message decoded); messages lost =
  published - (decoded + dead-lettered), and must be 0;
* the same at QoS 1 end to end: the publisher sends QoS 1 (PUBACK window 20,000)
  and the subscription is QoS 1, acknowledged on receipt;
* and QoS 1 with ``manual_ack`` (what the pipeline does with the spool on): each
  message is acknowledged only once its micro-batch is decoded (the consumer
  resolves the batch's ``RawBatch.ack`` future), receive maximum 65,535.

``--receive`` picks the receive path of ``MqttClient``: ``fast`` (the default,
``MqttOptions.fast_receive``: PUBLISH framing and parsing in ingest/_mqtt.py),
``gmqtt`` (gmqtt's own per-packet path) or ``both`` (every run for each, interleaved,
to compare them under the same machine load).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from _load import (
    CpuMeter,
    LoadPublisher,
    Message,
    PacketFile,
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

from ingest._buffer import BufferOptions, MessageBuffer
from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._mqtt import MqttClient, MqttOptions
from ingest._topics import TopicPattern
from urbanpulse._batch import SeriesRegistry
from urbanpulse._clock import SystemClock

PATTERN = "urbanpulse/{city}/{district}/{kind}/{sensor_id}"
BATCH = 5000
STALL_S = 3.0


def new_decoder() -> NativeJsonDecoder:
    return NativeJsonDecoder(
        DecodeOptions(),
        pattern=TopicPattern.compile(PATTERN),
        registry=SeriesRegistry(),
        clock=SystemClock(),
    )


@dataclass(frozen=True, slots=True)
class DecodeOnly:
    messages: int
    ok: int
    readings: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def decode_only(messages: list[Message]) -> DecodeOnly:
    decoder = new_decoder()
    topics = [t for t, _ in messages]
    payloads = [p for _, p in messages]
    now = time.time_ns()
    recv = [now] * len(messages)
    ok = readings = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(messages), BATCH):
        result = decoder.decode(topics[i : i + BATCH], payloads[i : i + BATCH], recv[i : i + BATCH])
        ok += result.messages_ok
        readings += len(result.batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return DecodeOnly(len(messages), ok, readings, seconds, cpu)


@dataclass(frozen=True, slots=True)
class IngestRun:
    qos: int
    #: "fast" or "gmqtt" (MqttOptions.fast_receive)
    receive: str
    manual_ack: bool
    published: int
    received: int
    ok: int
    dead: int
    readings: int
    overflow: int
    #: first publish -> last message decoded (CLOCK_MONOTONIC, both processes)
    seconds: float
    #: first message received -> last message decoded
    first_to_last_s: float
    publisher_rate: float
    cpu_s: float
    batches: int
    publisher_cpu_s: float
    broker_cpu_s: float = 0.0
    #: other processes' CPU during the run, % of one core
    other_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.published - self.ok - self.dead

    @property
    def label(self) -> str:
        ack = (
            ""
            if not self.qos
            else (", ack after decode" if self.manual_ack else ", ack on receipt")
        )
        return f"QoS {self.qos}{ack}, {self.receive} receive"


async def receive_and_decode(
    packets: PacketFile,
    port: int,
    protocol: Literal["5", "3.1.1"],
    *,
    receive: str = "fast",
    manual_ack: bool = False,
) -> IngestRun:
    qos = packets.qos
    buffer = MessageBuffer(BufferOptions(batch_max_messages=BATCH, batch_max_ms=200))
    decoder = new_decoder()
    client = MqttClient(
        MqttOptions(
            port=port,
            protocol=protocol,
            fast_receive=receive == "fast",
            manual_ack=manual_ack,
            receive_maximum=65535 if manual_ack else None,
        ),
        subscriptions=(("urbanpulse/#", qos),),
        on_message=buffer.add,
    )
    mqtt_task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(10)
        await await_probe(port, lambda: buffer.received)
        await asyncio.sleep(0.05)
        buffer.take()  # the probe(s)
        received0 = buffer.received
        publisher = LoadPublisher(packets, port)
        await publisher.astart()
        n = packets.count
        ok = dead = readings = batches = 0
        t_first = 0.0
        last_seen, last_change = -1, time.monotonic()
        cpu0 = time.process_time()
        publisher.go()
        while ok + dead < n:
            await buffer.wait_batch()
            if len(buffer):
                raw = buffer.take()
                if not t_first:
                    # recv_ns is wall time; convert the first one to the monotonic clock.
                    t_first = time.monotonic() - (time.time_ns() - raw.recv_ns[0]) / 1e9
                result = decoder.decode(raw.topics, raw.payloads, raw.recv_ns)
                if raw.ack is not None:
                    raw.ack.set_result(None)  # decoded: acknowledge the batch
                ok += result.messages_ok
                dead += len(result.dead)
                readings += len(result.batch)
                batches += 1
            now = time.monotonic()
            if buffer.received != last_seen:
                last_seen, last_change = buffer.received, now
            elif now - last_change > STALL_S:
                break
        t_end = time.monotonic() if ok + dead >= n else last_change
        cpu = time.process_time() - cpu0
        pub = await publisher.aresult()
        return IngestRun(
            qos=qos,
            receive=receive,
            manual_ack=manual_ack,
            published=pub.sent,
            received=buffer.received - received0,
            ok=ok,
            dead=dead,
            readings=readings,
            overflow=buffer.overflow,
            seconds=t_end - pub.t_start,
            first_to_last_s=t_end - t_first,
            publisher_rate=pub.rate,
            cpu_s=cpu,
            batches=batches,
            publisher_cpu_s=pub.cpu_s,
        )
    finally:
        await client.stop()
        await mqtt_task


async def main_async(args: argparse.Namespace) -> None:
    t_bench = time.monotonic()
    load_before = loadavg()
    n = max(args.messages, args.qos1_messages)
    messages = sim_messages(n)
    print(f"{len(messages):,} simulator messages", flush=True)

    decode_runs: list[DecodeOnly] = []
    decode_other: list[float] = []
    meter0 = CpuMeter()
    for _ in range(args.repeat):
        meter0.start()
        d = decode_only(messages[: args.messages])
        decode_runs.append(d)
        decode_other.append(meter0.other_percent())
        print(
            f"  decode only   {d.rate:>10,.0f} msg/s  ok {d.ok:,}  "
            f"(other processes {decode_other[-1]:.0f}% CPU)",
            flush=True,
        )

    runs: list[IngestRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        q0 = write_packets(messages[: args.messages], 0, work / "q0")
        q1 = write_packets(messages[: args.qos1_messages], 1, work / "q1")
        server = start_mosquitto(work)
        meter = CpuMeter(server.pid)
        try:
            paths = ["fast", "gmqtt"] if args.receive == "both" else [args.receive]
            kinds = [(q0, False), (q1, False)] + ([(q1, True)] if args.manual_ack else [])
            for _ in range(args.repeat):
                for (packets, manual), receive in itertools.product(kinds, paths):
                    broker0 = proc_cpu_s(server.pid)
                    meter.start()
                    run = await receive_and_decode(
                        packets, server.port, args.protocol, receive=receive, manual_ack=manual
                    )
                    run = replace(
                        run,
                        broker_cpu_s=proc_cpu_s(server.pid) - broker0,
                        other_cpu=meter.other_percent(),
                    )
                    print(
                        f"  {run.label:<44} {run.rate:>10,.0f} msg/s  "
                        f"{run.cpu_s / max(run.ok, 1) * 1e6:5.1f} CPU µs/msg  "
                        f"ok {run.ok:,}/{run.published:,}  lost {run.lost:,}  "
                        f"(other processes {run.other_cpu:.0f}% CPU)",
                        flush=True,
                    )
                    runs.append(run)
            dropped = mosquitto_dropped(server)
        finally:
            server.stop()

    rows: list[list[str]] = []
    i_best = max(range(len(decode_runs)), key=lambda i: decode_runs[i].rate)
    best_d = decode_runs[i_best]
    rows.append(
        [
            "decode + validate only (no broker)",
            f"{best_d.messages:,}",
            f"{best_d.rate:,.0f}",
            f"{statistics.median(d.rate for d in decode_runs):,.0f}",
            f"{min(d.rate for d in decode_runs):,.0f} - {max(d.rate for d in decode_runs):,.0f}",
            f"{best_d.readings / best_d.seconds:,.0f}",
            "-",
            f"{best_d.messages - best_d.ok:,} refused",
            f"{best_d.cpu_s / best_d.seconds * 100:.0f}",
            "-",
            "-",
            f"{decode_other[i_best]:.0f}",
            f"{best_d.cpu_s / best_d.messages * 1e6:.1f}",
            f"{statistics.median(d.cpu_s / d.messages * 1e6 for d in decode_runs):.1f}",
        ]
    )
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        rates = [r.rate for r in mine]
        best = max(mine, key=lambda r: r.rate)
        rows.append(
            [
                f"MqttClient (MQTT {args.protocol}) + MessageBuffer + decode, {label}",
                f"{best.published:,}",
                f"{best.rate:,.0f}",
                f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f} - {max(rates):,.0f}",
                f"{best.readings / best.seconds:,.0f}",
                f"{best.ok / best.first_to_last_s:,.0f}",
                f"{sum(r.lost for r in mine):,} lost, {sum(r.dead for r in mine):,} refused, "
                f"{sum(r.overflow for r in mine):,} overflow",
                f"{best.cpu_s / best.seconds * 100:.0f}",
                f"{best.broker_cpu_s / best.seconds * 100:.0f}",
                f"{best.publisher_cpu_s / best.seconds * 100:.0f}",
                f"{best.other_cpu:.0f}",
                f"{best.cpu_s / max(best.ok, 1) * 1e6:.1f}",
                f"{statistics.median(r.cpu_s / max(r.ok, 1) * 1e6 for r in mine):.1f}",
            ]
        )
    print_table(
        "Ingest: receive + decode + validate, one process",
        [
            "stage",
            "messages",
            "msg/s (best)",
            "msg/s (median)",
            "msg/s (min - max)",
            "readings/s (best)",
            "msg/s first rcv -> last decoded (best)",
            "loss (all runs)",
            "CPU % of this process",
            "broker CPU %",
            "publisher CPU %",
            "other processes CPU %",
            "CPU µs/msg of this process (best run)",
            "CPU µs/msg (median of runs)",
        ],
        rows,
    )
    for r in runs:
        print(
            f"{r.label}: published {r.published:,} (publisher {r.publisher_rate:,.0f} msg/s), "
            f"received {r.received:,}, decoded ok {r.ok:,}, dead {r.dead:,}, "
            f"{r.batches} batches (mean {r.received / max(r.batches, 1):,.0f}), "
            f"{r.seconds:.2f} s"
        )
    print(
        f"Runs: {args.repeat} per row; columns after 'min - max' are of the fastest run; CPU % "
        "= CPU seconds / run seconds (100 = one core); 'other processes' is what everything "
        "else on the machine used meanwhile. "
        f"Broker 'dropped' notices: {dropped}. "
        f"Load average before/after: {load_before} / {loadavg()}. "
        f"Bench wall time {time.monotonic() - t_bench:.0f} s."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--qos1-messages", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--protocol", choices=["5", "3.1.1"], default="5", help="MqttOptions.protocol"
    )
    parser.add_argument(
        "--receive",
        choices=["fast", "gmqtt", "both"],
        default="both",
        help="MqttOptions.fast_receive: True (fast), False (gmqtt), or each in turn",
    )
    parser.add_argument(
        "--no-manual-ack",
        dest="manual_ack",
        action="store_false",
        help="skip the QoS 1 runs that acknowledge after decoding (manual_ack)",
    )
    args = parser.parse_args()
    for key, value in machine_info():
        print(f"{key:12} {value}")
    print(flush=True)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
