"""Receive rate of the Python MQTT clients, next to the broker's own ceiling.

    python bench/bench_mqtt_clients.py [--messages 300000] [--aiomqtt-messages 60000]
                                       [--repeat 3] [--aiomqtt-repeat 1] [--path-only]

``--path-only`` times only the receive path inside the process (gmqtt's own and
``MqttOptions.fast_receive``), without broker or socket: pre-encoded MQTT 5 PUBLISH
packets are fed in 64 KiB reads to a gmqtt connection on a fake transport, with
``MessageBuffer.add`` as the handler.

Every client subscribes to ``urbanpulse/#`` at QoS 0 on the same private
Mosquitto, then the raw-socket publisher (a separate process, bench/_load.py)
pushes the same pre-encoded simulator messages as fast as the broker takes
them. A client's rate is messages received / (first publish -> last message
received), the same clock in both processes. The clients only count messages:

* ``mosquitto_sub`` (C, libmosquitto) ``-C N`` writing to a file: the ceiling;
* gmqtt through the project's ``MqttClient`` (MQTT 5, the default, and 3.1.1; with the
  fast receive path, ``MqttOptions.fast_receive``, and with gmqtt's own; per-message
  callback);
* paho-mqtt 2.x, threaded network loop (``loop_start``), ``on_message`` counting;
* aiomqtt 2.x, ``async for message in client.messages`` (on fewer messages: it is slow).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from _load import (
    CpuMeter,
    LoadPublisher,
    PacketFile,
    await_probe,
    loadavg,
    machine_info,
    mosquitto_dropped,
    print_table,
    proc_cpu_s,
    send_probe,
    sim_messages,
    start_mosquitto,
    write_packets,
)

from ingest._mqtt import MqttClient, MqttOptions

TOPIC_FILTER = "urbanpulse/#"
#: Give up when nothing arrives for this long (messages were lost).
STALL_S = 3.0


class Counter:
    """The per-message work every client does: count, note the first and last."""

    __slots__ = ("done", "n", "t_first", "t_last", "target")

    def __init__(self) -> None:
        self.n = 0
        self.target = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.done = asyncio.Event()

    def arm(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.t_first = 0.0
        self.t_last = 0.0
        self.done.clear()

    def add(self) -> None:
        self.n += 1
        if self.n == 1:
            self.t_first = time.monotonic()
        if self.n == self.target:
            self.t_last = time.monotonic()


@dataclass(frozen=True, slots=True)
class Run:
    client: str
    published: int
    received: int
    #: Seconds from the first publish to the last message received.
    seconds: float
    #: Seconds from the first to the last message received.
    first_to_last_s: float
    publisher_rate: float
    #: CPU seconds of this (the receiving) process; NaN for mosquitto_sub.
    cpu_s: float
    publisher_cpu_s: float
    broker_cpu_s: float = 0.0
    #: other processes' CPU during the run, % of one core
    other_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.published - self.received


async def _wait_count(counter: Counter, target: int) -> None:
    """Until ``target`` messages arrived, or nothing arrived for STALL_S."""
    last_n, last_change = -1, time.monotonic()
    while counter.n < target:
        await asyncio.sleep(0.005)
        if counter.n != last_n:
            last_n, last_change = counter.n, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return
    if counter.t_last == 0.0:
        counter.t_last = time.monotonic()


async def _measure(
    name: str,
    packets: PacketFile,
    port: int,
    counter: Counter,
) -> Run:
    """Probe, then publish ``packets`` and count them (the client is already subscribed)."""
    await await_probe(port, lambda: counter.n)
    await asyncio.sleep(0.05)
    publisher = LoadPublisher(packets, port)
    await publisher.astart()
    counter.arm(packets.count)
    cpu0 = time.process_time()
    publisher.go()
    await _wait_count(counter, packets.count)
    cpu = time.process_time() - cpu0
    if counter.n < packets.count:
        counter.t_last = time.monotonic() - STALL_S
    pub = await publisher.aresult()
    return Run(
        client=name,
        published=pub.sent,
        received=counter.n,
        seconds=counter.t_last - pub.t_start,
        first_to_last_s=counter.t_last - counter.t_first,
        publisher_rate=pub.rate,
        cpu_s=cpu,
        publisher_cpu_s=pub.cpu_s,
    )


async def run_gmqtt(
    packets: PacketFile, port: int, protocol: Literal["5", "3.1.1"] = "5", *, fast: bool = True
) -> Run:
    counter = Counter()
    add = counter.add

    def on_message(_topic: str, _payload: bytes, _qos: int) -> None:
        add()

    client = MqttClient(
        MqttOptions(port=port, protocol=protocol, fast_receive=fast),
        subscriptions=((TOPIC_FILTER, 0),),
        on_message=on_message,
    )
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(10)
        path = "fast receive" if fast else "gmqtt receive path"
        name = f"gmqtt 0.8 (MqttClient, MQTT {protocol}, {path})"
        return await _measure(name, packets, port, counter)
    finally:
        await client.stop()
        await task


async def run_paho(packets: PacketFile, port: int) -> Run:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counter = Counter()
    add = counter.add

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        add()

    # types-paho-mqtt (1.6 stubs, if installed) shadows paho 2.x's own annotations.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,  # type: ignore[arg-type, unused-ignore]
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(TOPIC_FILTER, 0)
    client.loop_start()
    try:
        return await _measure("paho-mqtt 2.2 (loop_start thread)", packets, port, counter)
    finally:
        client.disconnect()
        client.loop_stop()


async def run_aiomqtt(packets: PacketFile, port: int) -> Run:
    import aiomqtt

    counter = Counter()
    add = counter.add
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(TOPIC_FILTER, qos=0)

        async def consume() -> None:
            async for _message in client.messages:
                add()

        task = asyncio.create_task(consume())
        try:
            return await _measure("aiomqtt 2.5 (async for)", packets, port, counter)
        finally:
            task.cancel()


async def run_mosquitto_sub(packets: PacketFile, port: int, workdir: Path) -> Run:
    """``mosquitto_sub -C N+1`` (the +1 is the probe) into a file; lines = messages."""
    out_path = workdir / "mosquitto_sub.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                TOPIC_FILTER,
                "-q",
                "0",
                "-C",
                str(packets.count + 1),
            ],
            stdout=out,
        )
        try:
            # The probe's line proves the subscription (mosquitto_sub flushes each message).
            deadline = time.monotonic() + 10
            while out_path.stat().st_size == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("mosquitto_sub never received the probe")
                send_probe(port)
                await asyncio.sleep(0.2)
            probes = out_path.read_bytes().count(b"\n")
            publisher = LoadPublisher(packets, port)
            await publisher.astart()
            publisher.go()
            timeout_s = 120.0
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
                t_last = time.monotonic()
            except subprocess.TimeoutExpired:
                t_last = time.monotonic()
            pub = await publisher.aresult()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    received = out_path.read_bytes().count(b"\n") - probes
    return Run(
        client="mosquitto_sub 2.0.11 (C, -C N)",
        published=pub.sent,
        received=received,
        seconds=t_last - pub.t_start,
        first_to_last_s=float("nan"),
        publisher_rate=pub.rate,
        cpu_s=float("nan"),
        publisher_cpu_s=pub.cpu_s,
    )


def _fmt(x: float, spec: str = ",.0f") -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


async def main_async(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    load_before = loadavg()
    n_max = max(args.messages, args.aiomqtt_messages)
    messages = sim_messages(n_max)
    mean_payload = statistics.fmean(len(p) for _, p in messages)
    mean_topic = statistics.fmean(len(t) for t, _ in messages)
    print(
        f"{len(messages):,} simulator messages, payload {mean_payload:.0f} B, "
        f"topic {mean_topic:.0f} B (mean)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        work = Path(tmp)
        full = write_packets(messages[: args.messages], 0, work / "full")
        small = write_packets(messages[: args.aiomqtt_messages], 0, work / "small")
        server = start_mosquitto(work)
        try:
            runs: list[Run] = []
            meter = CpuMeter(server.pid)
            plan: list[tuple[str, Callable[[], Awaitable[Run]]]] = [
                ("mosquitto_sub", lambda: run_mosquitto_sub(full, server.port, work)),
                ("gmqtt MQTT 5", lambda: run_gmqtt(full, server.port, "5")),
                ("gmqtt MQTT 3.1.1", lambda: run_gmqtt(full, server.port, "3.1.1")),
                ("gmqtt 5 (gmqtt)", lambda: run_gmqtt(full, server.port, "5", fast=False)),
                ("gmqtt 3.1.1 (gmqtt)", lambda: run_gmqtt(full, server.port, "3.1.1", fast=False)),
                ("paho", lambda: run_paho(full, server.port)),
            ]
            for _ in range(args.repeat):
                for name, fn in plan:
                    broker0 = proc_cpu_s(server.pid)
                    meter.start()
                    run = await fn()
                    run = replace(
                        run,
                        broker_cpu_s=proc_cpu_s(server.pid) - broker0,
                        other_cpu=meter.other_percent(),
                    )
                    print(
                        f"  {name:20} {run.received:>8,}/{run.published:,} "
                        f"{run.rate:>10,.0f} msg/s  (other processes {run.other_cpu:.0f}% CPU)",
                        flush=True,
                    )
                    runs.append(run)
            for _ in range(args.aiomqtt_repeat):
                broker0 = proc_cpu_s(server.pid)
                meter.start()
                run = await run_aiomqtt(small, server.port)
                run = replace(
                    run,
                    broker_cpu_s=proc_cpu_s(server.pid) - broker0,
                    other_cpu=meter.other_percent(),
                )
                print(
                    f"  {'aiomqtt':16} {run.received:>8,}/{run.published:,} "
                    f"{run.rate:>10,.0f} msg/s  (other processes {run.other_cpu:.0f}% CPU)"
                )
                runs.append(run)
            dropped = mosquitto_dropped(server)
        finally:
            server.stop()

    rows: list[list[str]] = []
    for client in dict.fromkeys(r.client for r in runs):
        mine = [r for r in runs if r.client == client]
        rates = [r.rate for r in mine]
        best = max(mine, key=lambda r: r.rate)
        rows.append(
            [
                client,
                f"{best.published:,}",
                str(len(mine)),
                _fmt(best.rate),
                _fmt(statistics.median(rates)),
                f"{_fmt(min(rates))} - {_fmt(max(rates))}",
                _fmt(best.received / best.first_to_last_s if best.first_to_last_s else 0.0),
                _fmt(best.cpu_s / best.seconds * 100 if best.seconds else 0.0, ".0f"),
                _fmt(best.broker_cpu_s / best.seconds * 100 if best.seconds else 0.0, ".0f"),
                _fmt(best.publisher_cpu_s / best.seconds * 100 if best.seconds else 0.0, ".0f"),
                _fmt(best.other_cpu, ".0f"),
                _fmt(best.cpu_s / max(best.received, 1) * 1e6, ".1f"),
                f"{sum(r.lost for r in mine):,}",
                _fmt(best.publisher_rate),
            ]
        )
    print_table(
        "MQTT client receive rate (QoS 0, one process, loopback Mosquitto)",
        [
            "client",
            "messages",
            "runs",
            "msg/s (best)",
            "msg/s (median)",
            "msg/s (min - max)",
            "msg/s first->last rcv (best)",
            "receiver CPU %",
            "broker CPU %",
            "publisher CPU %",
            "other processes CPU %",
            "receiver CPU µs/msg",
            "lost (all runs)",
            "publisher msg/s",
        ],
        rows,
    )
    print(
        "msg/s = received / (first publish -> last message received); CPU % = CPU seconds / "
        "those seconds (100 = one core); columns after 'min - max' are of the fastest run; "
        "'other processes' is CPU used meanwhile by everything else on the machine. "
        f"Mean payload {mean_payload:.0f} B, topic {mean_topic:.0f} B. "
        f"Broker 'dropped' notices: {dropped}. Load average before/after: {load_before} / "
        f"{loadavg()}. Bench wall time {time.monotonic() - t0:.0f} s.",
        flush=True,
    )


class _FakeTransport:
    """Collects what the client writes (PUBACKs); never closing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


