"""The dispatcher: bus subscription -> engine -> per-receiver disk outbox -> receiver.

Every notification is appended (fsynced) to its receiver's :class:`DiskQueue`
before any delivery is tried, so a crash or a receiver being down loses nothing
that was queued (up to the queue's cap, beyond which the oldest is dropped and
counted). One asyncio worker per receiver delivers its queue in order; a failure
leaves the head in place and the worker backs off (exponential, capped) before
trying again. The bus consumer never awaits a receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alerts._config import AlertsConfig
from alerts._engine import AlertEngine, Notification
from alerts._queue import DiskQueue, write_atomic
from alerts._receivers import Receiver
from urbanpulse._clock import Clock
from urbanpulse._errors import ConfigError, OutputError, RetryableOutputError
from urbanpulse._events import Event, Subscription

__all__ = ["AlertDispatcher", "ReceiverStats"]

log = logging.getLogger("urbanpulse.alerts")


@dataclass(slots=True)
class ReceiverStats:
    queued: int = 0
    delivered: int = 0
    #: Attempts that failed and will be retried.
    failures: int = 0
    #: Deliveries refused for good (e.g. HTTP 400): dropped.
    rejected: int = 0
    last_error: str = ""


class AlertDispatcher:
    def __init__(
        self,
        config: AlertsConfig,
        receivers: Iterable[Receiver],
        *,
        clock: Clock | None = None,
        engine: AlertEngine | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or AlertEngine(config, clock=clock)
        self.receivers: dict[str, Receiver] = {r.name: r for r in receivers}
        for rec in config.receivers():
            if rec.name not in self.receivers:
                raise ConfigError(f"alerts: receiver {rec.name!r} is configured but not built")
        qcfg = config.queue
        self.queues = {
            name: DiskQueue(
                Path(qcfg.directory) / name, max_records=qcfg.max_records, fsync=qcfg.fsync
            )
            for name in self.receivers
        }
        self.stats = {name: ReceiverStats() for name in self.receivers}
        self._wake = {name: asyncio.Event() for name in self.receivers}
        self._tasks: list[asyncio.Task[None]] = []
        self.state_path = Path(qcfg.directory) / "engine.json"
        self._saved_s = self.engine.clock.monotonic_s()
        if engine is None and self.state_path.exists():
            try:
                self.engine.restore(json.loads(self.state_path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"alerts: cannot load {self.state_path}: {exc}") from exc
        self._closed = False
        #: ``handle`` calls whose notifications could not be persisted (lost).
        self.outbox_errors = 0

    # ------------------------------------------------------------ synchronous
    def handle(self, events: Iterable[Event] = ()) -> list[Notification]:
        """Feed events, advance timers, queue what is due (durably). Never blocks on I/O
        other than the local fsync."""
        self.engine.ingest(events)
        notes = self.engine.tick()
        touched: set[str] = set()
        for note in notes:
            queue = self.queues.get(note.receiver)
            if queue is None:
                continue
            queue.append(note.payload, sync=False)
            touched.add(note.receiver)
            self.stats[note.receiver].queued += 1
        for name in touched:  # group commit: one fsync per outbox, before any delivery
            self.queues[name].sync()
            self._wake[name].set()
        return notes

    def save_state(self) -> None:
        """Write the engine's snapshot atomically (temp file, fsync, rename)."""
        body = json.dumps(self.engine.snapshot(), separators=(",", ":"))
        try:
            write_atomic(self.state_path, body, fsync=self.config.queue.fsync)
        except OSError as exc:
            raise OutputError(f"alerts: cannot save {self.state_path}: {exc}") from exc
        self._saved_s = self.engine.clock.monotonic_s()

    def pending(self) -> dict[str, int]:
        return {name: len(q) for name, q in self.queues.items()}

    def counters(self) -> dict[str, int]:
        """Flat counters for metrics: ``<receiver>.<name>``."""
        out: dict[str, int] = {}
        for name, st in self.stats.items():
            queue = self.queues[name]
            out[f"{name}.pending"] = len(queue)
            out[f"{name}.dropped"] = queue.dropped
            out[f"{name}.delivered"] = st.delivered
            out[f"{name}.failures"] = st.failures
            out[f"{name}.rejected"] = st.rejected
        return out

    # ----------------------------------------------------------------- async
    async def deliver_once(self, name: str) -> bool:
        """Deliver receiver ``name``'s queue in order until it is empty (True) or a
        delivery fails with a retryable error (False)."""
        queue, receiver, st = self.queues[name], self.receivers[name], self.stats[name]
        while (record := queue.peek()) is not None:
            try:
                await receiver.send(record)
            except RetryableOutputError as exc:
                st.failures += 1
                st.last_error = str(exc)
                return False
            except OutputError as exc:
                st.rejected += 1
                st.last_error = str(exc)
                log.error("alert receiver %s refused a notification (dropped): %s", name, exc)
            except Exception as exc:  # a bug must not stop the worker or loop on one record
                st.rejected += 1
                st.last_error = repr(exc)
                log.exception("alert receiver %s crashed on a notification (dropped)", name)
            else:
                st.delivered += 1
            queue.pop()
        return True

    async def deliver_all(self) -> bool:
        results = [await self.deliver_once(name) for name in self.queues]
        return all(results)

    async def _worker(self, name: str) -> None:
        qcfg = self.config.queue
        delay = qcfg.retry_backoff_s
        wake = self._wake[name]
        while True:
            if not self.queues[name]:
                wake.clear()
                await wake.wait()
            if await self.deliver_once(name):
                delay = qcfg.retry_backoff_s
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, qcfg.retry_backoff_max_s)

    def start_workers(self) -> None:
        if not self._tasks:
            for name in self.queues:
                self._tasks.append(asyncio.create_task(self._worker(name), name=f"alerts-{name}"))
                if self.queues[name]:
                    self._wake[name].set()

    async def run(self, subscription: Subscription) -> None:
        """Consume the bus until cancelled: the pipeline runs this as its own task."""
        self.start_workers()
        try:
            while True:
                try:
                    events = await asyncio.wait_for(subscription.get(), self.config.tick_s)
                except TimeoutError:
                    events = []
                try:
                    self.handle(events)
                    now_s = self.engine.clock.monotonic_s()
                    if now_s - self._saved_s >= self.config.state_interval_s:
                        self.save_state()
                except OutputError as exc:  # the outbox cannot be written (disk full, ...)
                    self.outbox_errors += 1
                    log.error("alerts: %s", exc)
        finally:
            await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if not self._closed:
            self._closed = True
            try:
                self.save_state()
            except OutputError as exc:
                log.error("alerts: %s", exc)
            for queue in self.queues.values():
                queue.close()
