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
    #: Resolved once the batch is durable; the MQTT client then acknowledges
    #: the batch's QoS 1 messages. None when no message of the batch awaits it.
    ack: asyncio.Future[None] | None = None

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
        self._ack: asyncio.Future[None] | None = None
        #: Messages never acknowledged because the buffer was full (QoS 1: the
        #: broker keeps them and redelivers after a reconnect).
        self._held: asyncio.Future[None] | None = None
        self.received = 0
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._topics)

    def add(self, topic: str, payload: bytes, qos: int = 0) -> asyncio.Future[None] | None:
        """Buffer one message; for QoS > 0, return what its acknowledgement waits for."""
        self.received += 1
        topics = self._topics
        n = len(topics)
        if n >= self._opts.max_buffered_messages:
            self.overflow += 1
            if qos:
                if self._held is None:
                    self._held = asyncio.get_running_loop().create_future()
                return self._held
            return None
        topics.append(topic)
        self._payloads.append(payload)
        self._recv.append(self._time_ns())
        if n + 1 >= self._opts.batch_max_messages:
            self._full.set()
        if qos:
            if self._ack is None:
                self._ack = asyncio.get_running_loop().create_future()
            return self._ack
        return None

    def release_held(self) -> None:
        """After a disconnect: let the tasks of never-acknowledged messages finish.

        Their connection is gone, so no acknowledgement reaches the broker, which
        redelivers them to the next session.
        """
        if self._held is not None and not self._held.done():
            self._held.set_result(None)
        self._held = None

    async def wait_batch(self) -> None:
        """Return once the buffer is full or ``batch_max_ms`` has passed."""
        if len(self._topics) >= self._opts.batch_max_messages:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self._opts.batch_max_ms / 1000)

    def take(self) -> RawBatch:
        batch = RawBatch(self._topics, self._payloads, self._recv, self._ack)
        self._topics, self._payloads, self._recv = [], [], []
        self._ack = None
        self._full.clear()
        return batch