def _publish_v5(topic: bytes, payload: bytes, qos: int, mid: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += b"\x00" + payload  # empty MQTT 5 properties
    n, length = len(body), bytearray()
    while True:
        n, byte = divmod(n, 128)
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30 | qos << 1]) + bytes(length) + body


async def _path_only_once(
    stream: bytes, n: int, *, v5: bool, qos: int, fast: bool, manual: bool
) -> tuple[float, int]:
    """CPU seconds to push ``stream`` through one receive path, and PUBACK bytes written."""
    from gmqtt.mqtt.connection import MQTTConnection
    from gmqtt.mqtt.constants import MQTTv50, MQTTv311
    from gmqtt.mqtt.protocol import MQTTProtocol

    from ingest._buffer import BufferOptions, MessageBuffer

    buffer = MessageBuffer(BufferOptions(batch_max_messages=n + 1, max_buffered_messages=n + 1))
    owner = MqttClient(MqttOptions(fast_receive=fast, manual_ack=manual), on_message=buffer.add)
    client = owner._new_client()
    client._connection_state.protocol_version = MQTTv50 if v5 else MQTTv311
    transport = _FakeTransport()
    proto = MQTTProtocol(
        connection_state=client._connection_state,
        id_generator=client._package_handler.id_generator,
    )
    proto._transport = transport
    conn = MQTTConnection(transport, proto, True, 0, package_handler=client._package_handler)
    client._connection = conn
    cpu0 = time.process_time()
    buf = b""
    for i in range(0, len(stream), 65536):  # what MQTTProtocol._read_loop does per read
        buf += stream[i : i + 65536]
        buf = buf[proto._read_packet(buf) :]
    while len(buffer) < n:  # gmqtt's manual-ack path calls the handler from tasks
        await asyncio.sleep(0)
    raw = buffer.take()
    if raw.ack is not None:
        raw.ack.set_result(None)
    while len(asyncio.all_tasks()) > 1 or (qos and transport.written < n * (6 if v5 else 4)):
        await asyncio.sleep(0)
    return time.process_time() - cpu0, transport.written


