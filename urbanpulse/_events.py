"""Events: what detectors found, as plain objects, and the in-process bus.

Detectors work on columns and emit few events (on state changes, not per
reading), so an event is a small frozen object. The bus never blocks the
pipeline: each subscriber has a bounded queue, and when it is full the oldest
event is dropped and counted for that subscriber (a subscriber that must not
lose anything, such as the alert dispatcher, persists what it takes at once).
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Event", "EventBus", "EventState", "Severity", "Subscription"]

EventState = Literal["start", "end", "change"]


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One detection.

    ``state`` is ``start`` when a condition begins, ``end`` when it clears (a
    recovery), ``change`` for a category move (e.g. ISPU Sedang -> Tidak Sehat).
    """

    detector: str
    state: EventState
    severity: Severity
    kind: str
    city: str
    district: str
    sensor_id: str
    lane: int = 0
    metric: str = ""
    value: float = float("nan")
    score: float = float("nan")
    #: Event time of the reading that triggered it (ns since the epoch).
    event_ns: int
    #: When the pipeline detected it (ns, wall clock).
    detected_ns: int
    #: One line for a human: what, where, how bad.
    message: str
    #: Extra labels, e.g. {"category": "Tidak Sehat", "index": "ispu"}.
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def delay_s(self) -> float:
        return (self.detected_ns - self.event_ns) / 1e9


class Subscription:
    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._items: deque[Event] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0
        self.delivered = 0

    def _put(self, event: Event) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def get_nowait(self) -> list[Event]:
        """Everything queued, oldest first."""
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        self.delivered += len(items)
        return items

    async def get(self) -> list[Event]:
        """Wait for at least one event, then take everything queued."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(self, name: str, *, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(name, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.remove(sub)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            self.published += 1
            for sub in self._subs:
                sub._put(event)
