"""Shared bench plumbing: simulator messages, a raw-socket MQTT publisher, servers.

The publisher is this file run as a script in a separate *process*
(``python bench/_load.py publish ...``), so the process being measured pays
nothing for the load: every PUBLISH packet is encoded once, before the run, into
one file (MQTT 3.1.1, QoS 0 or QoS 1 with packet ids), and the child process only
``sendall``s slices of it.

* QoS 0: the whole stream in 1 MiB ``sendall`` calls (TCP flow control from the
  broker is the only brake), or paced: every 5 ms everything due by then.
* QoS 1: the same, but at most ``window`` messages are unacknowledged: a reader
  thread counts PUBACKs (the broker sends nothing else to a client that
  subscribes to nothing). ``window`` < 65535 keeps the in-flight packet ids unique.

The parent talks to the child over its stdin/stdout: the child connects, prints
``ready``, waits for ``go`` on stdin, publishes, disconnects and prints one JSON
line with its counts and CLOCK_MONOTONIC timestamps (the same clock as
``time.monotonic()`` in the parent, so "first publish" can be compared with
"last message received" across processes).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script from anywhere: the repo root (like `python -m`) and tests/ (servers.py).
for _p in (str(ROOT / "tests"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# `servers` is tests/servers.py (the same import as tests/conftest.py). A lone
# `mypy bench/<file>` does not see tests/ on its path; the whole-project run does.
from servers import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    MosquittoServer,
    VictoriaMetricsServer,
)

__all__ = [
    "ROOT",
    "CpuMeter",
    "LoadPublisher",
    "Message",
    "MosquittoServer",
    "PacketFile",
    "PublishResult",
    "VictoriaMetricsServer",
    "await_probe",
    "cpu_busy",
    "cpu_model",
    "loadavg",
    "machine_info",
    "mosquitto_dropped",
    "print_table",
    "proc_cpu_s",
    "send_probe",
    "sim_messages",
    "start_mosquitto",
    "write_packets",
]

Message = tuple[str, bytes]

#: A topic that matches ``urbanpulse/+/+/+/+`` but is never a simulator sensor.
PROBE_TOPIC = "urbanpulse/bench/probe/air/probe-0"
PROBE_PAYLOAD = b"probe"
_CHUNK_BYTES = 1 << 20
_TICK_S = 0.005


# --------------------------------------------------------------------------- messages


def sim_messages(
    n: int,
    *,
    n_air: int = 1500,
    n_traffic: int = 500,
    seed: int = 7,
    rate_per_s: float = 40_000.0,
) -> list[Message]:
    """``n`` deterministic native payloads from the simulator (~2,300 streams).

    Event times run at ``rate_per_s`` from a start chosen so that the last one
    is a minute in the past when generated: every message passes the decoder's
    clock-skew checks, and no timestamp repeats within a stream.
    """
    from sim._runner import SimOptions, Simulator
    from urbanpulse._clock import SystemClock

    span_ns = round(n / rate_per_s * 1e9)
    start_ns = time.time_ns() - span_ns - 60 * 1_000_000_000
    options = SimOptions(
        seed=seed, n_air=n_air, n_traffic=n_traffic, rate_per_s=rate_per_s, start_ns=start_ns
    )
    return Simulator(options, SystemClock()).messages(n)


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, keepalive_s: int = 600) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, no credentials."""
    body = _utf8("MQTT") + bytes([4, 0x02]) + keepalive_s.to_bytes(2, "big") + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0) -> bytes:
    head = _utf8(topic)
    if qos:
        head += packet_id.to_bytes(2, "big")
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(head) + len(payload)) + head + payload


DISCONNECT = b"\xe0\x00"


@dataclass(frozen=True, slots=True)
class PacketFile:
    """Pre-encoded PUBLISH packets and the byte offset where each one starts."""

    path: Path
    offsets_path: Path
    count: int
    qos: int
    size: int


