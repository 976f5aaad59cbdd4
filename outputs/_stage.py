"""The output stage: batches encoded lines, writes them off the event loop, retries.

Memory is bounded: ``submit`` waits while more than ``max_pending_bytes`` of line
protocol is queued, so a slow or unreachable database slows the pipeline down
(and so its reading from the broker) instead of growing a buffer without end.
Retryable failures (connection refused, 429, 5xx) are retried with capped,
jittered backoff that honours ``Retry-After``; a rejected body (4xx) is counted
and logged with the server's message, never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from outputs._influx import LineWriter
from outputs._retry import RetryPolicy
from urbanpulse._errors import OutputError, RetryableOutputError

__all__ = ["OutputStage", "StageOptions", "StageStats"]

log = logging.getLogger("urbanpulse.outputs")


@dataclass(frozen=True, slots=True, kw_only=True)
class StageOptions:
    batch_max_lines: int = 20_000
    batch_max_ms: int = 1000
    max_pending_bytes: int = 64 * 1024 * 1024
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=None))


@dataclass(slots=True)
class StageStats:
    points_written: int = 0
    bytes_written: int = 0
    writes: int = 0
    retries: int = 0
    points_rejected: int = 0
    write_seconds: float = 0.0
    last_error: str = ""


#: Bodies of one spooled record, loaded back from disk: [(line protocol, points)].
Loader = Callable[[int], list[tuple[bytes, int]]]


@dataclass(slots=True)
class _Entry:
    seq: int
    #: None when spilled: the bodies are only on disk (the spool) and are
    #: loaded back when the writer gets to them.
    bodies: list[tuple[bytes, int]] | None
    nbytes: int
    points: int


class OutputStage:
    """Writes bodies in submission order; reports the highest fully written record.

    Entries carry the spool sequence number of the record they came from (0 when
    there is no spool). ``on_committed(seq)`` is called after every record up to
    ``seq`` is in the database. With a ``loader``, a stage over its memory bound
    does not block: it keeps only the sequence number and loads the bodies back
    from the spool when their turn comes (the spool's own cap then bounds it).
    """

    def __init__(
        self,
        writer: LineWriter,
        options: StageOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_committed: Callable[[int], None] | None = None,
        loader: Loader | None = None,
    ) -> None:
        self._writer = writer
        self._opts = options
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_committed = on_committed
        self._loader = loader
        self._entries: deque[_Entry] = deque()
        self._pending_bytes = 0
        self._pending_points = 0
        self._has_data = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.spilled_records = 0
        self._failing_since: float | None = None
        self.stats = StageStats()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_points(self) -> int:
        return self._pending_points

    @property
    def pending_records(self) -> int:
        return len(self._entries)

    @property
    def healthy(self) -> bool:
        """False while writes are failing and being retried."""
        return self._failing_since is None

    async def submit(self, data: bytes, points: int, seq: int = 0) -> None:
        """Queue one body (see :meth:`submit_record`)."""
        await self.submit_record([(data, points)] if data else [], seq)

    async def submit_record(self, bodies: list[tuple[bytes, int]], seq: int = 0) -> None:
        """Queue the bodies of one record; waits while over the memory bound (no loader)."""
        nbytes = sum(len(b) for b, _ in bodies)
        points = sum(n for _, n in bodies)
        if self._pending_bytes >= self._opts.max_pending_bytes:
            if self._loader is not None and seq:
                self._append(_Entry(seq, None, 0, 0))
                self.spilled_records += 1
                return
            while self._pending_bytes >= self._opts.max_pending_bytes:
                self._room.clear()
                await self._room.wait()
        self._append(_Entry(seq, bodies, nbytes, points))

    def enqueue_spilled(self, seqs: range) -> None:
        """Records already in the spool and not yet written (after a restart)."""
        if self._loader is None:
            raise ValueError("spilled records need a loader")
        for seq in seqs:
            self._append(_Entry(seq, None, 0, 0))

    def _append(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._pending_bytes += entry.nbytes
        self._pending_points += entry.points
        self._idle.clear()
        if self._pending_points >= self._opts.batch_max_lines or entry.bodies is None:
            self._has_data.set()

    def _take(self) -> tuple[bytes, int, int]:
        parts: list[bytes] = []
        points = 0
        size = 0
        last_seq = 0
        while self._entries and (not parts or points < self._opts.batch_max_lines):
            entry = self._entries[0]
            if entry.bodies is None:
                assert self._loader is not None
                entry.bodies = self._loader(entry.seq)
                entry.points = sum(n for _, n in entry.bodies)
            self._entries.popleft()
            parts.extend(b for b, _ in entry.bodies if b)
            points += entry.points
            size += entry.nbytes
            last_seq = max(last_seq, entry.seq)
        self._pending_bytes -= size
        self._pending_points = max(0, self._pending_points - points)
        if self._pending_bytes < self._opts.max_pending_bytes:
            self._room.set()
        return b"\n".join(parts), points, last_seq

    async def run(self) -> None:
        """Write batches until close(); each write runs in a worker thread."""
        while True:
            if not self._entries:
                self._idle.set()
                if self._closing:
                    return
            spilled_ahead = bool(self._entries) and self._entries[0].bodies is None
            if (
                self._pending_points < self._opts.batch_max_lines
                and not self._closing
                and not spilled_ahead
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_data.wait(), self._opts.batch_max_ms / 1000)
                self._has_data.clear()
            if not self._entries:
                continue
            body, points, last_seq = self._take()
            if body:
                await self._write_with_retry(body, points)
            if last_seq and self._on_committed is not None:
                self._on_committed(last_seq)

    async def _write_with_retry(self, body: bytes, points: int) -> None:
        retry = 0
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._writer.write, body)
            except RetryableOutputError as exc:
                retry += 1
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                delay_s = self._opts.retry.backoff_s(retry, self._rng)
                if exc.retry_after_s is not None:
                    delay_s = max(delay_s, exc.retry_after_s)
                if retry == 1 or retry % 10 == 0:
                    log.warning(
                        "write failed, retrying",
                        extra={"error": str(exc), "retry": retry, "retry_in_s": round(delay_s, 2)},
                    )
                await self._sleep(delay_s)
                continue
            except OutputError as exc:
                self.stats.points_rejected += points
                self.stats.last_error = str(exc)
                log.error("write rejected", extra={"error": str(exc), "points": points})
                return
            if self._failing_since is not None:
                log.info(
                    "writes recovered",
                    extra={"outage_s": round(time.monotonic() - self._failing_since, 1)},
                )
                self._failing_since = None
            self.stats.write_seconds += time.perf_counter() - started
            self.stats.writes += 1
            self.stats.points_written += points
            self.stats.bytes_written += len(body)
            return

    async def close(self) -> None:
        """Flush everything queued: returns when the writer task has written it all."""
        self._closing = True
        self._has_data.set()
        await self._idle.wait()
