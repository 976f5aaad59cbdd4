"""Retrying wrapper for line writers: capped exponential backoff with full jitter."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from outputs._influx import LineWriter
from urbanpulse._errors import RetryableOutputError

__all__ = ["RetryPolicy", "RetryingWriter"]

logger = logging.getLogger("urbanpulse.outputs")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry a retryable write error.

    Delay before retry ``k`` (1-based) is ``min(max_delay_s, base_delay_s * 2**(k-1))``;
    with ``jitter`` ("full jitter") a uniform draw in ``[0, that]``. A server's
    ``Retry-After`` is a lower bound on the delay.
    """

    #: Total attempts including the first; ``None`` retries forever.
    max_attempts: int | None = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None for no limit)")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays cannot be negative")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (1-based), without Retry-After."""
        exponent = min(retry - 1, 62)
        cap = min(self.max_delay_s, self.base_delay_s * (2.0**exponent))
        return rng.uniform(0.0, cap) if self.jitter else cap


class RetryingWriter:
    """Retries ``writer.write`` on :class:`RetryableOutputError`; other errors propagate."""

    def __init__(
        self,
        writer: LineWriter,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.writer = writer
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        #: Retries done over the writer's lifetime (for metrics).
        self.retries = 0

    def write(self, lines: bytes) -> None:
        attempt = 1
        while True:
            try:
                self.writer.write(lines)
                return
            except RetryableOutputError as exc:
                limit = self.policy.max_attempts
                if limit is not None and attempt >= limit:
                    raise
                delay = self.policy.backoff_s(attempt, self._rng)
                if exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                logger.warning(
                    "write failed (attempt %d%s), retrying in %.2fs: %s",
                    attempt,
                    "" if limit is None else f"/{limit}",
                    delay,
                    exc,
                )
                self._sleep(delay)
                self.retries += 1
                attempt += 1

    def close(self) -> None:
        self.writer.close()
