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


class OutputStage:
    def __init__(
        self,
        writer: LineWriter,
        options: StageOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._writer = writer
        self._opts = options
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._pending_bytes = 0
        self._pending_points = 0
        self._has_data = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.stats = StageStats()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_points(self) -> int:
        return self._pending_points

    async def submit(self, data: bytes, points: int) -> None:
        """Queue a line-protocol body; waits while the stage is over its memory bound."""
        if not data:
            return
        while self._pending_bytes >= self._opts.max_pending_bytes:
            self._room.clear()
            await self._room.wait()
        self._chunks.append((data, points))
        self._pending_bytes += len(data)
        self._pending_points += points
        self._idle.clear()
        if self._pending_points >= self._opts.batch_max_lines:
            self._has_data.set()

    def _take(self) -> tuple[bytes, int]:
        parts: list[bytes] = []
        points = 0
        size = 0
        while self._chunks and (not parts or points < self._opts.batch_max_lines):
            data, n = self._chunks.popleft()
            parts.append(data)
            points += n
            size += len(data)
        self._pending_bytes -= size
        self._pending_points -= points
        if self._pending_bytes < self._opts.max_pending_bytes:
            self._room.set()
        return b"\n".join(parts), points

    async def run(self) -> None:
        """Write batches until close(); each write runs in a worker thread."""
        while True:
            if not self._chunks:
                self._idle.set()
                if self._closing:
                    return
            if self._pending_points < self._opts.batch_max_lines and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_data.wait(), self._opts.batch_max_ms / 1000)
                self._has_data.clear()
            if not self._chunks:
                continue
            body, points = self._take()
            await self._write_with_retry(body, points)

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
