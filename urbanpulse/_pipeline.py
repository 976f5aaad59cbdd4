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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ingest._buffer import BufferOptions, MessageBuffer, RawBatch
from ingest._deadletter import DeadLetterSink
from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._mqtt import MqttClient
from ingest._shard import ShardFilter
from ingest._topics import TopicPattern
from outputs._eventlines import encode_events, encode_index_rows, encode_los_rows
from outputs._influx import LineWriter
from outputs._lineprotocol import TagCache, encode_aggregates, encode_readings
from outputs._stage import OutputStage, StageOptions
from processors._dedup import DuplicateFilter
from processors._detect_sensor import RangeDetector
from processors._detectors import DetectorConfig, DetectorSuite, warm_up
from processors._indices import IndexTracker
from processors._windows import MultiWindows, WindowAggregates, WindowSpec
from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import Clock, SystemClock
from urbanpulse._errors import UrbanPulseError
from urbanpulse._events import Event, EventBus, Severity
from urbanpulse._schema import Kind, Metric, ReadingFlag
from urbanpulse._spool import Record, Spool, SpoolOptions

__all__ = ["Pipeline", "PipelineOptions", "PipelineStats", "ProcessResult"]

log = logging.getLogger("urbanpulse.pipeline")

_STATE_FILE = "checkpoint.npz"
_NO_TS = np.iinfo(np.int64).min


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
    #: The write-ahead disk spool; None keeps no journal (demo, tests).
    spool: SpoolOptions | None = None
    #: How often window state is checkpointed (bounds the journal replayed after
    #: a crash); the state is also checkpointed on every clean stop.
    checkpoint_interval_s: float = 30.0
    #: Official indices (ISPU, US AQI) are folded in every batch and evaluated at
    #: most this often (wall time); 0 evaluates every batch.
    index_interval_s: float = 60.0
    #: The anomaly detectors (each has its own ``enabled`` flag); None: none.
    detectors: DetectorConfig | None = field(default_factory=DetectorConfig)


