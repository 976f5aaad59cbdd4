"""The web server of the pipeline process: probes, metrics, JSON API, live dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from alerts import AlertDispatcher, Matcher, Silence
from ingest._buffer import RawBatch
from processors._indices import AQI_CATEGORIES, ISPU_CATEGORIES, LOS_LETTERS
from urbanpulse._clock import Clock
from urbanpulse._errors import ConfigError, UrbanPulseError
from urbanpulse._pipeline import Pipeline, ProcessResult
from web._http import (
    HttpError,
    Request,
    Response,
    StreamResponse,
    read_request,
    response_head,
    write_response,
)
from web._live import LiveOptions, LiveState, event_json
from web._metrics import Exposition, Histogram, render_pipeline_metrics
from web._openapi import OPENAPI
from web._registry import SensorDirectory, load_sensor_directory

__all__ = ["WebOptions", "WebServer", "is_loopback"]

log = logging.getLogger("urbanpulse.web")

_TOKEN_COOKIE = "urbanpulse_token"
#: The page loads nothing from elsewhere: no tiles, fonts or CDN.
_CSP = "default-src 'self' 'unsafe-inline'; img-src 'self' data:"
_BATCH_BOUNDS = (1, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000)
_LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebOptions:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    #: Bearer token; required when ``host`` is not a loopback address. When set it
    #: is enforced on every path except ``/healthz``, whatever the address.
    token: str | None = None
    #: Sensor registry: CSV, GeoJSON, or a simulator city file (outlines too).
    sensors_file: Path | None = None
    #: How often the live stream sends the (coalesced) changes.
    sse_interval_s: float = 0.5
    #: Live-stream messages queued per client before it is dropped as too slow
    #: (its browser reconnects and gets a fresh snapshot).
    sse_max_queued: int = 8
    max_sse_clients: int = 64
    request_timeout_s: float = 10.0
    live: LiveOptions = field(default_factory=LiveOptions)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"web.port must be 0-65535, got {self.port}")
        if self.sse_interval_s <= 0:
            raise ConfigError("web.sse_interval_s must be positive")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("web.token must be at least 16 characters")
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                f"web.host {self.host!r} is reachable beyond this machine: set web.token "
                f"(a bearer token of 16+ characters) or bind to 127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class _Client:
    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.ready = asyncio.Event()
        self.dropped = False


def _sse(event: str, doc: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


_VOCABULARY: Final = {
    "ispu_categories": [
        {"name": c.name, "name_en": c.name_en, "colour": c.colour} for c in ISPU_CATEGORIES
    ],
    "aqi_categories": [
        {"name": c.name, "name_en": c.name_en, "colour": c.colour} for c in AQI_CATEGORIES
    ],
    "los_letters": list(LOS_LETTERS),
}


def _silence_json(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [str(m) for m in silence.matchers],
        "starts_ns": silence.starts_ns,
        "ends_ns": silence.ends_ns,
    }


class WebServer:
    """Serves ``pipeline`` over HTTP.

    Construction hooks the server into the pipeline: every processed micro-batch
    is folded into the live state (``LiveState``) and timed, and the server
    subscribes to the event bus. ``serve()`` runs until cancelled.
    """

    def __init__(
        self,
        options: WebOptions,
        pipeline: Pipeline,
        *,
        directory: SensorDirectory | None = None,
        clock: Clock | None = None,
        alerts: AlertDispatcher | None = None,
    ) -> None:
        self.options = options
        self.pipeline = pipeline
        self.alerts = alerts
        self.clock = clock or pipeline.clock
        directory = directory or SensorDirectory.empty()
        if options.sensors_file is not None:
            directory = directory.merged(load_sensor_directory(options.sensors_file))
        self.live = LiveState(
            options.live, series=pipeline.registry, directory=directory, clock=self.clock
        )
        self.batch_sizes = Histogram(_BATCH_BOUNDS)
        self.process_seconds = Histogram(_LATENCY_BOUNDS)
        self.subscription = pipeline.bus.subscribe("web")
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._tick_task: asyncio.Task[None] | None = None
        #: Rows whose static columns every stream client has (snapshot or update).
        self._announced = 0
        self._last_alert_counts: dict[tuple[str, str], int] | None = None
        self.sse_messages = 0
        self.sse_dropped_clients = 0
        pipeline.batch_listeners.append(self._on_batch)

    # -- pipeline hook

    def _on_batch(self, raw: RawBatch, result: ProcessResult, seconds: float) -> None:
        self.process_seconds.observe(seconds)
        self.batch_sizes.observe(len(raw))
        self.live.observe(result.batch)

    def detach(self) -> None:
        """Stop observing the pipeline (leave its listeners and the bus)."""
        with contextlib.suppress(ValueError):
            self.pipeline.batch_listeners.remove(self._on_batch)
        with contextlib.suppress(ValueError):
            self.pipeline.bus.unsubscribe(self.subscription)

    # -- lifecycle

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise UrbanPulseError("web server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._connection, self.options.host, self.options.port, limit=16 * 1024
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc}"
            ) from exc
        self._tick_task = asyncio.create_task(self._ticker(), name="web-live")
        log.info(
            "web server listening",
            extra={"host": self.options.host, "port": self.port, "auth": bool(self.options.token)},
        )

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        for client in self._clients:
            client.dropped = True
            client.ready.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.detach()

    async def serve(self) -> None:
        """Start, then serve until cancelled; closes on the way out."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    # -- live updates

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.sse_interval_s)
            self.tick()

    def tick(self) -> bytes | None:
        """Fold new events and changed sensors into one message for every client."""
        events = self.subscription.get_nowait()
        self.live.conditions.apply(events)
        rows = self.live.take_dirty()
        n = len(self.live)
        # Alert states move on the dispatcher's own clock (pending -> firing,
        # acknowledged, resolved) without an event reaching this subscription.
        alert_counts = self._alert_counts()
        alerts_changed = alert_counts != self._last_alert_counts
        if not events and not rows.shape[0] and n == self._announced and not alerts_changed:
            return None
        self._last_alert_counts = alert_counts
        self.live.refresh_indices(self.pipeline.indices, rows)
        doc = {
            "now_ns": self.clock.now_ns(),
            "static": self.live.static_columns(self._announced, n),
            "live": self.live.live_columns(rows),
            "districts": self._district_rows(),
            "events": [event_json(e) for e in events],
        }
        self._announced = n
        msg = _sse("update", doc)
        self.sse_messages += 1
        for client in list(self._clients):
            if len(client.queue) >= self.options.sse_max_queued:
                client.dropped = True
                self.sse_dropped_clients += 1
            else:
                client.queue.append(msg)
            client.ready.set()
        return msg

    def _refresh_all(self) -> None:
        """Recompute the indices of every sensor row (before a full view)."""
        self.live.refresh_indices(self.pipeline.indices, np.arange(len(self.live), dtype=np.int64))

    def snapshot(self) -> dict[str, Any]:
        live = self.live
        self._refresh_all()
        n = len(live)
        return {
            **_VOCABULARY,
            "now_ns": self.clock.now_ns(),
            "pollutants": list(self.pipeline.indices.ispu_pollutants),
            "static": live.static_columns(0, n),
            "live": live.live_columns(np.arange(n, dtype=np.int64)),
            "districts": self._district_rows(),
            "outlines": [
                {"district": d.name, "outline": [list(p) for p in d.outline]}
                for d in live.directory.districts.values()
            ],
            "events": [event_json(e) for e in live.conditions.feed],
        }

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        client = _Client()
        self._clients.add(client)
        try:
            writer.write(b"retry: 1000\n\n" + _sse("snapshot", self.snapshot()))
            await writer.drain()
            while not client.dropped:
                try:
                    await asyncio.wait_for(client.ready.wait(), 15.0)
                except TimeoutError:
                    writer.write(b": keep-alive\n\n")
                    await writer.drain()
                    continue
                client.ready.clear()
                items, client.queue = client.queue, []
                if items:
                    writer.write(b"".join(items))
                    await writer.drain()
        finally:
            self._clients.discard(client)

    # -- HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req = await read_request(reader, self.options.request_timeout_s)
            except HttpError as exc:
                await write_response(writer, Response.error(exc.status, str(exc)), head_only=False)
                return
            try:
                resp = self._route(req)
            except Exception:
                log.exception("web request failed", extra={"path": req.path})
                resp = Response.error(500, "internal error (logged)")
            if isinstance(resp, StreamResponse):
                writer.write(
                    response_head(
                        200,
                        "text/event-stream",
                        {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                        None,
                    )
                )
                await resp.run(writer)
            else:
                await write_response(writer, resp, head_only=req.method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("web request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _authorized(self, req: Request) -> bool:
        token = self.options.token
        if token is None:
            return True
        auth = req.headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), token.encode()):
            return True
        for part in req.headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == _TOKEN_COOKIE and hmac.compare_digest(value.encode(), token.encode()):
                return True
        return False

    def _route(self, req: Request) -> Response | StreamResponse:
        path = req.path.rstrip("/") or "/"
        if path == "/healthz":
            return Response.json(200, {"status": "alive"})
        if req.method not in ("GET", "HEAD", "POST"):
            return Response.error(405, f"method {req.method} not allowed")
        if not self._authorized(req):
            given = req.param("token")
            token = self.options.token or ""
            if path == "/" and given and hmac.compare_digest(given.encode(), token.encode()):
                cookie = f"{_TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                return Response(303, headers={"Location": "/", "Set-Cookie": cookie})
            resp = Response.error(401, "a bearer token is required")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="urbanpulse"'
            return resp
        if req.method == "POST":
            if path.startswith("/api/alerts/") and path.endswith(("/ack", "/silence")):
                return self._alert_action(req, path)
            if path == "/api/silences":
                return self._new_silence(req)
            return Response.error(405, "POST is only for alert actions")
        if path == "/":
            page = importlib.resources.files("web").joinpath("static/dashboard.html").read_bytes()
            return Response(
                200,
                page,
                "text/html; charset=utf-8",
                {"Content-Security-Policy": _CSP},
            )
        if path == "/readyz":
            return self._ready()
        if path == "/metrics":
            return Response(200, self.metrics_text().encode(), "text/plain; version=0.0.4")
        if path == "/api/openapi.json":
            return Response.json(200, OPENAPI)
        if path == "/api/sensors":
            return self._sensors(req)
        if path.startswith("/api/sensors/"):
            return self._sensor(path[len("/api/sensors/") :])
        if path == "/api/districts":
            self._refresh_all()
            return Response.json(200, {"districts": self._district_rows()})
        if path == "/api/alerts":
            return self._alerts()
        if path == "/api/events":
            feed = [event_json(e) for e in self.live.conditions.feed]
            return Response.json(200, {"events": feed})
        if path == "/api/stream":
            if len(self._clients) >= self.options.max_sse_clients:
                return Response.error(503, "too many live-stream clients")
            return StreamResponse(self._stream)
        return Response.error(404, f"no such path: {path}")

    def _alert_counts(self) -> dict[tuple[str, str], int] | None:
        """Open alerts per (city, district) from the dispatcher; None without one."""
        if self.alerts is None:
            return None
        counts: dict[tuple[str, str], int] = {}
        for a in self.alerts.engine.alerts():
            if a.state != "resolved":
                key = (a.labels.get("city", ""), a.labels.get("district", ""))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _district_rows(self) -> list[dict[str, Any]]:
        return self.live.district_rows(self._alert_counts())

    def _ready(self) -> Response:
        mqtt = self.pipeline.mqtt
        broker = mqtt is not None and mqtt.connected
        outputs = self.pipeline.stage.healthy
        checks = {
            "broker": "connected" if broker else ("no client" if mqtt is None else "disconnected"),
            "outputs": "healthy" if outputs else "failing",
        }
        if not outputs:
            checks["last_error"] = self.pipeline.stage.stats.last_error
        ok = broker and outputs
        return Response.json(200 if ok else 503, {"ready": ok, "checks": checks})

    def _sensors(self, req: Request) -> Response:
        self._refresh_all()
        rows = self.live.sensor_rows()
        for name in ("kind", "district", "city"):
            want = req.param(name)
            if want is not None:
                rows = [r for r in rows if r[name] == want]
        registered = req.param("registered")
        if registered in ("true", "false"):
            rows = [r for r in rows if r["registered"] == (registered == "true")]
        return Response.json(200, {"count": len(rows), "sensors": rows})

    def _sensor(self, sensor_id: str) -> Response:
        row = self.live.row_of(sensor_id)
        if row is None:
            return Response.error(404, f"unknown sensor {sensor_id!r}")
        self.live.refresh_indices(self.pipeline.indices, np.array([row], np.int64))
        doc = self.live.sensor_rows([row])[0]
        doc["open_alerts"] = [
            event_json(e) for e in self.live.conditions.open.values() if e.sensor_id == sensor_id
        ]
        return Response.json(200, doc)

    def _new_silence(self, req: Request) -> Response:
        """``POST /api/silences`` ``{"matchers": ["district=coblong", ...], "duration_s",
        "by", "comment"}``: a time-bounded silence by label matchers (no alert needed)."""
        if self.alerts is None:
            return Response.error(501, "silences need the alerts dispatcher")
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError:
            return Response.error(400, "the body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("matchers"), list):
            return Response.error(400, "the body must be an object with a 'matchers' list")
        by = str(body.get("by") or "")
        if not by or not body["matchers"]:
            return Response.error(400, "a silence needs 'by' and at least one matcher")
        try:
            silence = self.alerts.engine.add_silence(
                [Matcher.parse(str(m)) for m in body["matchers"]],
                duration_s=float(body.get("duration_s", 3600.0)),
                created_by=by,
                comment=str(body.get("comment") or ""),
            )
        except (ConfigError, TypeError, ValueError) as exc:
            return Response.error(400, str(exc))
        return Response.json(200, _silence_json(silence))

    def _alert_action(self, req: Request, path: str) -> Response:
        """``POST /api/alerts/{fingerprint}/ack`` ``{"by", "comment"}`` and
        ``.../silence`` ``{"by", "duration_s", "comment", "matchers"?}`` (default
        matchers: every label of the alert but its severity, i.e. this series)."""
        if self.alerts is None:
            return Response.error(501, "acknowledging and silencing need the alerts dispatcher")
        engine = self.alerts.engine
        fp, _, action = path[len("/api/alerts/") :].rpartition("/")
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError:
            return Response.error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return Response.error(400, "the body must be a JSON object")
        by, comment = str(body.get("by") or ""), str(body.get("comment") or "")
        try:
            alert = engine.get(fp)
            if action == "ack":
                alert = engine.ack(fp, by=by, comment=comment)
                return Response.json(200, self._alert_json(alert))
            raw = body.get("matchers")
            matchers = (
                [Matcher.parse(str(m)) for m in raw]
                if isinstance(raw, list)
                else [Matcher(k, "=", v) for k, v in alert.labels.items() if k != "severity"]
            )
            if not by:
                return Response.error(400, "a silence needs 'by' (an operator name)")
            silence = engine.add_silence(
                matchers,
                duration_s=float(body.get("duration_s", 3600.0)),
                created_by=by,
                comment=comment,
            )
        except ConfigError as exc:
            return Response.error(400, str(exc))
        except (TypeError, ValueError) as exc:
            return Response.error(400, f"bad request: {exc}")
        except UrbanPulseError as exc:
            status = 404 if str(exc).startswith("no alert") else 400
            return Response.error(status, str(exc))
        doc = _silence_json(silence)
        doc.update(created_by=silence.created_by, comment=silence.comment)
        return Response.json(200, doc)

    @staticmethod
    def _alert_json(alert: Any) -> dict[str, Any]:
        doc: dict[str, Any] = alert.to_dict()
        doc.update(
            state=alert.state,
            severity=alert.severity,
            acked_by=alert.acked_by,
            acked_ns=alert.acked_ns,
            starts_ns=alert.starts_ns,
        )
        return doc

    def _alerts(self) -> Response:
        if self.alerts is not None:
            engine = self.alerts.engine
            open_alerts = [a for a in engine.alerts() if a.state != "resolved"]
            silences = engine.silences(active_only=True)
            docs = []
            for a in open_alerts:
                doc = self._alert_json(a)
                # 0: not silenced; else the end of the longest active silence matching it
                doc["silenced_until_ns"] = max(
                    (x.ends_ns for x in silences if x.matches(a.labels)), default=0
                )
                docs.append(doc)
            return Response.json(
                200,
                {
                    "source": "alerts",
                    "alerts": docs,
                    "silences": [
                        {"id": x.id, "matchers": [str(m) for m in x.matchers], "ends_ns": x.ends_ns}
                        for x in silences
                    ],
                },
            )
        items = []
        for key, e in self.live.conditions.open.items():
            doc = event_json(e)
            doc["id"] = "|".join(str(k) for k in key)
            items.append(doc)
        items.sort(key=lambda d: (-["info", "warning", "critical"].index(d["severity"]), d["id"]))
        return Response.json(
            200,
            {
                "source": "events",
                "note": "open conditions from detector events; acknowledge/silence return 501 "
                "without an alerts dispatcher",
                "alerts": items,
            },
        )

    def metrics_text(self) -> str:
        p = self.pipeline
        exp = Exposition()
        render_pipeline_metrics(
            exp,
            p.snapshot_stats(),
            buffered=len(p.buffer),
            pending_bytes=p.stage.pending_bytes,
            stage_healthy=p.stage.healthy,
            write_seconds=p.stage.stats.write_seconds,
            writes=p.stage.stats.writes,
            mqtt_last_connected_ns=p.mqtt.stats.last_connected_ns if p.mqtt else None,
        )
        exp.histogram(
            "urbanpulse_batch_size_messages",
            "Messages per processed micro-batch.",
            self.batch_sizes,
        )
        exp.histogram(
            "urbanpulse_process_seconds",
            "Time to decode, window and encode one micro-batch.",
            self.process_seconds,
        )
        exp.gauge(
            "urbanpulse_web_sse_clients", "Connected live-stream clients.", len(self._clients)
        )
        exp.counter("urbanpulse_web_sse_messages", "Live-stream updates sent.", self.sse_messages)
        exp.counter(
            "urbanpulse_web_events_dropped",
            "Bus events the web subscription dropped (queue full).",
            self.subscription.dropped,
        )
        exp.gauge("urbanpulse_web_sensors", "Sensors known to the dashboard.", len(self.live))
        if self.alerts is not None:
            stats = self.alerts.stats
            exp.sample(
                "urbanpulse_alert_notifications",
                "counter",
                "Alert notifications by receiver and outcome (sent, failed attempts, rejected).",
                [
                    ({"receiver": name, "outcome": outcome}, value)
                    for name, st in sorted(stats.items())
                    for outcome, value in (
                        ("sent", st.delivered),
                        ("failed", st.failures),
                        ("rejected", st.rejected),
                    )
                ],
            )
            exp.sample(
                "urbanpulse_alert_queue_pending",
                "gauge",
                "Notifications waiting in each receiver's outbox.",
                [({"receiver": n}, v) for n, v in sorted(self.alerts.pending().items())],
            )
            exp.gauge(
                "urbanpulse_alerts_firing",
                "Alerts currently firing.",
                len(self.alerts.engine.alerts("firing")),
            )
        return exp.text()
