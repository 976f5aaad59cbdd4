"""A small HTTP/1.1 server on ``asyncio.start_server`` (one request per connection).

Enough for a dashboard, a JSON API, probes and a server-sent-event stream:
GET/POST/HEAD, ``Content-Length`` bodies, no chunked request bodies, no
keep-alive (every response carries ``Connection: close``). Limits on the head
and body sizes and a read timeout keep a slow or hostile client from holding
memory or a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

__all__ = ["HttpError", "Request", "Response", "StreamResponse", "read_request", "write_response"]

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, doc: Any) -> Response:
        return cls(status, orjson.dumps(doc), "application/json")

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json(status, {"error": message, "status": status})


@dataclass(slots=True)
class StreamResponse:
    """A ``text/event-stream`` response: ``run(writer)`` writes events until it returns."""

    run: Callable[[asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader, timeout_s: float) -> Request:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "request head too large") from exc
    except asyncio.IncompleteReadError as exc:
        raise HttpError(400, "incomplete request") from exc
    except TimeoutError as exc:
        raise HttpError(408, "request timeout") from exc
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise HttpError(400, "malformed request line") from exc
    if not version.startswith("HTTP/1."):
        raise HttpError(400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header")
        headers[name.lower()] = value.strip()
    body = b""
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, "bad Content-Length")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "request body too large")
    if length:
        try:
            body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            raise HttpError(400, "incomplete body") from exc
    parts = urlsplit(target)
    return Request(method.upper(), unquote(parts.path), parse_qs(parts.query), headers, body)


def response_head(
    status: int, content_type: str, headers: dict[str, str], length: int | None
) -> bytes:
    out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
    if length is not None:
        out.append(f"Content-Length: {length}")
    out.append("Connection: close")
    out.append("X-Content-Type-Options: nosniff")
    out.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


async def write_response(writer: asyncio.StreamWriter, resp: Response, *, head_only: bool) -> None:
    writer.write(response_head(resp.status, resp.content_type, resp.headers, len(resp.body)))
    if not head_only:
        writer.write(resp.body)
    await writer.drain()