@dataclass(slots=True)
class PipelineStats:
    batches: int = 0
    messages_ok: int = 0
    readings: int = 0
    late_readings: int = 0
    #: Readings outside their plausible range (kept out of the indices).
    implausible_readings: int = 0
    duplicates: int = 0
    replayed_records: int = 0
    events: dict[str, int] = field(default_factory=dict)
    index_rows: int = 0
    #: ``traffic_los`` points written.
    los_rows: int = 0
    spool_blocked_s: float = 0.0
    aggregates: dict[int, int] = field(default_factory=dict)
    points_skipped: int = 0
    process_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What one micro-batch produced (for tests, the spool and the output stage)."""

    batch: ReadingBatch
    lines: list[tuple[bytes, int]]
    closed: dict[int, int]
    aggregates: list[WindowAggregates]
    new_keys: list[SeriesKey]


def _flag_where(mask: NDArray[np.bool_], flag: ReadingFlag) -> NDArray[np.uint8]:
    """``flag`` on the rows of ``mask``, 0 elsewhere (for ``ReadingBatch.with_flags``)."""
    return np.where(mask, np.uint8(flag), np.uint8(0))


def _dedup_retention_ns(specs: tuple[WindowSpec, ...]) -> int:
    """How long a reading can still land in an open window: widest + grace + idle."""
    return max(s.window_ns + s.grace_ns + s.idle_ns for s in specs) + 60 * 10**9


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
        self.dedup = DuplicateFilter(_dedup_retention_ns(options.windows))
        self.tags = TagCache(self.registry)
        self.buffer = MessageBuffer(options.buffer, time_ns=self.clock.now_ns)
        self.deadletters = DeadLetterSink(options.deadletter_prefix, None)
        self.writer = writer
        self.spool = Spool(options.spool) if options.spool is not None else None
        self.stage = OutputStage(
            writer,
            options.stage,
            on_committed=self._committed if self.spool else None,
            loader=self._load_bodies if self.spool else None,
        )
        self.mqtt: MqttClient | None = None
        self.shard: ShardFilter | None = None
        self.bus = EventBus()
        #: Called after every processed micro-batch with (raw, result, seconds):
        #: the dashboard's live view and its latency histograms.
        self.batch_listeners: list[Callable[[RawBatch, ProcessResult, float], None]] = []
        self.indices = IndexTracker(self.registry, clock=self.clock)
        self.detectors = (
            DetectorSuite(options.detectors, self.registry, self.clock)
            if options.detectors is not None
            else None
        )
        #: The plausible ranges (used by ``bad`` only; whether the range detector
        #: itself is enabled does not matter).
        self._ranges = RangeDetector(
            options.detectors.sensor_fault if options.detectors is not None else None
        )
        self._max_ts_ns = -1
        #: Newest speed reading time per lane since the last ``traffic_los`` rows.
        self._lane_ts = np.full(0, _NO_TS, np.int64)
        #: The dead-sensor check runs on the watermark: newest event time - grace.
        self._grace_ns = min(s.grace_ns for s in options.windows)
        self._last_index_s = time.monotonic()
        self._pending_events: list[Event] = []
        self._replayed_events: list[Event] = []
        self._cardinality_seen = 0
        self._cardinality_event_s: float | None = None
        self.stats = PipelineStats()
        self._stop = asyncio.Event()
        self._checkpoint_seq = 0
        self._last_checkpoint_s = time.monotonic()
        self._unsynced_acks: list[asyncio.Future[None]] = []
        self._last_sync_s = time.monotonic()
        self._cursor: Any = None
        self._cursor_next = 0
        self._recover()

    @property
    def subscription(self) -> tuple[tuple[str, int], ...]:
        """The native topic pattern's filter plus every codec rule's filter."""
        filters = [self.pattern.subscription]
        for rule in self.options.decode.codecs:
            if rule.topic_filter not in filters:
                filters.append(rule.topic_filter)
        return tuple((f, self.options.subscribe_qos) for f in filters)

    def attach_mqtt(self, client: MqttClient, *, shard: ShardFilter | None = None) -> None:
        """Feed this pipeline from ``client`` and send dead-letter copies through it.

        With ``shard``, messages of other shards are acknowledged and skipped."""
        self.mqtt = client
        self.shard = shard
        client.set_handler(shard.wrap(self.buffer.add) if shard is not None else self.buffer.add)
        qos = self.options.deadletter_qos

        def publish(topic: str, payload: bytes) -> bool:
            return client.publish(topic, payload, qos=qos)

        self.deadletters = DeadLetterSink(self.options.deadletter_prefix, publish)

    @property
    def _checkpoint_dir(self) -> Path | None:
        if self.options.state_dir is not None:
            return self.options.state_dir
        if self.options.spool is not None:
            return self.options.spool.directory / "checkpoint"
        return None

    def _note_lanes(self, batch: ReadingBatch) -> None:
        """Remember the newest speed reading time of each lane, for ``traffic_los``."""
        speed = batch.metric == Metric.AVERAGE_VEHICLE_SPEED
        if not speed.any():
            return
        sid = batch.sid[speed].astype(np.int64)
        top = int(sid.max()) + 1
        if top > self._lane_ts.shape[0]:
            grown = np.full(max(top, 2 * self._lane_ts.shape[0]), _NO_TS, np.int64)
            grown[: self._lane_ts.shape[0]] = self._lane_ts
            self._lane_ts = grown
        np.maximum.at(self._lane_ts, sid, batch.ts_ns[speed])

    def los_lines(self) -> list[tuple[bytes, int]]:
        """``traffic_los`` points of the lanes with speed readings since the last call
        (each at its newest reading time, with its current class)."""
        traffic = self.detectors.traffic_state if self.detectors is not None else None
        touched = np.flatnonzero(self._lane_ts != _NO_TS)
        if traffic is None or touched.shape[0] == 0:
            return []
        ts = self._lane_ts[touched].copy()
        self._lane_ts[touched] = _NO_TS
        los, smooth, free = traffic.levels(touched.astype(np.int32))
        enc = encode_los_rows(
            sid=touched.astype(np.int64),
            ts_ns=ts,
            los=los,
            smooth_kmh=smooth,
            free_flow_kmh=free,
            registry=self.registry,
        )
        self.stats.los_rows += enc.points
        return [(enc.data, enc.points)] if enc.points else []

    def _observe_indices(self, batch: ReadingBatch) -> None:
        """Fold readings into the official indices, except those flagged implausible
        (outside ``detectors.sensor_fault.ranges``): a pinned or broken sensor must
        not make a district's ISPU "Berbahaya"."""
        implausible = (batch.flags & np.uint8(ReadingFlag.IMPLAUSIBLE)) != 0
        self.indices.observe(batch.take(~implausible) if implausible.any() else batch)

    # -- the synchronous core ----------------------------------------------------------
    def process(self, raw: RawBatch) -> ProcessResult:
        """Decode, deduplicate, window and encode one raw micro-batch."""
        started = time.perf_counter()
        n_series = len(self.registry)
        result = self.decoder.decode(raw.topics, raw.payloads, raw.recv_ns)
        self.deadletters.handle(result.dead)
        self._cardinality_events()
        batch, n_dup = self.dedup.apply(result.batch)
        self.stats.duplicates += n_dup
        updates = self.windows.update(batch)
        late = updates[min(updates)].late_mask
        if late.any():
            batch = batch.with_flags(_flag_where(late, ReadingFlag.LATE))
            self.stats.late_readings += int(np.count_nonzero(late))
        implausible = self._ranges.bad(batch)
        if implausible.any():
            batch = batch.with_flags(_flag_where(implausible, ReadingFlag.IMPLAUSIBLE))
            self.stats.implausible_readings += int(np.count_nonzero(implausible))
        self._observe_indices(batch)
        if self.detectors is not None and len(batch):
            self._note_lanes(batch)
            det = self.detectors.update(batch)
            if det.flags.any():
                batch = batch.with_flags(det.flags)
            self._pending_events.extend(det.events)
            self._max_ts_ns = max(self._max_ts_ns, int(batch.ts_ns.max()))
            self._pending_events.extend(self.detectors.check(self._max_ts_ns - self._grace_ns))
        aggregates = [u.closed for u in updates.values()]
        lines = self._encode(batch, aggregates)
        closed: dict[int, int] = {}
        for agg in aggregates:
            closed[agg.window_ms] = len(agg)
            if len(agg):
                self.stats.aggregates[agg.window_ms] = self.stats.aggregates.get(
                    agg.window_ms, 0
                ) + len(agg)
        self.stats.batches += 1
        self.stats.messages_ok += result.messages_ok
        self.stats.readings += len(batch)
        self.stats.process_seconds += time.perf_counter() - started
        new_keys = [self.registry.key(i) for i in range(n_series, len(self.registry))]
        processed = ProcessResult(batch, lines, closed, aggregates, new_keys)
        if self.batch_listeners:
            seconds = time.perf_counter() - started
            for listener in self.batch_listeners:
                listener(raw, processed, seconds)
        return processed

    def _cardinality_events(self) -> None:
        """An event (at most once a minute) while the cardinality guard refuses series."""
        refused = sum(self.decoder.cardinality_refused.values())
        if refused == self._cardinality_seen:
            return
        now_s = self.clock.monotonic_s()
        last = self._cardinality_event_s
        if last is not None and now_s - last < 60.0:
            return
        new = refused - self._cardinality_seen
        self._cardinality_seen = refused
        self._cardinality_event_s = now_s
        now_ns = self.clock.now_ns()
        opts = self.options.decode
        self._pending_events.append(
            Event(
                detector="cardinality",
                state="start",
                severity=Severity.WARNING,
                kind="",
                city="",
                district="",
                sensor_id="",
                value=float(new),
                event_ns=now_ns,
                detected_ns=now_ns,
                message=(
                    f"cardinality guard refused {new} message(s) of new series "
                    f"(caps: {opts.max_series} series, {opts.max_new_series_per_min} new/min; "
                    f"{len(self.registry)} series known)"
                ),
                labels={k: str(v) for k, v in self.decoder.cardinality_refused.items()},
            )
        )

    def _encode(
        self, batch: ReadingBatch, aggregates: list[WindowAggregates]
    ) -> list[tuple[bytes, int]]:
        self.tags.sync()
        lines: list[tuple[bytes, int]] = []
        if self.options.write_raw and len(batch):
            enc = encode_readings(batch, self.tags)
            lines.append((enc.data, enc.points))
            self.stats.points_skipped += enc.skipped_no_fields + enc.skipped_invalid_tags
        for agg in aggregates:
            if len(agg):
                enc = encode_aggregates(agg, self.tags)
                lines.append((enc.data, enc.points))
        return lines

    # -- spool, checkpoints and recovery -------------------------------------------------------
    def _load_bodies(self, seq: int) -> list[tuple[bytes, int]]:
        """The line protocol of a spooled record, regenerated from the journal."""
        assert self.spool is not None
        if self._cursor is None or self._cursor_next != seq:
            self._cursor = self.spool.records(seq)
        try:
            record: Record = next(self._cursor)
        except StopIteration:
            self._cursor = self.spool.records(seq)
            record = next(self._cursor)
        if record.seq != seq:
            raise UrbanPulseError(f"spool record {seq} is missing (found {record.seq})")
        self._cursor_next = seq + 1
        return self._encode(record.batch, record.closed)

    def _committed(self, seq: int) -> None:
        assert self.spool is not None
        self.spool.set_committed(seq)
        self.spool.truncate_committed(keep_from_seq=self._checkpoint_seq + 1)

    def _recover(self) -> None:
        """Restore the last checkpoint, then replay the spool records after it."""
        seq = self._load_checkpoint()
        if self.spool is None:
            return
        status = self.spool.status()
        if status.first_seq is not None and status.first_seq > seq + 1:
            raise UrbanPulseError(
                f"spool {status.directory} starts at record {status.first_seq} but the "
                f"checkpoint is at {seq}: window state cannot be rebuilt. Restore the "
                f"checkpoint, or move the spool aside (its records are then not written)."
            )
        replayed = 0
        for record in self.spool.records(seq + 1):
            for key in record.new_keys:
                self.registry.resolve(key)
            self.dedup.apply(record.batch)
            self.windows.update(record.batch)
            self._observe_indices(record.batch)
            if self.detectors is not None and len(record.batch):
                # Events of replayed records go to storage again (idempotent), not
                # to the bus: they were, or would have been, published before.
                self._replayed_events.extend(self.detectors.update(record.batch).events)
                self._max_ts_ns = max(self._max_ts_ns, int(record.batch.ts_ns.max()))
            replayed += 1
        self.stats.replayed_records = replayed
        committed = self.spool.committed_seq
        if self.spool.last_seq > committed:
            first = max(committed + 1, status.first_seq or committed + 1)
            self.stage.enqueue_spilled(range(first, self.spool.last_seq + 1))
        if replayed or self.spool.last_seq > committed:
            log.info(
                "recovered from the spool",
                extra={
                    "checkpoint_seq": seq,
                    "replayed_records": replayed,
                    "unwritten_records": self.spool.last_seq - committed,
                    "series": len(self.registry),
                    "open_windows": self.windows.open_windows,
                    "quarantined": status.quarantined,
                },
            )

    def _load_checkpoint(self) -> int:
        cdir = self._checkpoint_dir
        if cdir is None:
            return 0
        path = cdir / _STATE_FILE
        if not path.exists():
            return 0
        with np.load(path) as snap:
            arrays = {k: snap[k] for k in snap.files}
        meta = json.loads(arrays.pop("meta").tobytes())
        for city, district, kind, sensor_id, lane in meta["keys"]:
            self.registry.resolve(SeriesKey(city, district, Kind(kind), sensor_id, lane))
        windows = {k[len("w.") :]: v for k, v in arrays.items() if k.startswith("w.")}
        dedup = {k[len("d.") :]: v for k, v in arrays.items() if k.startswith("d.")}
        if dedup:
            self.dedup = DuplicateFilter.restore(dedup)
        indices = {k[len("i.") :]: v for k, v in arrays.items() if k.startswith("i.")}
        if indices:
            self.indices = IndexTracker.restore(indices, self.registry, clock=self.clock)
        detectors = {k[len("x.") :]: v for k, v in arrays.items() if k.startswith("x.")}
        if detectors and self.detectors is not None:
            try:
                self.detectors.restore(detectors)
            except ValueError as exc:
                # another version or detector config: baselines are re-learned
                log.warning(
                    "detector state in the checkpoint does not fit; detectors start fresh",
                    extra={"reason": str(exc)},
                )
        if "max_ts_ns" in arrays:
            self._max_ts_ns = int(arrays["max_ts_ns"][0])
        restored = MultiWindows.restore(windows) if windows else None
        wanted = sorted(self.options.windows, key=lambda s: s.window_ms)
        saved = (
            sorted((w.spec for w in restored.windows.values()), key=lambda s: s.window_ms)
            if restored is not None
            else []
        )
        if restored is not None and saved == wanted:
            self.windows = restored
        else:
            log.warning("window settings changed since the checkpoint; starting with empty windows")
        seq = int(meta.get("seq", 0))
        self._checkpoint_seq = seq
        log.info(
            "restored checkpoint",
            extra={
                "seq": seq,
                "series": len(self.registry),
                "open_windows": self.windows.open_windows,
            },
        )
        return seq

    def checkpoint(self) -> None:
        """Persist window state, the duplicate filter, the registry and the spool
        position in ONE file, replaced atomically (never a state without its seq)."""
        cdir = self._checkpoint_dir
        if cdir is None:
            return
        seq = self.spool.last_seq if self.spool is not None else 0
        if self.spool is not None:
            self.spool.sync()
        cdir.mkdir(parents=True, exist_ok=True)
        keys = [
            [k.city, k.district, int(k.kind), k.sensor_id, k.lane] for k in self.registry.all_keys()
        ]
        meta = json.dumps({"seq": seq, "keys": keys}).encode()
        arrays: dict[str, Any] = {"meta": np.frombuffer(meta, dtype=np.uint8)}
        arrays.update({f"w.{k}": v for k, v in self.windows.snapshot().items()})
        arrays.update({f"d.{k}": v for k, v in self.dedup.snapshot().items()})
        arrays.update({f"i.{k}": v for k, v in self.indices.snapshot().items()})
        if self.detectors is not None:
            arrays.update({f"x.{k}": v for k, v in self.detectors.snapshot().items()})
        arrays["max_ts_ns"] = np.array([self._max_ts_ns], dtype=np.int64)
        tmp = cdir / (_STATE_FILE + ".tmp.npz")
        savez: Any = np.savez  # numpy's stub types **arrays as its keyword flags
        savez(tmp, **arrays)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, cdir / _STATE_FILE)
        self._checkpoint_seq = seq
        self._last_checkpoint_s = time.monotonic()
        if self.spool is not None:
            self.spool.truncate_committed(keep_from_seq=seq + 1)

    # -- the asynchronous runtime -----------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def _handle(self, raw: RawBatch) -> None:
        result = self.process(raw)
        seq = 0
        spool = self.spool
        if spool is not None and (
            len(result.batch) or result.new_keys or any(result.closed.values())
        ):
            if spool.would_block():
                blocked = time.monotonic()
                log.error("spool full: pausing intake until the database catches up")
                while spool.would_block():
                    await asyncio.sleep(0.2)
                self.stats.spool_blocked_s += time.monotonic() - blocked
            seq = spool.append(result.new_keys, result.batch, result.aggregates)
            await self._sync_and_ack(raw.ack)
        elif raw.ack is not None and not raw.ack.done():
            raw.ack.set_result(None)  # nothing durable to wait for (all refused)
        await self.stage.submit_record(result.lines, seq)
        if self._pending_events:
            await self.stage.submit_record(self.publish_events(self.take_events()))
        if self._replayed_events:
            enc = encode_events(self._replayed_events)
            self._replayed_events = []
            await self.stage.submit_record([(enc.data, enc.points)])
        if time.monotonic() - self._last_index_s >= self.options.index_interval_s:
            await self.evaluate_indices()
        if time.monotonic() - self._last_checkpoint_s >= self.options.checkpoint_interval_s:
            self.checkpoint()

    def take_events(self) -> list[Event]:
        """The events of processed batches not yet published (and forget them): for
        callers that drive ``process`` themselves (evaluation, tests)."""
        events, self._pending_events = self._pending_events, []
        return events

    def publish_events(self, events: list[Event]) -> list[tuple[bytes, int]]:
        """Put events on the bus and return their ``events`` line protocol."""
        if not events:
            return []
        self.bus.publish(events)
        for e in events:
            self.stats.events[e.detector] = self.stats.events.get(e.detector, 0) + 1
        enc = encode_events(events)
        return [(enc.data, enc.points)]

    async def evaluate_indices(self) -> None:
        """ISPU / US AQI of the sensors and districts observed since the last time, and
        the level of service of the lanes seen since then (``traffic_los``)."""
        self._last_index_s = time.monotonic()
        upd = self.indices.evaluate()
        lines = self.publish_events(upd.events)
        for rows in (upd.sensors, upd.districts):
            if len(rows):
                enc = encode_index_rows(
                    rows,
                    registry=self.registry,
                    district_keys=self.indices.district_keys,
                    ispu_pollutants=self.indices.ispu_pollutants,
                )
                lines.append((enc.data, enc.points))
                self.stats.index_rows += len(rows)
        lines.extend(self.los_lines())
        if lines:
            await self.stage.submit_record(lines)

    async def _sync_and_ack(self, ack: asyncio.Future[None] | None) -> None:
        assert self.spool is not None
        if ack is not None:
            self._unsynced_acks.append(ack)
        policy = self.spool.opts.fsync
        due = time.monotonic() - self._last_sync_s >= self.spool.opts.fsync_interval_s
        if policy == "always" or (policy == "interval" and due):
            await asyncio.to_thread(self.spool.sync)
            self._last_sync_s = time.monotonic()
        elif policy == "interval":
            return  # acknowledged by the next sync
        self._release_acks()

    def _release_acks(self) -> None:
        """Let the MQTT client acknowledge every batch whose record is now synced."""
        for fut in self._unsynced_acks:
            if not fut.done():
                fut.set_result(None)
        self._unsynced_acks.clear()

    async def _periodic_sync(self) -> None:
        """Under the ``interval`` fsync policy, acknowledge what waits for a sync."""
        assert self.spool is not None
        interval = self.spool.opts.fsync_interval_s
        while True:
            await asyncio.sleep(interval)
            if self._unsynced_acks:
                await asyncio.to_thread(self.spool.sync)
                self._last_sync_s = time.monotonic()
                self._release_acks()

    async def run(self) -> None:
        """Run until request_stop(); then drain, flush and checkpoint."""
        writer_task = asyncio.create_task(self.stage.run(), name="output-stage")
        side_tasks = [asyncio.create_task(self._log_stats(), name="stats")]
        if self.spool is not None and self.spool.opts.fsync == "interval":
            side_tasks.append(asyncio.create_task(self._periodic_sync(), name="spool-sync"))
        mqtt_task: asyncio.Task[None] | None = None
        if self.mqtt is not None:
            mqtt_task = asyncio.create_task(self.mqtt.run(), name="mqtt")
        if self.detectors is not None:
            # compile the detector kernels (or load them from numba's cache) while
            # the client connects, not on the first batch
            seconds = await asyncio.to_thread(warm_up)
            log.info("detector kernels ready", extra={"seconds": round(seconds, 2)})
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
            for task in side_tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.log_stats("final")

    async def _shutdown(
        self, writer_task: asyncio.Task[None], mqtt_task: asyncio.Task[None] | None
    ) -> None:
        """Stop reading, journal what is buffered, flush outputs, checkpoint.

        The broker connection goes first: messages received after that point are
        still processed and stored, but not acknowledged, so a persistent session
        gets them again (and the duplicate filter drops the repeat).
        """
        log.info("stopping: draining buffered messages and flushing outputs")
        if self.mqtt is not None:
            await self.mqtt.stop()
        if mqtt_task is not None:
            with contextlib.suppress(UrbanPulseError, asyncio.CancelledError):
                await mqtt_task
        if len(self.buffer):
            await self._handle(self.buffer.take())
        await self.evaluate_indices()
        self.buffer.release_held()
        if self.spool is not None:
            self.spool.sync()
        self._release_acks()
        try:
            await asyncio.wait_for(self.stage.close(), self.options.shutdown_timeout_s)
        except TimeoutError:
            log.error(
                "shutdown timeout: points still unwritten (kept in the spool)"
                if self.spool is not None
                else "shutdown timeout: points still unwritten",
                extra={"pending_records": self.stage.pending_records},
            )
        writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_task
        self.checkpoint()
        if self.spool is not None:
            self.spool.close()
        self.writer.close()

    def snapshot_stats(self) -> dict[str, Any]:
        s, st = self.stats, self.stage.stats
        out: dict[str, Any] = {
            "received": self.buffer.received,
            "overflow": self.buffer.overflow,
            "messages_ok": s.messages_ok,
            "readings": s.readings,
            "late_readings": s.late_readings,
            "implausible_readings": s.implausible_readings,
            "duplicates": s.duplicates,
            "dead_letters": dict(self.deadletters.by_reason),
            "deadletter_publish_failed": self.deadletters.publish_failed,
            "aggregates": {f"{k // 1000}s": v for k, v in sorted(s.aggregates.items())},
            "points_written": st.points_written,
            "points_rejected": st.points_rejected,
            "points_skipped": s.points_skipped,
            "write_retries": st.retries,
            "pending_points": self.stage.pending_points,
            "pending_records": self.stage.pending_records,
            "open_windows": self.windows.open_windows,
            "series": len(self.registry),
            "events": dict(s.events),
            "cardinality_refused": dict(self.decoder.cardinality_refused),
            "index_rows": s.index_rows,
            "los_rows": s.los_rows,
        }
        if self.spool is not None:
            status = self.spool.status()
            out["spool"] = {
                "bytes": status.bytes,
                "segments": status.segments,
                "last_seq": status.last_seq,
                "committed_seq": status.committed_seq,
                "spilled_records": self.stage.spilled_records,
                "replayed_records": s.replayed_records,
                "dropped_records": status.dropped_records,
                "quarantined": len(status.quarantined),
                "blocked_s": round(s.spool_blocked_s, 1),
            }
        if self.mqtt is not None:
            out["mqtt_connected"] = self.mqtt.connected
            out["mqtt_reconnects"] = max(0, self.mqtt.stats.connects - 1)
        if self.shard is not None:
            out["shard"] = {"spec": str(self.shard.spec), "skipped": self.shard.skipped}
        return out

    def log_stats(self, label: str = "stats") -> None:
        log.info(label, extra={"stats": self.snapshot_stats()})

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.options.stats_interval_s)
            self.log_stats()
