"""The pipeline runtime: MQTT -> buffer -> decode -> windows -> line protocol -> output.

Data flows one way. ``Pipeline.process`` is the synchronous, broker-free core
(one raw micro-batch in, encoded line protocol out) that tests drive directly;
``Pipeline.run`` wraps it with the MQTT client, the output stage, periodic
stats and a graceful stop that flushes everything buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest._buffer import BufferOptions, MessageBuffer, RawBatch
from ingest._deadletter import DeadLetterSink
from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._mqtt import MqttClient
from ingest._topics import TopicPattern
from outputs._influx import LineWriter
from outputs._lineprotocol import TagCache, encode_aggregates, encode_readings
from outputs._stage import OutputStage, StageOptions
from processors._windows import MultiWindows, WindowSpec
from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import Clock, SystemClock
from urbanpulse._errors import UrbanPulseError
from urbanpulse._schema import Kind, ReadingFlag

__all__ = ["Pipeline", "PipelineOptions", "PipelineStats", "ProcessResult"]

log = logging.getLogger("urbanpulse.pipeline")

_STATE_FILE = "windows.npz"
_REGISTRY_FILE = "series.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    topic_pattern: str = "urbanpulse/{city}/{district}/{kind}/{sensor_id}"
    deadletter_prefix: str = "urbanpulse/_deadletter"
    deadletter_qos: int = 0
    subscribe_qos: int = 0
    buffer: BufferOptions = field(default_factory=BufferOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    windows: tuple[WindowSpec, ...] = (
        WindowSpec(window_ms=60_000, grace_ms=10_000),
        WindowSpec(window_ms=900_000, grace_ms=10_000),
    )
    stage: StageOptions = field(default_factory=StageOptions)
    write_raw: bool = True
    #: Where open windows and the series registry are checkpointed on a clean
    #: stop and restored from on start; None keeps no state across runs.
    state_dir: Path | None = None
    shutdown_timeout_s: float = 30.0
    stats_interval_s: float = 10.0


@dataclass(slots=True)
class PipelineStats:
    batches: int = 0
    messages_ok: int = 0
    readings: int = 0
    late_readings: int = 0
    aggregates: dict[int, int] = field(default_factory=dict)
    points_skipped: int = 0
    process_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What one micro-batch produced (for tests and the output stage)."""

    batch: ReadingBatch
    lines: list[tuple[bytes, int]]
    closed: dict[int, int]


