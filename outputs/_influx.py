"""Writers that send line-protocol bodies to InfluxDB 2.x, InfluxDB 1.x or VictoriaMetrics.

All writers are synchronous (the pipeline calls them through
``asyncio.to_thread``) and never retry on their own: failures become
:class:`~urbanpulse.RetryableOutputError` (connection errors, timeouts, 429, 5xx,
with ``retry_after_s`` from ``Retry-After``) or :class:`~urbanpulse.OutputError`
(other 4xx; the message carries the server's error text). Wrap a writer in
:class:`outputs.RetryingWriter` to retry.
"""

from __future__ import annotations

import email.utils
import gzip as gzip_module
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast
from urllib.parse import urlencode

import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from urbanpulse._errors import OutputError, RetryableOutputError

__all__ = [
    "InfluxV1Options",
    "InfluxV1Writer",
    "InfluxV2Options",
    "InfluxV2Writer",
    "LineWriter",
    "parse_retry_after",
]


class LineWriter(Protocol):
    """Anything that stores a line-protocol body (bytes, lines joined by ``\\n``)."""

    def write(self, lines: bytes) -> None: ...

    def close(self) -> None: ...


#: Statuses worth retrying besides every other 5xx (501/505 will not get better).
_RETRYABLE_4XX = frozenset({408, 425, 429})
_PERMANENT_5XX = frozenset({501, 505})
_MAX_ERROR_TEXT = 500
#: The client declares the constants as plain strings but its signature wants the enum.
_NS: Final = cast(WritePrecision, WritePrecision.NS)


def _is_retryable(status: int) -> bool:
    return status in _RETRYABLE_4XX or (status >= 500 and status not in _PERMANENT_5XX)


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def _error_text(body: bytes | str | None, headers: Mapping[str, str] | None) -> str:
    """InfluxDB's own error text: JSON ``error`` (1.x) / ``message`` (2.x), a header, or body."""
    text = ""
    if body:
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = raw.strip()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            for key in ("error", "message"):
                if isinstance(parsed.get(key), str):
                    text = parsed[key]
                    break
    if not text and headers is not None:
        for header in ("X-Influxdb-Error", "X-Platform-Error-Code"):
            value = headers.get(header)
            if value:
                text = value
                break
    if len(text) > _MAX_ERROR_TEXT:
        text = text[:_MAX_ERROR_TEXT] + "..."
    return text


def _status_error(
    target: str,
    status: int,
    reason: str,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
) -> OutputError:
    text = _error_text(body, headers) or reason
    message = f"{target}: HTTP {status}: {text}"
    if _is_retryable(status):
        retry_after = parse_retry_after(headers.get("Retry-After")) if headers else None
        return RetryableOutputError(message, status=status, retry_after_s=retry_after)
    return OutputError(message, status=status)


# --------------------------------------------------------------------------- v2


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxV2Options:
    """InfluxDB 2.x ``/api/v2/write`` (also VictoriaMetrics, which ignores org and token)."""

    url: str
    org: str
    bucket: str
    token: str = ""
    timeout_s: float = 10.0
    gzip: bool = False


class InfluxV2Writer:
    """Writes through influxdb-client's WriteApi in SYNCHRONOUS mode, ns precision.

    The client's own retries are off (``retries=False``): errors surface at once.
    """

    def __init__(self, options: InfluxV2Options) -> None:
        self.options = options
        self._target = f"InfluxDB v2 write to {options.url} (bucket {options.bucket!r})"
        self._client = InfluxDBClient(
            url=options.url,
            token=options.token,
            org=options.org,
            timeout=max(1, round(options.timeout_s * 1000)),
            enable_gzip=options.gzip,
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: bytes) -> None:
        if not lines:
            return
        try:
            self._write_api.write(
                bucket=self.options.bucket,
                org=self.options.org,
                record=lines,
                write_precision=_NS,
            )
        except ApiException as exc:
            status = int(exc.status) if exc.status is not None else 0
            headers = dict(exc.headers) if exc.headers is not None else None
            raise _status_error(self._target, status, str(exc.reason), exc.body, headers) from exc
        except InfluxDBError as exc:  # raised without an HTTP status
            raise RetryableOutputError(f"{self._target}: {exc.message}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RetryableOutputError(f"{self._target}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- v1


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxV1Options:
    """InfluxDB 1.x ``/write`` (also VictoriaMetrics and InfluxDB 2.x's 1.x compatibility API)."""

    url: str
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    gzip: bool = False
    #: Send credentials as ``u``/``p`` query parameters instead of Basic auth.
    auth_in_query: bool = False


class InfluxV1Writer:
    """POSTs to ``/write?db=&rp=&precision=ns`` with a urllib3 pool (no client retries)."""

    def __init__(self, options: InfluxV1Options) -> None:
        self.options = options
        params = {"db": options.database, "precision": "ns"}
        if options.retention_policy:
            params["rp"] = options.retention_policy
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if options.username is not None:
            if options.auth_in_query:
                params["u"] = options.username
                params["p"] = options.password or ""
            else:
                headers.update(
                    urllib3.make_headers(basic_auth=f"{options.username}:{options.password or ''}")
                )
        if options.gzip:
            headers["Content-Encoding"] = "gzip"
        self._url = f"{options.url.rstrip('/')}/write?{urlencode(params)}"
        self._headers = headers
        self._target = f"InfluxDB v1 write to {options.url} (db {options.database!r})"
        self._pool = urllib3.PoolManager(
            retries=False,
            timeout=urllib3.Timeout(total=options.timeout_s),
            maxsize=4,
        )

    def write(self, lines: bytes) -> None:
        if not lines:
            return
        body = gzip_module.compress(lines, compresslevel=1) if self.options.gzip else lines
        try:
            response = self._pool.request(
                "POST", self._url, body=body, headers=self._headers, preload_content=True
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RetryableOutputError(f"{self._target}: {type(exc).__name__}: {exc}") from exc
        if 200 <= response.status < 300:
            return
        raise _status_error(
            self._target, response.status, response.reason or "", response.data, response.headers
        )

    def close(self) -> None:
        self._pool.clear()
