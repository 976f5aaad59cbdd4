"""Helpers for tests that run the real `urbanpulse` process against real servers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from reference import (
    AIR_FIELDS,
    TRAFFIC_FIELDS,
    Reading,
    expected_readings,
    expected_windows,
    window_label,
)
from servers import MosquittoServer, VictoriaMetricsServer

from ingest._mqtt import BackoffOptions, MqttClient, MqttOptions
from sim._runner import SimOptions, Simulator
from urbanpulse._clock import ManualClock

__all__ = [
    "GRACE_MS",
    "IDLE_MS",
    "START_NS",
    "LogReader",
    "PipelineProcess",
    "check_store",
    "city_messages",
    "pipeline_env",
    "publish_reliably",
    "stored_aggregates",
    "stored_readings",
    "urbanpulse_env",
]

GRACE_MS, IDLE_MS = 10_000, 300_000
#: A fixed quarter-hour twelve hours back, so every window of a stream is whole.
START_NS = (time.time_ns() - 12 * 3600 * 10**9) // (900 * 10**9) * (900 * 10**9)


def urbanpulse_env(**values: str) -> dict[str, str]:
    """The environment with every URBANPULSE_* replaced by ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBANPULSE_")}
    env["URBANPULSE_WEB__PORT"] = "0"  # an ephemeral port: tests run several processes
    env.update({f"URBANPULSE_{k}": v for k, v in values.items()})
    return env


class LogReader:
    """Collects the JSON log lines of a process in a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.text.append(line)
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue

    def last_stats(self) -> dict[str, Any] | None:
        for rec in reversed(self.lines):
            if "stats" in rec:
                stats: dict[str, Any] = rec["stats"]
                return stats
        return None

    def has(self, msg: str) -> bool:
        return any(r.get("msg") == msg for r in self.lines)

    def join(self) -> None:
        self._thread.join(10)


class PipelineProcess:
    """`python -m urbanpulse.cli run` with its JSON logs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.logs: LogReader | None = None

    def start(self, *, wait_connected_s: float = 20) -> PipelineProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "urbanpulse.cli", "run"],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.logs = LogReader(self.proc.stderr)
        self.wait_for(lambda: self.logs is not None and self.logs.has("mqtt connected"),
                      wait_connected_s, "mqtt connected")  # fmt: skip
        return self

    def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"pipeline exited ({self.proc.returncode}): {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.output()[-4000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return "".join(self.logs.text) if self.logs else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.logs:
            self.logs.join()

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        if self.logs:
            self.logs.join()
        return code

    def final_stats(self) -> dict[str, Any]:
        assert self.logs is not None
        finals = [r for r in self.logs.lines if r.get("msg") == "final"]
        assert finals, self.output()[-3000:]
        stats: dict[str, Any] = finals[-1]["stats"]
        return stats

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def _publish_reliably_async(
    port: int, msgs: list[tuple[str, bytes]], rate_per_s: float, chunk: int
) -> int:
    """QoS 1, chunk by chunk: a chunk counts once the broker acknowledged all of it
    on one connection; otherwise (a broker restart) it is published again."""
    client = MqttClient(MqttOptions(port=port, backoff=BackoffOptions(initial_s=0.05, max_s=0.5)))
    task = asyncio.create_task(client.run())
    sent = 0
    try:
        await client.wait_connected(30)
        i = 0
        started = time.monotonic()
        while i < len(msgs):
            part = msgs[i : i + chunk]
            connects = client.stats.connects
            ok = True
            for topic, payload in part:
                if not client.publish(topic, payload, qos=1):
                    ok = False
                    break
                sent += 1
            deadline = time.monotonic() + 20
            while ok and client.inflight() > 0:
                if client.stats.connects != connects or not client.connected:
                    ok = False
                    break
                if time.monotonic() > deadline:
                    ok = False
                    break
                await asyncio.sleep(0.005)
            if not ok or client.stats.connects != connects:
                await client.wait_connected(60)
                continue  # the same chunk again
            i += len(part)
            due = started + i / rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await client.stop()
        await task
    return sent


def publish_reliably(
    port: int, msgs: list[tuple[str, bytes]], *, rate_per_s: float = 2000, chunk: int = 200
) -> int:
    return asyncio.run(_publish_reliably_async(port, msgs, rate_per_s, chunk))


def stored_readings(
    vm: VictoriaMetricsServer, city: str
) -> dict[tuple[str, str, int, str, int], set[float]]:
    """Raw samples in VictoriaMetrics: (kind, sensor, lane, field, ts_ms) -> values seen."""
    names = "|".join([f"air_{f}" for f in AIR_FIELDS] + [f"traffic_{f}" for f in TRAFFIC_FIELDS])
    out: dict[tuple[str, str, int, str, int], set[float]] = {}
    for row in vm.export(f'{{__name__=~"{names}",city="{city}"}}'):
        metric = row["metric"]
        kind, _, field = metric["__name__"].partition("_")
        lane = int(metric.get("lane", 0))
        for value, ts_ms in zip(row["values"], row["timestamps"], strict=True):
            out.setdefault((kind, metric["sensor_id"], lane, field, ts_ms), set()).add(value)
    return out