class Pipeline:
    def __init__(
        self,
        options: PipelineOptions,
        *,
        writer: LineWriter,
        clock: Clock | None = None,
    ) -> None:
        self.options = options
        self.clock = clock or SystemClock()
        self.registry = SeriesRegistry()
        self.pattern = TopicPattern.compile(options.topic_pattern)
        self.decoder = NativeJsonDecoder(
            options.decode, pattern=self.pattern, registry=self.registry, clock=self.clock
        )
        self.windows = MultiWindows(options.windows)
        self.tags = TagCache(self.registry)
        self.buffer = MessageBuffer(options.buffer, time_ns=self.clock.now_ns)
        self.deadletters = DeadLetterSink(options.deadletter_prefix, None)
        self.writer = writer
        self.stage = OutputStage(writer, options.stage)
        self.mqtt: MqttClient | None = None
        self.stats = PipelineStats()
        self._stop = asyncio.Event()
        self._restore()

    @property
    def subscription(self) -> tuple[tuple[str, int], ...]:
        return ((self.pattern.subscription, self.options.subscribe_qos),)

    def attach_mqtt(self, client: MqttClient) -> None:
        """Feed this pipeline from ``client`` and send dead-letter copies through it."""
        self.mqtt = client
        client.set_handler(self.buffer.add)
        qos = self.options.deadletter_qos

        def publish(topic: str, payload: bytes) -> bool:
            return client.publish(topic, payload, qos=qos)

        self.deadletters = DeadLetterSink(self.options.deadletter_prefix, publish)

    # -- the synchronous core ----------------------------------------------------------
    def process(self, raw: RawBatch) -> ProcessResult:
        started = time.perf_counter()
        result = self.decoder.decode(raw.topics, raw.payloads, raw.recv_ns)
        self.deadletters.handle(result.dead)
        batch = result.batch
        updates = self.windows.update(batch)
        finest = min(updates)
        late = updates[finest].late_mask
        if late.any():
            flags = batch.flags.copy()
            flags[late] |= np.uint8(ReadingFlag.LATE)
            batch = ReadingBatch(batch.sid, batch.metric, batch.ts_ns, batch.value, flags)
            self.stats.late_readings += int(np.count_nonzero(late))
        self.tags.sync()
        lines: list[tuple[bytes, int]] = []
        if self.options.write_raw and len(batch):
            enc = encode_readings(batch, self.tags)
            lines.append((enc.data, enc.points))
            self.stats.points_skipped += enc.skipped_no_fields + enc.skipped_invalid_tags
        closed: dict[int, int] = {}
        for width_ms, update in updates.items():
            n = len(update.closed)
            closed[width_ms] = n
            if n:
                enc = encode_aggregates(update.closed, self.tags)
                lines.append((enc.data, enc.points))
                self.stats.aggregates[width_ms] = self.stats.aggregates.get(width_ms, 0) + n
        self.stats.batches += 1
        self.stats.messages_ok += result.messages_ok
        self.stats.readings += len(batch)
        self.stats.process_seconds += time.perf_counter() - started
        return ProcessResult(batch, lines, closed)

    # -- state across runs ----------------------------------------------------------------
    def _restore(self) -> None:
        state_dir = self.options.state_dir
        if state_dir is None:
            return
        reg_path, win_path = state_dir / _REGISTRY_FILE, state_dir / _STATE_FILE
        if not (reg_path.exists() and win_path.exists()):
            return
        keys = json.loads(reg_path.read_text(encoding="utf-8"))
        for city, district, kind, sensor_id, lane in keys:
            self.registry.resolve(SeriesKey(city, district, Kind(kind), sensor_id, lane))
        with np.load(win_path) as snap:
            restored = MultiWindows.restore({k: snap[k] for k in snap.files})
        saved = sorted((w.spec for w in restored.windows.values()), key=lambda s: s.window_ms)
        wanted = sorted(self.options.windows, key=lambda s: s.window_ms)
        if saved != wanted:
            log.warning("window settings changed since the checkpoint; starting with empty windows")
            return
        self.windows = restored
        log.info(
            "restored window state",
            extra={"series": len(self.registry), "open_windows": restored.open_windows},
        )

    def checkpoint(self) -> None:
        state_dir = self.options.state_dir
        if state_dir is None:
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        keys = [
            [k.city, k.district, int(k.kind), k.sensor_id, k.lane] for k in self.registry.all_keys()
        ]
        tmp_reg = state_dir / (_REGISTRY_FILE + ".tmp")
        tmp_reg.write_text(json.dumps(keys), encoding="utf-8")
        tmp_win = state_dir / (_STATE_FILE + ".tmp.npz")
        savez: Any = np.savez  # numpy's stub types **arrays as its keyword flags
        savez(tmp_win, **self.windows.snapshot())
        tmp_reg.replace(state_dir / _REGISTRY_FILE)
        tmp_win.replace(state_dir / _STATE_FILE)

    # -- the asynchronous runtime -----------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def _handle(self, raw: RawBatch) -> None:
        result = self.process(raw)
        for data, points in result.lines:
            await self.stage.submit(data, points)

    async def run(self) -> None:
        """Run until request_stop(); then drain, flush and checkpoint."""
        writer_task = asyncio.create_task(self.stage.run(), name="output-stage")
        stats_task = asyncio.create_task(self._log_stats(), name="stats")
        mqtt_task: asyncio.Task[None] | None = None
        if self.mqtt is not None:
            mqtt_task = asyncio.create_task(self.mqtt.run(), name="mqtt")
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                if mqtt_task is not None and mqtt_task.done():
                    mqtt_task.result()  # re-raises a permanent broker refusal
                    break
                batch_wait = asyncio.ensure_future(self.buffer.wait_batch())
                await asyncio.wait({batch_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                batch_wait.cancel()
                if len(self.buffer):
                    await self._handle(self.buffer.take())
        finally:
            stop_wait.cancel()
            await self._shutdown(writer_task, mqtt_task)
            stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats_task
            self.log_stats("final")

    async def _shutdown(
        self, writer_task: asyncio.Task[None], mqtt_task: asyncio.Task[None] | None
    ) -> None:
        log.info("stopping: draining buffered messages and flushing outputs")
        if self.mqtt is not None:
            await self.mqtt.stop()
        if mqtt_task is not None:
            with contextlib.suppress(UrbanPulseError, asyncio.CancelledError):
                await mqtt_task
        if len(self.buffer):
            await self._handle(self.buffer.take())
        try:
            await asyncio.wait_for(self.stage.close(), self.options.shutdown_timeout_s)
        except TimeoutError:
            log.error(
                "shutdown timeout: points still unwritten",
                extra={"pending_points": self.stage.pending_points},
            )
        writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_task
        self.checkpoint()
        self.writer.close()

    def snapshot_stats(self) -> dict[str, Any]:
        s, st = self.stats, self.stage.stats
        out: dict[str, Any] = {
            "received": self.buffer.received,
            "overflow": self.buffer.overflow,
            "messages_ok": s.messages_ok,
            "readings": s.readings,
            "late_readings": s.late_readings,
            "dead_letters": dict(self.deadletters.by_reason),
            "deadletter_publish_failed": self.deadletters.publish_failed,
            "aggregates": {f"{k // 1000}s": v for k, v in sorted(s.aggregates.items())},
            "points_written": st.points_written,
            "points_rejected": st.points_rejected,
            "points_skipped": s.points_skipped,
            "write_retries": st.retries,
            "pending_points": self.stage.pending_points,
            "open_windows": self.windows.open_windows,
            "series": len(self.registry),
        }
        if self.mqtt is not None:
            out["mqtt_connected"] = self.mqtt.connected
            out["mqtt_reconnects"] = max(0, self.mqtt.stats.connects - 1)
        return out

    def log_stats(self, label: str = "stats") -> None:
        log.info(label, extra={"stats": self.snapshot_stats()})

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.options.stats_interval_s)
            self.log_stats()
