"""Live operations dashboard, JSON API, probes and Prometheus metrics.

``WebServer(options, pipeline)`` serves a running ``Pipeline`` over HTTP:
``/healthz``, ``/readyz``, ``/metrics``, ``/api/...`` (OpenAPI at
``/api/openapi.json``), a server-sent-event stream and the dashboard page.
"""

from web._http import HttpError, Request, Response
from web._live import LiveOptions, LiveState, OpenConditions, event_json
from web._metrics import Exposition, Histogram, render_pipeline_metrics
from web._openapi import OPENAPI
from web._registry import (
    DistrictOutline,
    SensorDirectory,
    SensorRecord,
    directory_of_fleet,
    load_sensor_directory,
)
from web._server import WebOptions, WebServer, is_loopback

__all__ = [
    "OPENAPI",
    "DistrictOutline",
    "Exposition",
    "Histogram",
    "HttpError",
    "LiveOptions",
    "LiveState",
    "OpenConditions",
    "Request",
    "Response",
    "SensorDirectory",
    "SensorRecord",
    "WebOptions",
    "WebServer",
    "directory_of_fleet",
    "event_json",
    "is_loopback",
    "load_sensor_directory",
    "render_pipeline_metrics",
]
