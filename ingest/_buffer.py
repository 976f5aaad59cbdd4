"""The raw micro-batch buffer between the MQTT client and the decoder.

``add`` runs once per message on the event loop, so it only appends to three
lists. The pipeline takes the whole buffer when it holds ``batch_max_messages``
or ``batch_max_ms`` has passed since the first message, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BufferOptions", "MessageBuffer", "RawBatch"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferOptions:
    batch_max_messages: int = 5000
    batch_max_ms: int = 200
    #: Hard bound on buffered messages. At QoS 0 a message arriving beyond it is
    #: dropped and counted in ``overflow`` (the explicit overflow policy).
    max_buffered_messages: int = 200_000


@dataclass(frozen=True, slots=True)
class RawBatch:
    topics: list[str]
    payloads: list[bytes]
    recv_ns: list[int]

    def __len__(self) -> int:
        return len(self.topics)


class MessageBuffer:
    def __init__(
        self, options: BufferOptions, *, time_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._opts = options
        self._time_ns = time_ns
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._recv: list[int] = []
        self._full = asyncio.Event()
        self.received = 0
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._topics)

    def add(self, topic: str, payload: bytes, _qos: int = 0) -> None:
        self.received += 1
        topics = self._topics
        n = len(topics)
        if n >= self._opts.max_buffered_messages:
            self.overflow += 1
            return
        topics.append(topic)
        self._payloads.append(payload)
        self._recv.append(self._time_ns())
        if n + 1 >= self._opts.batch_max_messages:
            self._full.set()

    async def wait_batch(self) -> None:
        """Return once the buffer is full or ``batch_max_ms`` has passed."""
        if len(self._topics) >= self._opts.batch_max_messages:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self._opts.batch_max_ms / 1000)

    def take(self) -> RawBatch:
        batch = RawBatch(self._topics, self._payloads, self._recv)
        self._topics, self._payloads, self._recv = [], [], []
        self._full.clear()
        return batch