def write_packets(messages: Sequence[Message], qos: int, directory: Path) -> PacketFile:
    """Encode every message once; QoS 1 packet ids cycle through 1..65535."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"packets-qos{qos}.bin"
    offsets = np.empty(len(messages) + 1, dtype=np.int64)
    pos = 0
    with path.open("wb") as f:
        for i, (topic, payload) in enumerate(messages):
            packet = publish_packet(topic, payload, qos=qos, packet_id=i % 65535 + 1)
            offsets[i] = pos
            pos += len(packet)
            f.write(packet)
    offsets[len(messages)] = pos
    offsets_path = directory / f"packets-qos{qos}.offsets.npy"
    np.save(offsets_path, offsets)
    return PacketFile(path, offsets_path, len(messages), qos, pos)


# --------------------------------------------------------------------------- the child


def _publish_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="_load.py publish")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--packets", type=Path, required=True)
    parser.add_argument("--offsets", type=Path, required=True)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="msg/s; 0 = as fast as possible")
    parser.add_argument("--window", type=int, default=20_000, help="QoS 1 unacked messages")
    args = parser.parse_args(argv)

    data = memoryview(args.packets.read_bytes())
    offsets: list[int] = np.load(args.offsets).tolist()
    n = len(offsets) - 1
    window = min(max(1, args.window), 65_000)

    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.sendall(connect_packet(f"bench-load-{os.getpid()}"))
    connack = b""
    while len(connack) < 4:
        part = sock.recv(4 - len(connack))
        if not part:
            raise SystemExit("broker closed the connection before CONNACK")
        connack += part
    if connack[0] != 0x20 or connack[3] != 0:
        raise SystemExit(f"CONNACK refused: {connack!r}")

    acked = 0
    ack_error = ""

    def read_acks() -> None:
        nonlocal acked, ack_error
        got = 0
        while got < 4 * n:
            part = sock.recv(1 << 16)
            if not part:
                ack_error = f"connection closed after {got // 4} PUBACKs"
                return
            if got % 4 == 0 and part[0] != 0x40:
                ack_error = f"unexpected packet type {part[0]:#x} while waiting for PUBACKs"
                return
            got += len(part)
            acked = got // 4

    reader = threading.Thread(target=read_acks, daemon=True) if args.qos else None
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2

    t_start = time.monotonic()
    if reader is not None:
        reader.start()
    sent = 0
    rate = float(args.rate)
    while sent < n:
        if rate > 0:
            due = min(n, int((time.monotonic() - t_start) * rate) + 1)
            if due <= sent:
                time.sleep(_TICK_S)
                continue
        else:
            due = n
        if args.qos:
            while sent - acked >= window and not ack_error:
                time.sleep(0.0005)
            if ack_error:
                break
            due = min(due, acked + window)
        # At most ~1 MiB per sendall: large enough to cost ~nothing per message.
        end = min(due, bisect.bisect_right(offsets, offsets[sent] + _CHUNK_BYTES) - 1)
        end = max(end, sent + 1)
        sock.sendall(data[offsets[sent] : offsets[end]])
        sent = end
    t_sent = time.monotonic()
    if reader is not None:
        reader.join(timeout=60)
    t_end = time.monotonic()
    sock.sendall(DISCONNECT)
    sock.close()
    result = {
        "sent": sent,
        "acked": acked if args.qos else None,
        "ack_error": ack_error,
        "t_start": t_start,
        "t_sent": t_sent,
        "t_end": t_end,
        "cpu_s": time.process_time(),
    }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- the parent side


@dataclass(frozen=True, slots=True)
class PublishResult:
    sent: int
    acked: int | None
    ack_error: str
    #: CLOCK_MONOTONIC (``time.monotonic()``) of the first send / last send / last PUBACK.
    t_start: float
    t_sent: float
    t_end: float
    #: CPU seconds the publisher process used (mostly in sendall).
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.sent / max(self.t_end - self.t_start, 1e-9)


class LoadPublisher:
    """Runs ``_publish_main`` in a child process; ``start`` -> ``go`` -> ``result``."""

    def __init__(
        self,
        packets: PacketFile,
        port: int,
        *,
        host: str = "127.0.0.1",
        rate: float = 0.0,
        window: int = 20_000,
    ) -> None:
        self.packets = packets
        self._cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "publish",
            f"--host={host}",
            f"--port={port}",
            f"--packets={packets.path}",
            f"--offsets={packets.offsets_path}",
            f"--qos={packets.qos}",
            f"--rate={rate}",
            f"--window={window}",
        ]
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Spawn the child and wait until it is connected to the broker."""
        self._proc = subprocess.Popen(
            self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            self._proc.kill()
            raise RuntimeError(f"load publisher did not start: {line!r}")

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise RuntimeError("start() the load publisher first")
        return self._proc

    def go(self) -> None:
        proc = self._started()
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()

    def result(self, timeout_s: float = 300.0) -> PublishResult:
        proc = self._started()
        out, _ = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"load publisher exited with {proc.returncode}: {out!r}")
        raw = json.loads(out.strip().splitlines()[-1])
        return PublishResult(
            sent=int(raw["sent"]),
            acked=None if raw["acked"] is None else int(raw["acked"]),
            ack_error=str(raw["ack_error"]),
            t_start=float(raw["t_start"]),
            t_sent=float(raw["t_sent"]),
            t_end=float(raw["t_end"]),
            cpu_s=float(raw["cpu_s"]),
        )

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def aresult(self, timeout_s: float = 300.0) -> PublishResult:
        return await asyncio.to_thread(self.result, timeout_s)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def send_probe(port: int, *, host: str = "127.0.0.1", topic: str = PROBE_TOPIC) -> None:
    """Publish one QoS 0 probe message (to learn that a subscription is active)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(connect_packet(f"bench-probe-{os.getpid()}"))
        sock.recv(4)
        sock.sendall(publish_packet(topic, PROBE_PAYLOAD) + DISCONNECT)


async def await_probe(port: int, received: Callable[[], int], timeout_s: float = 10.0) -> None:
    """Probe until ``received()`` moves: the subscriber is then surely subscribed."""
    before = received()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.to_thread(send_probe, port)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if received() > before:
                return
    raise TimeoutError("the probe message never reached the subscriber")


# --------------------------------------------------------------------------- servers, report


def start_mosquitto(workdir: Path) -> MosquittoServer:
    """A private Mosquitto on a free loopback port (tests/servers.py config)."""
    server: MosquittoServer = MosquittoServer(workdir / "mosquitto")
    server.start()
    return server


def mosquitto_dropped(server: MosquittoServer) -> int:
    """How often the broker logged that it dropped outgoing messages."""
    try:
        text = Path(server.log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return text.count("being dropped")


def _command_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def loadavg() -> str:
    """The 1/5/15-minute load averages (other work on this machine skews the figures)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def proc_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (0.0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is fields[0]; utime and stime are stat fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU the rest of the machine used while a run went on (interference on 2 cores).

    Whole-machine busy time from /proc/stat minus the bench's own: this process,
    its reaped children (the publisher, mosquitto_sub) and the given server pids.
    """

    def __init__(self, *pids: int | None) -> None:
        self._pids = pids
        self._t0 = self._machine0 = self._own0 = 0.0

    def _own(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        servers = sum(proc_cpu_s(pid) for pid in self._pids)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + servers

    @staticmethod
    def _machine() -> float:
        total, idle = _cpu_times()
        return (total - idle) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._t0, self._machine0, self._own0 = time.monotonic(), self._machine(), self._own()

    def other_percent(self) -> float:
        """Other processes' CPU since start(), in % of one core (100 = a whole core)."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        other = (self._machine() - self._machine0) - (self._own() - self._own0)
        return max(0.0, other / wall * 100)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def cpu_busy(seconds: float = 1.0) -> float:
    """Share (%) of all cores busy over ``seconds``: what other work is using now."""
    total0, idle0 = _cpu_times()
    time.sleep(seconds)
    total1, idle1 = _cpu_times()
    return 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def machine_info() -> list[tuple[str, str]]:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def pkg(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "?"

    return [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")),
        ("CPU", f"{os.cpu_count()} cores (nproc), {cpu_model()}"),
        ("RAM", f"{mem_gib:.1f} GiB"),
        ("kernel", platform.release()),
        ("load average", loadavg()),
        ("CPU busy", f"{cpu_busy():.0f}% of all cores over 1 s before the bench (other work)"),
        ("mosquitto", _command_line(["/usr/sbin/mosquitto", "-h"])),
        ("python", platform.python_version()),
        (
            "packages",
            ", ".join(
                f"{p} {pkg(p)}"
                for p in ("gmqtt", "paho-mqtt", "aiomqtt", "orjson", "numpy", "influxdb-client")
            ),
        ),
    ]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print (and return) a Markdown table."""
    text_rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(list(headers))]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(r) for r in text_rows)
    text = "\n".join(out) + "\n"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        raise SystemExit(_publish_main(sys.argv[2:]))
    raise SystemExit("usage: python bench/_load.py publish --port P --packets F --offsets F")
