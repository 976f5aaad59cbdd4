"""Injected clocks: production code asks a Clock, tests advance a ManualClock."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock time, ns since the Unix epoch (event-time domain)."""
        ...

    def monotonic_s(self) -> float:
        """Monotonic seconds, for timeouts and rates."""
        ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic_s(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; no test sleeps to wait for time."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now_ns = start_ns
        self._mono_s = 0.0

    def now_ns(self) -> int:
        return self._now_ns

    def monotonic_s(self) -> float:
        return self._mono_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now_ns += round(seconds * 1e9)
        self._mono_s += seconds