def receive_path_only(n: int, repeat: int) -> None:
    """The receive path alone: pre-encoded PUBLISH packets fed as 64 KiB reads, no socket."""
    messages = sim_messages(n)
    rows: list[list[str]] = []
    for qos, manual in ((0, False), (1, False), (1, True)):
        stream = b"".join(
            _publish_v5(t.encode(), p, qos, i % 65535 + 1) for i, (t, p) in enumerate(messages)
        )
        for fast in (False, True):
            cpu = [
                asyncio.run(_path_only_once(stream, n, v5=True, qos=qos, fast=fast, manual=manual))
                for _ in range(repeat)
            ]
            acks = {w for _, w in cpu}
            ack = "" if not qos else (", ack after the batch" if manual else ", ack on receipt")
            rows.append(
                [
                    f"QoS {qos}{ack}",
                    "fast" if fast else "gmqtt",
                    f"{n:,}",
                    f"{min(c for c, _ in cpu) / n * 1e6:.2f}",
                    f"{statistics.median(c for c, _ in cpu) / n * 1e6:.2f}",
                    ", ".join(f"{w:,}" for w in sorted(acks)),
                ]
            )
            print(f"  {rows[-1][0]:28} {rows[-1][1]:6} {rows[-1][4]} µs/msg", flush=True)
    print_table(
        "Receive path only (MQTT 5, MessageBuffer.add as handler, no socket, no decode)",
        ["messages", "receive path", "count", "CPU µs/msg (best)", "(median)", "PUBACK bytes"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path-only",
        action="store_true",
        help="only time the receive path itself (gmqtt's and the fast one), no broker",
    )
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--aiomqtt-messages", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--aiomqtt-repeat", type=int, default=1)
    args = parser.parse_args()
    for key, value in machine_info():
        print(f"{key:12} {value}")
    print(flush=True)
    if args.path_only:
        receive_path_only(min(args.messages, 200_000), args.repeat)
        return
    asyncio.run(main_async(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
