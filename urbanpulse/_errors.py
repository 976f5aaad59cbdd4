"""One exception tree for the whole pipeline.

Third-party errors (gmqtt, influxdb-client, urllib3, pydantic) are translated at
the module that talks to them (``raise ... from exc``) so callers only ever need
to catch :class:`UrbanPulseError` or one of its subclasses.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "DecodeError",
    "OutputError",
    "RetryableOutputError",
    "UrbanPulseError",
]


class UrbanPulseError(Exception):
    """Base class of every error UrbanPulse raises on purpose."""


class ConfigError(UrbanPulseError):
    """The configuration is invalid; the message names the offending field."""


class BrokerError(UrbanPulseError):
    """The MQTT broker could not be reached or refused us."""


class DecodeError(UrbanPulseError):
    """A payload could not be decoded; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class OutputError(UrbanPulseError):
    """A write to an output failed and retrying will not help (e.g. HTTP 400)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableOutputError(OutputError):
    """A write failed in a way that may succeed later (connection, 429, 5xx)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s