def expected_vm_readings(
    readings: list[Reading],
) -> dict[tuple[str, str, int, str, int], set[float]]:
    out: dict[tuple[str, str, int, str, int], set[float]] = {}
    for r in readings:
        out.setdefault((r.kind, r.sensor_id, r.lane, r.field, r.ts_ns // 1_000_000), set()).add(
            r.value
        )
    return out


def stored_aggregates(
    vm: VictoriaMetricsServer, city: str, window_ms: int
) -> dict[tuple[str, str, int, int], dict[str, set[float]]]:
    label = window_label(window_ms)
    out: dict[tuple[str, str, int, int], dict[str, set[float]]] = {}
    for row in vm.export(f'{{__name__=~"(air|traffic)_{label}_.*",city="{city}"}}'):
        metric = row["metric"]
        kind, _, rest = metric["__name__"].partition("_")
        field_stat = rest.removeprefix(f"{label}_")
        lane = int(metric.get("lane", 0))
        for value, ts_ms in zip(row["values"], row["timestamps"], strict=True):
            key = (kind, metric["sensor_id"], lane, ts_ms * 1_000_000)
            out.setdefault(key, {}).setdefault(field_stat, set()).add(value)
    return out


def city_messages(
    city: str, n: int, *, seed: int, n_air: int, n_traffic: int
) -> list[tuple[str, bytes]]:
    """A seeded simulator stream from START_NS, its topics moved to ``city``."""
    sim = Simulator(
        SimOptions(seed=seed, n_air=n_air, n_traffic=n_traffic, start_ns=START_NS),
        ManualClock(START_NS),
    )
    return [(t.replace("/bandung/", f"/{city}/", 1), p) for t, p in sim.messages(n)]


def pipeline_env(
    mq: MosquittoServer,
    vm: VictoriaMetricsServer,
    tmp: Path,
    *,
    client_id: str,
    **extra: str,
) -> dict[str, str]:
    """`urbanpulse run` at QoS 1 with a persistent session and a spool, writing to ``vm``."""
    return urbanpulse_env(
        MQTT__PORT=str(mq.port),
        MQTT__QOS="1",
        MQTT__CLIENT_ID=client_id,
        MQTT__CLEAN_START="false",
        MQTT__SESSION_EXPIRY_S="3600",
        MQTT__RECONNECT_INITIAL_S="0.1",
        MQTT__RECONNECT_MAX_S="1",
        OUTPUT__KIND="influx2",
        OUTPUT__INFLUX2__URL=vm.url,
        OUTPUT__BATCH_MAX_MS="200",
        OUTPUT__RETRY_INITIAL_S="0.2",
        OUTPUT__RETRY_MAX_S="1",
        SPOOL__DIRECTORY=str(tmp / "spool"),
        SPOOL__CHECKPOINT_INTERVAL_S="1",
        STATE_DIR=str(tmp / "state"),
        WINDOWS__GRACE_MS=str(GRACE_MS),
        WINDOWS__IDLE_MS=str(IDLE_MS),
        LOG__FORMAT="json",
        LOG__STATS_INTERVAL_S="0.3",
        **extra,
    )


def check_store(vm: VictoriaMetricsServer, city: str, msgs: list[tuple[str, bytes]]) -> None:
    """Stored raw readings and closed windows equal the offline reference of ``msgs``."""
    vm.force_flush()
    readings = expected_readings(msgs)
    want = expected_vm_readings(readings)
    got = stored_readings(vm, city)
    assert len(got) == len(want), f"stored {len(got)} unique readings, published {len(want)}"
    assert got == want
    newest = max(r.ts_ns for r in readings)
    for window_ms in (60_000, 900_000):
        want_w = expected_windows(readings, window_ms=window_ms, grace_ms=GRACE_MS, idle_ms=IDLE_MS)
        assert want_w
        got_w = stored_aggregates(vm, city, window_ms)
        extra, missing = sorted(set(got_w) - set(want_w)), sorted(set(want_w) - set(got_w))
        assert not extra, (window_ms, extra[:3], newest)
        assert not missing, (window_ms, missing[:3], newest)
        for key, fields in want_w.items():
            row = got_w[key]
            for field, stats in fields.items():
                assert row[f"{field}_count"] == {stats.count}, (key, field)
                for stat in ("min", "max", "first", "last"):
                    assert row[f"{field}_{stat}"] == {getattr(stats, stat)}, (key, field, stat)
                (mean,) = row[f"{field}_mean"]
                assert math.isclose(mean, stats.mean, rel_tol=1e-9), (key, field)
